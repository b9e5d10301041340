"""Dual-loss training of KALA: one readable loop on accelerate, resumable, reporting live.

loss = LM cross-entropy (tokens that should be learned) + lambda * (sum_k w_k MSE_k of the final
law scores + mu * per-layer deep supervision), every term logged on its own (the model computes
them; see KALAForCausalLM.forward).

A run is a folder::

    run.json            the full config, package versions, hardware and plan
    metrics.jsonl       one JSON line per optimizer step; validation lines carry "split": "validation"
    tokenizer/          the tokenizer (trained on the data for kala-tiny)
    checkpoints/step-N/ model.safetensors, optimizer.pt, rng.pt, meta.json - written to a
                        temporary name then renamed; the last `keep_checkpoints` are kept
    final/              save_pretrained() + tokenizer: what `kala chat` and the app load

The same code runs on the CPU, one CUDA GPU, or several processes (torchrun / accelerate
launch); only the main process writes. Data order and every random state are derived from
the seed and the step, so a run resumed after a crash or kill retraces the same trajectory.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .constitution import NUM_LAWS
from .jobs import Cancelled, CheckpointSaved, Emit, JobControl, JobError, LogLine, TrainStep, Validation

LAW_KEYS = [f"law_loss_{k}" for k in range(NUM_LAWS)]
#: metrics that depend on wall time (everything else in a metrics line is reproducible)
TIMING_KEYS = ("tokens_per_s", "elapsed", "eta", "memory_mb", "time")


@dataclass
class TrainConfig:
    """Everything a run needs; saved to run.json. Names follow the CLI flags."""

    base: str = "kala-tiny"  # preset name, hub id (EleutherAI/pythia-410m), local Pythia/GPT-NeoX or KALA folder
    revision: str | None = None  # hub revision of the base (branch, tag, commit; e.g. Pythia's step143000)
    data: str = ""  # a KALA JSONL dataset (kala data generate / import)
    run_dir: str = ""
    epochs: float = 1.0  # passes over the training split (ignored when max_steps is set)
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 8  # examples per optimizer step (per process), before accumulation split
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is split across them)
    learning_rate: float = 3e-4  # peak LR (kala-tiny from scratch: 1e-3; Pythia fine-tune: 2e-5)
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int | None = None  # None: 5 % of the steps (at most 100)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ethics_weight: float = 0.5  # lambda: ethics loss weight against the LM loss
    deep_supervision_weight: float = 0.1  # mu: per-layer term relative to the final ethics loss
    max_length: int = 256  # tokens per example (longer ones are cut)
    seed: int = 0
    eval_every: int = 50  # optimizer steps between validations (0: only at the end)
    eval_batches: int = 8  # validation batches each time (bounded cost)
    save_every: int = 100  # optimizer steps between checkpoints (0: only at the end / on cancel)
    keep_checkpoints: int = 2
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (auto follows the hardware, see doctor)
    mode: str = "auto"  # auto | full | lora | nf4-lora
    lora_rank: int = 16
    gradient_checkpointing: bool | None = None  # None: as the plan says
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False
    vocab_size: int = 4096  # tokenizer size when training one (kala-tiny)
    calibrate: bool = True  # per-law thresholds from the validation split, saved with the final model
    calibration_fpr: float = 0.05  # the benign flag rate each calibrated threshold allows
    tiny_overrides: dict = field(default_factory=dict)  # e.g. {"hidden_size": 128} for tests

    def __post_init__(self):
        def bad(name, allowed):
            raise ValueError(f"TrainConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        if not self.data:
            bad("data", "a dataset file")
        if not self.run_dir:
            bad("run_dir", "a folder for the run")
        if self.max_steps is not None and self.max_steps < 1:
            bad("max_steps", ">= 1")
        if not self.epochs > 0:
            bad("epochs", "> 0")
        if self.batch_size < 1:
            bad("batch_size", ">= 1")
        if self.grad_accum < 1 or self.grad_accum > self.batch_size:
            bad("grad_accum", f"in [1, batch_size={self.batch_size}]")
        if not 0 < self.learning_rate < 1:
            bad("learning_rate", "in (0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "in [0, 1]")
        if not 0 <= self.ethics_weight <= 100:
            bad("ethics_weight", "in [0, 100]")
        if not 0 <= self.deep_supervision_weight <= 100:
            bad("deep_supervision_weight", "in [0, 100]")
        if self.max_length < 8:
            bad("max_length", ">= 8")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            bad("precision", "auto, fp32, fp16 or bf16")
        if self.mode not in ("auto", "full", "lora", "nf4-lora"):
            bad("mode", "auto, full, lora or nf4-lora")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "auto, cpu or cuda")
        if self.eval_every < 0 or self.save_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("TrainConfig.eval_every/save_every must be >= 0 and keep_checkpoints >= 1")


# --------------------------------------------------------------------------- model and data


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def build_tokenizer(cfg: TrainConfig, records: list[dict], run_dir: Path, emit: Emit):
    from .data.tokenizer import load_tokenizer, prepare_tokenizer, record_texts, train_tokenizer

    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return load_tokenizer(tok_dir)
    if cfg.base == "kala-tiny":
        emit(LogLine(f"training a {cfg.vocab_size}-token BPE tokenizer on {len(records)} records"))
        tok = train_tokenizer(record_texts(records), out_dir=None, vocab_size=cfg.vocab_size)
    else:
        src = _base_dir(cfg.base, cfg.revision)
        try:
            tok = prepare_tokenizer(load_tokenizer(src))
        except (OSError, ValueError) as e:
            raise JobError(f"{src}: cannot load its tokenizer ({e}); a Pythia folder holds tokenizer.json") from None
    if _is_main():
        tmp = run_dir / ".tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(tok_dir, ignore_errors=True)
        os.replace(tmp, tok_dir)
    return tok


def _base_dir(base: str, revision: str | None = None) -> str:
    """The base's local folder through the one resolver (kala_engine.hub): a folder, else the cache.

    Never downloads: `kala train` and the app's Models page download before a run starts.
    """
    from .hub import resolve_base

    path = resolve_base(base, revision).path
    if path is None:
        raise JobError("kala-tiny has no folder: it is trained from scratch")
    return path


def build_model(cfg: TrainConfig, tokenizer, plan, emit: Emit):
    """The model to train, per the plan: kala-tiny from scratch, a Pythia base, or a KALA model."""
    from .modeling_kala import KALAForCausalLM, load_from_pythia
    from .presets import preset_config

    overrides = dict(ethics_loss_weight=cfg.ethics_weight, deep_supervision_weight=cfg.deep_supervision_weight)
    if cfg.base == "kala-tiny":
        torch.manual_seed(cfg.seed)
        config = preset_config(
            "kala-tiny", vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            **overrides, **cfg.tiny_overrides,
        )
        return KALAForCausalLM(config)
    src = _base_dir(cfg.base, cfg.revision)
    kwargs: dict[str, Any] = {}
    if plan.mode == "nf4-lora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if plan.precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=["value_head", "ethics_monitor", "embed_out"],
        )
        kwargs["device_map"] = {"": 0}
    model_type = json.loads((Path(src) / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type == "kala":
        emit(LogLine(f"continuing from the KALA model in {src}"))
        model = KALAForCausalLM.from_pretrained(src, use_safetensors=True, local_files_only=True, **kwargs)
        for k, v in overrides.items():
            setattr(model.config, k, v)
    else:
        emit(LogLine(f"loading Pythia weights from {src}"))
        model = load_from_pythia(src, kala_overrides=overrides, **kwargs)
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    return model


def apply_lora(model, cfg: TrainConfig, quantized: bool):
    """LoRA adapters (peft) on the base; the constitutional parts stay fully trainable."""
    from peft import LoraConfig, get_peft_model

    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
    names = set(model.constitutional_parameter_names())
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                      target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for n, p in model.named_parameters():
        if any(n.endswith(c) for c in names):
            p.requires_grad_(True)
    return model


def lr_at(step: int, total: int, cfg: TrainConfig, warmup: int) -> float:
    """Linear warm-up, then cosine to learning_rate * min_lr_ratio (nanoGPT's get_lr)."""
    peak = cfg.learning_rate
    if step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * cfg.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- checkpoints


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, position: dict, keep: int) -> Path:
    """checkpoints/step-N, written under a temporary name and renamed (never half written)."""
    from safetensors.torch import save_file

    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step-{step}"
    tmp = ckpts / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_trainable_state(model), str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "rng.pt")
    meta = {"step": step, "position": position, "python_random": repr(random.getstate()), "time": time.time()}
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    steps = sorted(checkpoint_steps(run_dir))
    for old in steps[:-keep]:
        shutil.rmtree(ckpts / f"step-{old}", ignore_errors=True)
    return final


def checkpoint_steps(run_dir: Path) -> list[int]:
    d = Path(run_dir) / "checkpoints"
    out = []
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith("step-") and p.name[5:].isdigit():
                out.append(int(p.name[5:]))
    return sorted(out)


def load_checkpoint(run_dir: Path, model, optimizer, emit: Emit) -> dict | None:
    """Restore the newest readable checkpoint; a corrupt one is reported and skipped."""
    import ast

    from safetensors.torch import load_file

    for step in reversed(checkpoint_steps(run_dir)):
        d = Path(run_dir) / "checkpoints" / f"step-{step}"
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            weights = load_file(str(d / "model.safetensors"))
            opt_state = torch.load(d / "optimizer.pt", weights_only=True, map_location="cpu")
            rng = torch.load(d / "rng.pt", weights_only=True, map_location="cpu")
            params = dict(model.named_parameters())
            missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
            if missing:
                raise ValueError(f"weights missing for {missing[:3]}")
        except Exception as e:  # noqa: BLE001 - any damage means: try the one before
            emit(LogLine(f"checkpoint {d.name} is unreadable ({type(e).__name__}: {e}); trying the one before it",
                         level="warning"))
            continue
        wrong = [f"{n} is {tuple(t.shape)} in the checkpoint vs {tuple(params[n].shape)} now"
                 for n, t in weights.items() if n in params and tuple(t.shape) != tuple(params[n].shape)]
        if wrong:
            raise JobError(f"checkpoint {d.name} does not fit the model asked for: {'; '.join(wrong[:3])}"
                           f"{f' (and {len(wrong) - 3} more)' if len(wrong) > 3 else ''}. Resume with the "
                           f"run's own settings (the 'config' in its run.json) or start a new run elsewhere")
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t.to(params[n].device, params[n].dtype))
        optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(ast.literal_eval(meta["python_random"]))
        emit(LogLine(f"resumed from checkpoint {d.name}"))
        return meta
    return None


#: model config fields that fix the shapes of the trained parameters (what a resume must match)
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "ethics_hidden_size", "num_laws", "rotary_pct", "use_parallel_residual")


def _architecture(model, lora_rank: int | None) -> dict:
    """What run.json records so that a resume can say what differs (not a size-mismatch traceback)."""
    conf = model.config
    arch = {k: getattr(conf, k) for k in ARCH_KEYS if hasattr(conf, k)}
    arch["lora_rank"] = lora_rank  # None: full fine-tune (no adapters)
    return arch


def _check_resume_architecture(run_dir: Path, arch: dict) -> None:
    """Refuse a resume whose model differs from the run's, naming every difference."""
    try:
        saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("architecture")
    except (OSError, ValueError, AttributeError):
        saved = None
    if not isinstance(saved, dict):
        return  # an older run: load_checkpoint compares the tensor shapes instead
    diffs = [f"{k} {saved[k]!r} in checkpoint vs {arch.get(k)!r} now" for k in saved
             if k in arch and saved[k] != arch[k]]
    if diffs:
        raise JobError(f"{run_dir}: cannot resume, the run has another architecture ({'; '.join(diffs)}). "
                       f"Resume with the run's own settings (the 'config' in {run_dir / 'run.json'}) "
                       f"or start a new run in another folder")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines after ``step`` (written by a run that died before its next checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if d.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the loop


def _versions() -> dict:
    import accelerate
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "accelerate": accelerate.__version__}
    try:
        from importlib.metadata import version

        out["kala-studio"] = version("kala-studio")
    except Exception:  # noqa: BLE001
        pass
    return out


def _batches(n: int, per_step: int, seed: int, epoch: int) -> torch.Tensor:
    """This epoch's example order: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def train(cfg: TrainConfig, emit: Emit, control: JobControl | None = None) -> dict:
    """Run (or resume) training; returns a summary dict. Raises JobError with a user message.

    The main process owns the run folder for the whole run (``DIR/.lock``, see
    :mod:`kala_engine.run_lock`): a second starter - another ``kala train``, or the app's worker
    - is refused before it writes anything, and a start refused or failed before it wrote
    anything leaves no empty folder behind.
    """
    from .run_lock import LOCK_NAME, RunLock

    if not _is_main():  # torchrun / accelerate launch: rank 0 holds the folder for all ranks
        return _train(cfg, emit, control)
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise JobError(f"run folder {run_dir} is a file; pass a folder (it is created when missing)")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JobError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None

    def leave_no_empty_folder() -> None:
        if created and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(run_dir, ignore_errors=True)

    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except JobError:
        leave_no_empty_folder()
        raise
    try:
        if lock.took_over_from is not None:
            emit(LogLine(f"{run_dir} was last used by {lock.took_over_from.describe()}, which ended without "
                         f"releasing it; this process owns it now", level="warning"))
        return _train(cfg, emit, control)
    finally:
        lock.release()
        leave_no_empty_folder()


def _train(cfg: TrainConfig, emit: Emit, control: JobControl | None = None) -> dict:
    from accelerate import Accelerator

    from .data.collate import ConstitutionalCollator, JsonlDataset
    from .data.io import load_jsonl
    from .doctor import make_plan, probe_device

    control = control or JobControl()
    run_dir = Path(cfg.run_dir)
    data_path = Path(cfg.data)
    if not data_path.is_file():
        raise JobError(f"{data_path}: no such dataset file (make one with: kala data generate --out {data_path})")
    metrics_path = run_dir / "metrics.jsonl"
    if _is_main():
        if run_dir.exists() and not cfg.resume and (metrics_path.exists() or checkpoint_steps(run_dir)):
            raise JobError(f"{run_dir} already holds a run; pass --resume to continue it or choose another folder")
        run_dir.mkdir(parents=True, exist_ok=True)

    try:
        records = load_jsonl(data_path)
    except ValueError as e:
        raise JobError(f"the dataset is not valid: {e} (check it with: kala data validate {data_path})") from None
    train_records = [r for r in records if r.get("split", "train") == "train"]
    val_records = [r for r in records if r.get("split") == "validation"]
    if not train_records:
        raise JobError(f"{data_path}: no training records (split 'train')")
    from .data.checks import check_training_data

    data_warnings = check_training_data(train_records, val_records, data=str(data_path), eval_every=cfg.eval_every,
                                        ethics_weight=cfg.ethics_weight)
    for w in data_warnings:
        emit(LogLine(w, level="warning"))

    dev = probe_device(cfg.device)
    plan = make_plan(cfg.base, dev, batch_size=cfg.batch_size, seq_len=cfg.max_length, mode=cfg.mode,
                     precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
    for w in dev.warnings:
        emit(LogLine(w, level="warning"))
    if not plan.fits:
        raise JobError(f"this run will not fit: {plan.reason}" + (f"; try {plan.alternative}" if plan.alternative else ""))
    if cfg.gradient_checkpointing is None:
        cfg.gradient_checkpointing = plan.gradient_checkpointing
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[plan.precision]
    accelerator = Accelerator(mixed_precision=mixed, cpu=plan.device_kind == "cpu")
    emit(LogLine(f"plan: {plan.mode} on {plan.device_kind} in {plan.precision}, "
                 f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}, "
                 f"{accelerator.num_processes} process(es)"))

    if accelerator.is_main_process:
        tokenizer = build_tokenizer(cfg, train_records, run_dir, emit)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        from .data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(run_dir / "tokenizer")
    model = build_model(cfg, tokenizer, plan, emit)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if plan.mode in ("lora", "nf4-lora") or cfg.mode in ("lora", "nf4-lora"):
        model = apply_lora(model, cfg, quantized=plan.mode == "nf4-lora")
    model.train()
    lora = plan.mode in ("lora", "nf4-lora") or cfg.mode in ("lora", "nf4-lora")
    arch = _architecture(model.get_base_model() if lora else model, cfg.lora_rank if lora else None)
    if cfg.resume:  # every rank: one refusing alone would leave the others waiting in prepare()
        _check_resume_architecture(run_dir, arch)

    train_set = JsonlDataset(train_records, tokenizer, max_length=cfg.max_length)
    val_set = JsonlDataset(val_records, tokenizer, max_length=cfg.max_length) if val_records else None
    collate = ConstitutionalCollator(tokenizer, max_length=cfg.max_length)
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * world
    steps_per_epoch = max(1, len(train_set) // global_batch)
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, max(1, total_steps // 20))
    micro = cfg.batch_size // cfg.grad_accum

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate,
                                  betas=(0.9, 0.95), eps=1e-8, foreach=True)

    start_step = 0
    if cfg.resume:
        meta = load_checkpoint(run_dir, model, optimizer, emit)
        if meta is not None:
            start_step = int(meta["step"])
            if _is_main():
                _truncate_metrics(metrics_path, start_step)
        elif checkpoint_steps(run_dir):
            raise JobError(f"{run_dir}: no readable checkpoint to resume from; start a new run in another folder")
        else:
            emit(LogLine("no checkpoint yet: starting from step 0", level="warning"))
            if _is_main():
                _truncate_metrics(metrics_path, 0)
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
    model, optimizer = accelerator.prepare(model, optimizer)

    if _is_main():
        n_params = sum(p.numel() for p in model.parameters())
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info = {"config": asdict(cfg), "versions": _versions(), "plan": plan.lines,
                "device": {"kind": plan.device_kind, "name": dev.name}, "processes": world,
                "parameters": n_params, "trainable_parameters": n_train, "total_steps": total_steps,
                "train_records": len(train_set), "validation_records": len(val_set or []),
                "status": "running", "started": time.time(), "warnings": data_warnings,
                "architecture": arch}
        _write_json(run_dir / "run.json", info)

    def batch_for(step: int, k: int) -> dict:
        """Micro-batch k of optimizer step `step` for this process: fixed by (seed, step)."""
        epoch, idx = divmod(step, steps_per_epoch)
        order = _batches(len(train_set), global_batch, cfg.seed, epoch)
        ids = order[idx * global_batch:(idx + 1) * global_batch][rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        ids = ids[k * micro:(k + 1) * micro]
        b = collate([train_set[int(i)] for i in ids])
        return {k2: v.to(accelerator.device) for k2, v in b.items()}

    def validate(step: int) -> dict | None:
        if val_set is None or len(val_set) == 0:
            return None
        model.eval()
        sums = torch.zeros(3 + NUM_LAWS, dtype=torch.float64)
        abs_err = torch.zeros(NUM_LAWS, dtype=torch.float64)
        n_tok = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for j in range(min(cfg.eval_batches, math.ceil(len(val_set) / cfg.batch_size))):
                b = collate([val_set[i] for i in range(j * cfg.batch_size, min(len(val_set), (j + 1) * cfg.batch_size))])
                b = {k: v.to(accelerator.device) for k, v in b.items()}
                with accelerator.autocast():
                    out = model(**b)
                sums[0] += float(out.lm_loss)
                sums[1] += float(out.ethics_loss)
                sums[2] += 1
                sums[3:] += out.ethics_loss_per_law.double().cpu()
                m = b["target_mask"].unsqueeze(-1)
                abs_err += ((out.law_scores.float() - b["law_targets"]).abs() * m).sum((0, 1)).double().cpu()
                n_tok += m.sum().double().cpu()
        model.train()
        k = sums[2].clamp(min=1)
        mae = (abs_err / n_tok.clamp(min=1)).tolist()
        line = {"split": "validation", "step": step, "lm_loss": float(sums[0] / k),
                "ethics_loss": float(sums[1] / k),
                **{f"val_mae_{i}": round(v, 6) for i, v in enumerate(mae)},
                "mae_mean": round(sum(mae) / NUM_LAWS, 6)}
        return line

    def checkpoint(step: int) -> None:
        if _is_main():
            path = save_checkpoint(run_dir, step, accelerator.unwrap_model(model), optimizer,
                                   {"step": step, "steps_per_epoch": steps_per_epoch}, cfg.keep_checkpoints)
            emit(CheckpointSaved(step=step, path=str(path)))
        accelerator.wait_for_everyone()

    if start_step == 0 and _is_main():
        first = validate(0)
        if first:
            _append(metrics_path, first)
            emit(Validation(step=0, metrics=first))

    t0 = time.perf_counter()
    tokens_seen = 0
    step = start_step
    last_lm = last_eth = float("nan")
    emit(LogLine(f"training {total_steps} steps ({steps_per_epoch} per epoch) from step {start_step}"))
    try:
        while step < total_steps:
            control.checkpoint(on_pause=lambda: emit(LogLine(f"paused at step {step}")))
            lr = lr_at(step, total_steps, cfg, warmup)
            for g in optimizer.param_groups:
                g["lr"] = lr
            parts = torch.zeros(4 + NUM_LAWS, device=accelerator.device)  # loss, lm, ethics, deep, per law
            n_tokens = 0
            for k in range(cfg.grad_accum):
                b = batch_for(step, k)
                n_tokens += int(b["attention_mask"].sum())
                ctx = accelerator.no_sync(model) if k < cfg.grad_accum - 1 else _null()
                with ctx:
                    with accelerator.autocast():
                        out = model(**b)
                    accelerator.backward(out.loss / cfg.grad_accum)
                parts += torch.stack([out.loss.detach(), out.lm_loss.detach(), out.ethics_loss.detach(),
                                      out.deep_loss.detach(), *out.ethics_loss_per_law.detach()]).float() / cfg.grad_accum
            parts = accelerator.reduce(parts, reduction="mean")
            if not bool(torch.isfinite(parts).all()):
                optimizer.zero_grad(set_to_none=True)
                good = checkpoint_steps(run_dir)
                raise JobError(
                    f"the loss became {'NaN' if bool(torch.isnan(parts).any()) else 'infinite'} at step {step + 1} "
                    f"(lm {float(parts[1]):.4g}, ethics {float(parts[2]):.4g}); the run stopped. Lower the learning "
                    f"rate (now {cfg.learning_rate:g})" + (" or use fp32" if plan.precision != "fp32" else "")
                    + (f"; the last good checkpoint is step-{good[-1]} (resume with --resume)" if good else "")
                )
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += n_tokens * world
            elapsed = time.perf_counter() - t0
            done = step - start_step
            last_lm, last_eth = float(parts[1]), float(parts[2])
            line = {
                "step": step, "epoch": round(step / steps_per_epoch, 4), "loss": float(parts[0]),
                "lm_loss": last_lm, "ethics_loss": last_eth, "deep_loss": float(parts[3]),
                **{LAW_KEYS[i]: float(parts[4 + i]) for i in range(NUM_LAWS)},
                "lr": lr, "grad_norm": float(grad_norm),
                "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1), "elapsed": round(elapsed, 3),
                "eta": round(elapsed / done * (total_steps - step), 1), "memory_mb": _memory_mb(),
            }
            if _is_main():
                _append(metrics_path, line)
            emit(TrainStep(step=step, total_steps=total_steps, metrics=line))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps and _is_main():
                v = validate(step)
                if v:
                    _append(metrics_path, v)
                    emit(Validation(step=step, metrics=v))
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                checkpoint(step)
    except Cancelled:
        emit(LogLine(f"cancelled at step {step}: saving a checkpoint"))
        if step > start_step:
            checkpoint(step)
        if _is_main():
            _update_run(run_dir, status="cancelled", step=step)
        raise
    except BaseException:
        if _is_main():
            _update_run(run_dir, status="failed", step=step)
        raise

    final_val = validate(step) if _is_main() else None
    if final_val:
        _append(metrics_path, final_val)
        emit(Validation(step=step, metrics=final_val))
    final_dir = run_dir / "final"
    if _is_main():
        calibration = None
        if val_records and cfg.calibrate:
            from .calibration import calibrate_thresholds

            with accelerator.autocast():
                calibration = calibrate_thresholds(accelerator.unwrap_model(model), tokenizer, val_records,
                                                   max_fpr=cfg.calibration_fpr, max_length=cfg.max_length)
            th = ", ".join("-" if t is None else f"{t:.3f}" for t in calibration["thresholds"])
            emit(LogLine(f"calibrated per-law thresholds on the validation split (<= "
                         f"{cfg.calibration_fpr:.0%} benign prompts flagged): {th}"))
        save_final(accelerator.unwrap_model(model), tokenizer, final_dir, plan.mode,
                   law_thresholds=calibration["thresholds"] if calibration else None)
        _update_run(run_dir, status="finished", step=step, final_lm_loss=last_lm, final_ethics_loss=last_eth,
                    final_validation=final_val, calibration=calibration, finished=time.time())
        emit(LogLine(f"saved the final model to {final_dir}"))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"run_dir": str(run_dir), "final_dir": str(final_dir), "steps": step, "lm_loss": last_lm,
            "ethics_loss": last_eth, "validation": final_val}


def save_final(model, tokenizer, final_dir: Path, mode: str, law_thresholds: list | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer, atomically. LoRA adapters are merged first;
    calibrated ``law_thresholds`` (if any law got one) become the model's defaults."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no tqdm bar in logs and the app's console
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if law_thresholds is not None and any(t is not None for t in law_thresholds):
        model.config.law_thresholds = list(law_thresholds)
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(tmp, final_dir)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return 0.0


def _append(path: Path, line: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _update_run(run_dir: Path, **kw) -> None:
    p = run_dir / "run.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        d = {}
    d.update(kw)
    _write_json(p, d)


def train_job(cfg: TrainConfig):
    """The training run as an engine job ``(emit, control) -> summary`` (see kala_engine.jobs)."""

    def job(emit: Emit, control: JobControl) -> dict:
        return train(cfg, emit, control)

    return job
