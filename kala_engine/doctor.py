"""Hardware and software report, and the training plan that fits the machine (`kala doctor`).

The plan picks precision from the hardware (fp32 on CPU; fp16 autocast on Pascal, Volta and
Turing - e.g. the Tesla P100, compute capability 6.0; bf16 from Ampere, 8.0, on), and where a
full fine-tune does not fit, a 4-bit NF4 frozen base (bitsandbytes) with LoRA adapters (peft)
and the constitutional parts fully trained, plus gradient checkpointing and a smaller micro
batch with gradient accumulation. Every figure comes from kala_engine.model.presets.estimate_memory;
a plan that cannot fit is refused with the number it needs and the smaller plan that would fit.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from kala_engine.model.presets import (
    PRESET_NAMES,
    GiB,
    MemoryEstimate,
    count_parameters,
    estimate_memory,
    get_preset,
)

#: the share of device memory a plan may use (the rest: fragmentation, other processes)
MEMORY_BUDGET = 0.9


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cpu" | "cuda"
    name: str
    total_bytes: int
    available_bytes: int
    compute_capability: tuple[int, int] | None = None
    arch_list: tuple[str, ...] = ()
    kernels_present: bool | None = None  # None on CPU
    fp16: bool = False
    bf16: bool = False
    bnb_library: str | None = None
    torch_version: str = ""
    cuda_version: str | None = None
    cpu_count: int = 1
    warnings: tuple[str, ...] = ()

    @property
    def sm(self) -> str | None:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}" if self.compute_capability else None

    @property
    def runs_cuda(self) -> bool:
        """A CUDA GPU this PyTorch build has kernels for: where training, chat and plans run on it."""
        return self.kind == "cuda" and bool(self.kernels_present)


def _cpu_memory() -> tuple[int, int]:
    total = avail = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
            elif line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not total:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 8 * GiB
    return total, avail or total


def kernels_for(cc: tuple[int, int], arch_list) -> bool:
    """Whether a build with ``arch_list`` (torch.cuda.get_arch_list()) runs on capability ``cc``.

    A cubin for sm_XY runs on X.Y' with Y' >= Y of the same major; PTX (compute_XY) is JIT-compiled
    for any newer capability.
    """
    major, minor = cc
    for a in arch_list:
        kind, _, num = a.partition("_")
        if not num[:2].isdigit():
            continue
        amaj, amin = int(num[:-1]), int(num[-1])
        if kind == "sm" and amaj == major and amin <= minor:
            return True
        if kind == "compute" and (amaj, amin) <= (major, minor):
            return True
    return False


def _bnb_library(cuda_version: str | None) -> str | None:
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    libs = sorted(p.name for p in folder.glob("libbitsandbytes_*"))
    if cuda_version:
        want = "cuda" + cuda_version.replace(".", "")
        hit = [name for name in libs if want in name]
        return hit[0] if hit else f"none for CUDA {cuda_version} (has: {', '.join(libs) or 'nothing'})"
    cpu = [name for name in libs if "cpu" in name]
    return cpu[0] if cpu else (libs[0] if libs else None)


def probe_device(device: str = "auto") -> DeviceInfo:
    """What this machine offers. ``device``: "auto" (CUDA when usable), "cpu" or "cuda"."""
    import torch

    total, avail = _cpu_memory()
    cpu = DeviceInfo(
        kind="cpu", name=platform.processor() or platform.machine() or "CPU", total_bytes=total,
        available_bytes=avail, torch_version=torch.__version__, cpu_count=os.cpu_count() or 1,
        bnb_library=_bnb_library(None),
    )
    if device == "cpu" or not torch.cuda.is_available():
        if device == "cuda":
            return replace(cpu, warnings=("CUDA was asked for but this PyTorch build sees no CUDA GPU "
                                          f"(torch {torch.__version__}); using the CPU",))
        return cpu
    props = torch.cuda.get_device_properties(0)
    cc = (props.major, props.minor)
    arch = tuple(torch.cuda.get_arch_list())
    ok = kernels_for(cc, arch)
    try:
        free, total_gpu = torch.cuda.mem_get_info(0)
    except RuntimeError:
        free, total_gpu = props.total_memory, props.total_memory
    warnings = []
    if not ok:
        warnings.append(kernel_advice(cc, arch, torch.__version__))
    return DeviceInfo(
        kind="cuda", name=props.name, total_bytes=int(total_gpu), available_bytes=int(free),
        compute_capability=cc, arch_list=arch, kernels_present=ok, fp16=cc >= (6, 0), bf16=cc >= (8, 0),
        bnb_library=_bnb_library(torch.version.cuda), torch_version=torch.__version__,
        cuda_version=torch.version.cuda, cpu_count=os.cpu_count() or 1, warnings=tuple(warnings),
    )


def device_summary() -> str:
    """One line for the app's status bar: the compute device the engine would use."""
    import torch

    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        cap = ".".join(map(str, torch.cuda.get_device_capability(i)))
        return f"CUDA {torch.cuda.get_device_name(i)} (sm {cap})"
    return f"CPU ({torch.get_num_threads()} threads)"


def kernel_advice(cc: tuple[int, int], arch_list, torch_version: str) -> str:
    sm = f"sm_{cc[0]}{cc[1]}"
    fix = ("pip install torch==2.7.1 --index-url https://download.pytorch.org/whl/cu126"
           if cc < (7, 0) else "install a PyTorch CUDA build whose torch.cuda.get_arch_list() lists " + sm)
    return (f"no CUDA kernels for this GPU ({sm}) in this PyTorch build (torch {torch_version} has "
            f"{', '.join(arch_list) or 'none'}); {fix}. Until then KALA trains on the CPU.")


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    base: str
    device: DeviceInfo
    device_kind: str  # where training runs: "cpu" | "cuda"
    precision: str  # "fp32" | "fp16" | "bf16"
    mode: str  # "full" | "lora" | "nf4-lora"
    gradient_checkpointing: bool
    batch_size: int
    grad_accum: int
    seq_len: int
    estimate: MemoryEstimate
    available_bytes: int
    fits: bool
    reason: str = ""
    alternative: str | None = None
    notes: list[str] = field(default_factory=list)
    #: why the base cannot be used as it is (not downloaded, a folder without weights...); "" when it can
    base_problem: str = ""

    @property
    def estimate_bytes(self) -> int:
        return self.estimate.total

    @property
    def device_info(self) -> DeviceInfo:
        return self.device

    @property
    def lines(self) -> list[str]:
        d = self.device
        out = [f"device       {d.kind}: {d.name}"]
        if d.compute_capability:
            out.append(f"capability   {d.compute_capability[0]}.{d.compute_capability[1]} ({d.sm}); "
                       f"kernels in this build: {'yes' if d.kernels_present else 'NO'} "
                       f"[{', '.join(d.arch_list)}]")
            out.append(f"precision    fp16 {'yes' if d.fp16 else 'no'}, bf16 {'yes' if d.bf16 else 'no'} "
                       f"(native bf16 needs capability >= 8.0)")
        out.append(f"memory       {d.total_bytes / GiB:.1f} GiB total, {d.available_bytes / GiB:.1f} GiB available")
        out.append(f"software     torch {d.torch_version}" + (f", CUDA {d.cuda_version}" if d.cuda_version else "")
                   + f"; bitsandbytes library: {d.bnb_library or 'not installed'}")
        for w in d.warnings:
            out.append(f"WARNING      {w}")
        e = self.estimate.as_gib()
        out.append(f"plan         {self.base}: {self.mode} on {self.device_kind}, {self.precision}, "
                   f"micro-batch {self.batch_size} x accumulation {self.grad_accum}, {self.seq_len} tokens, "
                   f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}")
        out.append(f"estimate     {e['total']:.2f} GiB ({estimate_parts(e)}) "
                   f"of {self.available_bytes / GiB:.2f} GiB usable -> {'fits' if self.fits else 'DOES NOT FIT'}"
                   + (" (but the base is not available, see below)" if self.base_problem else ""))
        for n in self.notes:
            out.append(f"note         {n}")
        if self.base_problem:
            out.append(f"base         NOT AVAILABLE: {self.base_problem}")
        return out + verdict_lines(self.reason, self.alternative)

    def report(self) -> str:
        return "\n".join(self.lines)


def estimate_parts(e: dict) -> str:
    """A memory estimate's parts (``MemoryEstimate.as_gib()``) as the doctor's estimate lines name them."""
    return (f"weights {e['weights']}, gradients {e['gradients']}, optimizer {e['optimizer']}, "
            f"activations {e['activations']}, overhead {e['overhead']}")


def verdict_lines(reason: str, alternative: str | None) -> list[str]:
    """The end of a plan's report: why it does not fit and what to do instead (each when there is one)."""
    return ([f"reason       {reason}"] if reason else []) + ([f"instead      {alternative}"] if alternative else [])


def base_shape(base: str) -> dict:
    """Config dict of a preset, a hub id or a local checkpoint folder (no weights read, no network).

    Names resolve through the one resolver (kala_engine.model.hub): a known Pythia size (preset or
    EleutherAI/... id, deduped or not) uses its published shape; another hub id its cached
    config.json; a folder its own config.json (after the loading policy's auto_map check).
    """
    from kala_engine.model.hub import resolve_base, shape_preset

    known = shape_preset(base) if not Path(base).exists() else None
    if known is not None:
        return get_preset(known)
    folder = Path(resolve_base(base, weights=False).path or "")
    cfg = folder / "config.json"
    import json

    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg}: unreadable config ({e})") from None
    if not isinstance(d, dict) or d.get("model_type") not in ("gpt_neox", "kala"):
        mt = d.get("model_type") if isinstance(d, dict) else None
        raise ValueError(f"{cfg}: model_type {mt!r} is not GPT-NeoX/Pythia or KALA")
    return d


def choose_precision(dev: DeviceInfo) -> str:
    if not dev.runs_cuda:
        return "fp32"
    if dev.bf16:
        return "bf16"
    return "fp16" if dev.fp16 else "fp32"


def make_plan(base: str = "kala-tiny", device: DeviceInfo | None = None, *, batch_size: int = 4,
              seq_len: int = 512, mode: str = "auto", precision: str = "auto",
              gradient_checkpointing: bool | None = None) -> Plan:
    """The training plan for ``base`` on ``device`` (probed when None; tests pass a mock)."""
    if mode not in ("auto", "full", "lora", "nf4-lora"):
        raise ValueError(f"mode must be auto, full, lora or nf4-lora, got {mode!r}")
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError("batch_size and seq_len must be >= 1")
    dev = device or probe_device()
    shape = base_shape(base)
    use_cuda = dev.runs_cuda
    device_kind = "cuda" if use_cuda else "cpu"
    prec = choose_precision(dev) if precision == "auto" else precision
    notes: list[str] = []
    if prec == "bf16" and not (use_cuda and dev.bf16):
        notes.append("bf16 asked for, but this device has no native bf16: using fp32" if not use_cuda
                     else "bf16 needs compute capability >= 8.0: using fp16")
        prec = "fp16" if use_cuda else "fp32"
    if prec == "fp16" and not use_cuda:
        notes.append("fp16 autocast needs a CUDA GPU: using fp32 on the CPU")
        prec = "fp32"
    budget = int(dev.available_bytes * MEMORY_BUDGET) if use_cuda else int(dev.available_bytes * 0.8)

    def est(m: str, b: int, ckpt: bool) -> MemoryEstimate:
        return estimate_memory(shape, "nf4-lora" if m == "nf4-lora" else prec, batch_size=b,
                               seq_len=seq_len, gradient_checkpointing=ckpt)

    modes = [mode] if mode != "auto" else (["full", "nf4-lora"] if use_cuda else ["full"])
    if "nf4-lora" in modes and not use_cuda:
        return _refuse(base, dev, device_kind, prec, "nf4-lora", batch_size, seq_len, est, budget,
                       "4-bit NF4 training (bitsandbytes) needs a CUDA GPU", notes)
    ckpts = [gradient_checkpointing] if gradient_checkpointing is not None else [False, True]
    for m in modes:
        for ckpt in ckpts:
            b = batch_size
            while b >= 1:
                e = est(m, b, ckpt)
                if e.total <= budget:
                    if m == "nf4-lora" and mode == "auto":
                        notes.append("a full fine-tune needs "
                                     f"{est('full', 1, True).total / GiB:.1f} GiB: frozen NF4 base + LoRA "
                                     "adapters, constitutional parts fully trained")
                    return Plan(base, dev, device_kind, prec, m, ckpt, b, -(-batch_size // b), seq_len, e,
                                budget, True, notes=notes)
                b //= 2
    return _refuse(base, dev, device_kind, prec, modes[-1], batch_size, seq_len, est, budget,
                   "", notes, gradient_checkpointing)


def _refuse(base, dev, device_kind, prec, m, batch_size, seq_len, est, budget, why, notes, ckpt=None) -> Plan:
    e = est(m, batch_size, True if ckpt is None else ckpt)
    need = e.total / GiB
    reason = why or (f"{m} training of {base} needs {need:.1f} GiB at micro-batch {batch_size} "
                     f"but {budget / GiB:.1f} GiB is usable on {dev.name}")
    alternative = None
    for cand in (["nf4-lora"] if device_kind == "cuda" else []) + ["full"]:
        if device_kind == "cpu" and cand == "nf4-lora":
            continue
        for b in (batch_size, 2, 1):
            ce = est(cand, b, True)
            if ce.total <= budget:
                alternative = (f"{cand} with gradient checkpointing, micro-batch {b} x accumulation "
                               f"{-(-batch_size // b)}: {ce.total / GiB:.1f} GiB")
                break
        if alternative:
            break
    if alternative is None:
        own = count_parameters(base_shape(base)).total
        for name in reversed(PRESET_NAMES):  # the largest smaller base that fits
            if count_parameters(name).total >= own:
                continue
            shape = get_preset(name)
            for cand in (["nf4-lora"] if device_kind == "cuda" else []) + ["full"]:
                ce = estimate_memory(shape, "nf4-lora" if cand == "nf4-lora" else prec, batch_size=1,
                                     seq_len=seq_len, gradient_checkpointing=True)
                if ce.total <= budget:
                    alternative = f"a smaller base: {name} ({cand}, micro-batch 1): {ce.total / GiB:.1f} GiB"
                    break
            if alternative:
                break
    return Plan(base, dev, device_kind, prec, m, True, batch_size, 1, seq_len, e, budget, False,
                reason=reason, alternative=alternative, notes=list(notes))


def diagnose(base: str = "kala-tiny", device: str = "auto", **kwargs) -> Plan:
    """Probe this machine and plan training of ``base`` on it (used by `kala doctor` and the app).

    The plan also says whether the base itself is here (``base_problem``): a memory estimate that
    "fits" means nothing for a Pythia preset whose weights were never downloaded.
    """
    plan = make_plan(base, probe_device(device), **kwargs)
    plan.base_problem = check_base(base).problem
    return plan


# --------------------------------------------------------------------------- is the base here?


@dataclass(frozen=True)
class BaseCheck:
    """Whether a base can be trained from as it is: ``folder`` to load it from, or ``problem``."""

    base: str
    folder: str | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def check_model_folder(folder: str | Path) -> str:
    """Why ``folder`` cannot be a base ("" when it can): a GPT-NeoX/Pythia or KALA ``config.json``
    without custom code, a tokenizer and safetensors weights - what training will load."""
    import json

    p = Path(folder)
    if not p.is_dir():
        return f"{p} is not a folder"
    cfg = p / "config.json"
    if not cfg.is_file():
        return f"{p.name} has no config.json, so it is not a model folder (choose the folder that holds config.json)"
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"{p.name}/config.json cannot be read ({e})"
    if not isinstance(d, dict):
        return f"{p.name}/config.json is not a JSON object"
    if d.get("model_type") not in ("gpt_neox", "kala"):
        return (f"{p.name} holds a {d.get('model_type') or 'model of unknown type'!s} model; KALA starts from "
                "GPT-NeoX/Pythia (model_type gpt_neox) or KALA models")
    if not ((p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file())):
        return f"{p.name} has no tokenizer (tokenizer.json); copy the tokenizer files of the model into it"
    from kala_engine.model.loading import LoadRefused, check_folder

    try:
        check_folder(p)  # the loading policy: no auto_map in any config file, safetensors weights only
    except LoadRefused as e:
        return str(e)
    return ""


def check_base(base: str, revision: str | None = None) -> BaseCheck:
    """Whether ``base`` (a preset, a hub id or a folder) is on this machine, without loading or
    downloading it: the one resolver (:func:`kala_engine.model.hub.resolve_base`) finds it - ``kala-tiny``
    is trained from scratch and always available, a folder as it is, a hub base in the Hugging Face
    cache - then :func:`check_model_folder` says whether training can start from it.
    """
    from kala_engine.jobs import JobError
    from kala_engine.model.hub import resolve_base

    try:
        found = resolve_base(base, revision)  # never downloads
    except (JobError, ValueError) as e:
        return BaseCheck(base, None, str(e))
    if found.path is None:  # kala-tiny
        return BaseCheck(base)
    why = check_model_folder(found.path)
    if why and found.kind == "cache":
        why = f"the cached copy of {found.repo_id}: {why}"
    return BaseCheck(base, None if why else found.path, why)


# --------------------------------------------------------------------------- the models catalogue


def list_models(device: str = "auto", *, batch_size: int = 4, seq_len: int = 512,
                cache_dir: Path | None = None) -> list[dict]:
    """The catalogue with cache state and the doctor's plan for this device (no network)."""
    from kala_engine.model.hub import cached_revisions, cached_snapshot, catalog, partial_bytes

    dev = probe_device(device)
    plans: dict[str, object] = {}
    rows = []
    for m in catalog():
        hit = cached_snapshot(m["repo_id"], None, cache_dir)
        revs = cached_revisions(m["repo_id"], cache_dir)
        if m["shape"] not in plans:
            plans[m["shape"]] = make_plan(m["shape"], dev, batch_size=batch_size, seq_len=seq_len)
        plan = plans[m["shape"]]
        rows.append({
            **{k: m[k] for k in ("name", "repo_id", "params", "download_bytes", "deduped")},
            "cached": hit is not None, "path": str(hit[0]) if hit else None, "commit": hit[1] if hit else None,
            "revisions": revs, "partial_bytes": partial_bytes(m["repo_id"], cache_dir),
            "fits": plan.fits, "mode": plan.mode, "precision": plan.precision, "device": plan.device_kind,
            "estimate_bytes": plan.estimate_bytes, "available_bytes": plan.available_bytes,
            "reason": plan.reason,
        })
    return rows
