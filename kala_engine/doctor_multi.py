"""Training plans over several devices (`kala doctor --gpus N [--nodes M]`, `kala train --gpus N`).

One card is :func:`kala_engine.doctor.make_plan`'s. Over ``N = gpus x nodes`` processes the plan
picks, per model size and card memory, the first of these that fits a card (accelerate runs them
all; nothing here is written by hand):

- ``ddp``: every card holds the whole model and optimizer (what a single card needs, plus DDP's
  flat copy of the gradients in its communication buckets);
- ``fsdp``: FSDP full-shard - weights, gradients and AdamW state divided by N; each card also
  holds the gathered 16-bit weights of the root unit (embeddings, output head: FSDP keeps the root
  unsharded through the forward) and of two layers (the running one and the prefetched next);
- ``fsdp-offload``: FSDP full-shard with the sharded fp32 weights, gradients and AdamW state in
  host RAM (16 bytes per parameter over the machines), only gathered units and activations on the
  cards - slow, so chosen only where plain sharding does not fit;
- ``nf4-lora``: the frozen base in 4-bit NF4 with LoRA adapters, every card holding the whole
  quantised base (DDP over the small trained part) - the single-card plan's fallback.

When none fits, the plan is refused with what each needs and how many cards would do. On the CPU
(``--device cpu``: N processes sharing one machine's RAM, gloo) only DDP runs: accelerate's FSDP
needs CUDA devices (its CPU multi-process mode is DDP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kala_engine.doctor import (
    MEMORY_BUDGET,
    DeviceInfo,
    Plan,
    base_shape,
    estimate_parts,
    make_plan,
    verdict_lines,
)
from kala_engine.model.presets import GiB, MemoryEstimate, count_parameters, estimate_memory, with_overhead

STRATEGIES = ("ddp", "fsdp", "fsdp-offload", "nf4-lora")
#: the share of host RAM the offloaded state may take (the rest: the OS, data, the processes)
HOST_BUDGET = 0.8
#: host RAM per machine the README's table assumes
TABLE_HOST_GIB = 128
LABELS = {"single": "1 card", "ddp": "DDP", "fsdp": "FSDP", "fsdp-offload": "FSDP+offload", "nf4-lora": "NF4+LoRA"}


@dataclass
class ClusterPlan:
    """The plan for ``gpus`` devices on each of ``nodes`` machines."""

    base: str
    gpus: int
    nodes: int
    strategy: str  # "single" (one process: see ``single``) | one of STRATEGIES
    single: Plan  # the one-card plan (device, precision; the whole plan when gpus x nodes == 1)
    per_card: MemoryEstimate
    card_budget: int  # usable bytes of one card
    host_need: int = 0  # bytes of host RAM per machine the strategy puts there (offload)
    host_budget: int = 0
    gradient_checkpointing: bool = False
    batch_size: int = 1  # micro-batch per process
    grad_accum: int = 1
    fits: bool = True
    reason: str = ""
    alternative: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    @property
    def precision(self) -> str:
        return self.single.precision

    @property
    def device_kind(self) -> str:
        return self.single.device_kind

    @property
    def estimate_bytes(self) -> int:
        return self.per_card.total

    @property
    def mode(self) -> str:
        """The single-card plan's vocabulary: "nf4-lora" or "full"."""
        return "nf4-lora" if self.strategy == "nf4-lora" else (self.single.mode if self.strategy == "single" else "full")

    @property
    def label(self) -> str:
        return LABELS[self.strategy] if self.strategy != "single" else {"full": "full", "nf4-lora": "NF4+LoRA",
                                                                        "lora": "LoRA"}[self.single.mode]

    @property
    def lines(self) -> list[str]:
        if self.world == 1:
            return self.single.lines
        unit = "card" if self.device_kind == "cuda" else "process"
        out = [line for line in self.single.lines if not line.startswith(("plan ", "estimate ", "reason ", "instead ",
                                                                          "note "))]
        e = self.per_card.as_gib()
        out.append(f"plan         {self.base}: {self.label} over {self.gpus} {unit}(s) x {self.nodes} machine(s) "
                   f"= {self.world} processes, {self.precision}, micro-batch {self.batch_size} x accumulation "
                   f"{self.grad_accum} per process, {self.single.seq_len} tokens, gradient checkpointing "
                   f"{'on' if self.gradient_checkpointing else 'off'}")
        out.append(f"estimate     {e['total']:.2f} GiB per {unit} ({estimate_parts(e)}) of "
                   f"{self.card_budget / GiB:.2f} GiB usable -> {'fits' if self.fits else 'DOES NOT FIT'}")
        if self.host_need:
            out.append(f"host         {self.host_need / GiB:.1f} GiB of RAM per machine for the offloaded state, "
                       f"of {self.host_budget / GiB:.1f} GiB usable")
        out += [f"note         {n}" for n in self.notes]
        return out + verdict_lines(self.reason, self.alternative)

    def report(self) -> str:
        return "\n".join(self.lines)


def _sharded(shape: dict, single: MemoryEstimate, world: int, precision: str, offload: bool) -> MemoryEstimate:
    """Per-card bytes of FSDP full-shard over ``world`` processes (see the module docstring)."""
    pc = count_parameters(shape)
    h, L, V = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    layer = (pc.total - 2 * V * h) // L
    unit_bytes = 4 if precision == "fp32" else 2
    gathered = (2 * V * h + 2 * layer) * unit_bytes
    if offload:
        return with_overhead(gathered, layer * unit_bytes, 0, single.activations)
    return with_overhead(pc.total * 4 // world + gathered, pc.total * 4 // world + layer * unit_bytes,
                         pc.total * 8 // world, single.activations)


def _estimate(strategy: str, shape: dict, precision: str, world: int, b: int, seq_len: int, ckpt: bool
              ) -> MemoryEstimate:
    mode = "nf4-lora" if strategy == "nf4-lora" else precision
    single = estimate_memory(shape, mode, batch_size=b, seq_len=seq_len, gradient_checkpointing=ckpt)
    if strategy == "ddp" or (strategy == "nf4-lora" and world > 1):  # + DDP's bucket copy of the gradients
        return with_overhead(single.weights, single.gradients * 2, single.optimizer, single.activations)
    if strategy == "nf4-lora":
        return single
    return _sharded(shape, single, world, precision, offload=strategy == "fsdp-offload")


def _host_need(strategy: str, shape: dict, nodes: int) -> int:
    return count_parameters(shape).total * 16 // nodes if strategy == "fsdp-offload" else 0


def make_cluster_plan(base: str = "kala-tiny", device: DeviceInfo | None = None, *, gpus: int = 1, nodes: int = 1,
                      batch_size: int = 4, seq_len: int = 512, strategy: str = "auto", precision: str = "auto",
                      gradient_checkpointing: bool | None = None, host_bytes: int | None = None) -> ClusterPlan:
    """The plan for ``gpus`` devices like ``device`` (probed when None) on each of ``nodes`` machines.

    ``host_bytes``: RAM of one machine (default: this one's available RAM) - what CPU offload may use.
    """
    from kala_engine.doctor import _cpu_memory, probe_device

    if gpus < 1 or nodes < 1:
        raise ValueError(f"gpus and nodes must be >= 1, got gpus={gpus}, nodes={nodes}")
    if strategy not in ("auto",) + STRATEGIES:
        raise ValueError(f"strategy must be auto, {', '.join(STRATEGIES)}, got {strategy!r}")
    dev = device or probe_device()
    world = gpus * nodes
    single_mode = "nf4-lora" if strategy == "nf4-lora" else ("full" if strategy != "auto" else "auto")
    single = make_plan(base, dev, batch_size=batch_size, seq_len=seq_len, mode=single_mode, precision=precision,
                       gradient_checkpointing=gradient_checkpointing)
    if world == 1:
        return ClusterPlan(base, 1, 1, "single", single, single.estimate, single.available_bytes,
                           gradient_checkpointing=single.gradient_checkpointing, batch_size=single.batch_size,
                           grad_accum=single.grad_accum, fits=single.fits, reason=single.reason,
                           alternative=single.alternative, notes=list(single.notes))
    shape = base_shape(base)
    cuda = single.device_kind == "cuda"
    host = host_bytes if host_bytes is not None else _cpu_memory()[1]
    host_budget = int(host * HOST_BUDGET)
    # on the CPU the processes of a machine share its RAM; a card is its own
    budget = int(dev.available_bytes * MEMORY_BUDGET) if cuda else int(host * HOST_BUDGET) // gpus
    allowed = STRATEGIES if cuda else ("ddp",)
    tried = [strategy] if strategy != "auto" else list(allowed)
    notes: list[str] = []
    if not cuda and any(s not in allowed for s in tried):
        return _refused(base, gpus, nodes, single, shape, tried[0], batch_size, seq_len, budget, host_budget,
                        f"{tried[0]} needs CUDA GPUs: accelerate runs FSDP and bitsandbytes only there "
                        f"(several CPU processes train with DDP)")
    ckpts = [gradient_checkpointing] if gradient_checkpointing is not None else [False, True]
    for s in tried:
        for ckpt in ckpts:
            b = batch_size
            while b >= 1:
                e = _estimate(s, shape, single.precision, world, b, seq_len, ckpt)
                host_need = _host_need(s, shape, nodes)
                if e.total <= budget and host_need <= host_budget:
                    return ClusterPlan(base, gpus, nodes, s, single, e, budget, host_need, host_budget, ckpt, b,
                                       -(-batch_size // b), reason=_why(s, shape, single.precision, world, seq_len,
                                                                        budget, nodes, host_budget,
                                                                        "card" if cuda else "process"),
                                       notes=notes)
                b //= 2
    return _refused(base, gpus, nodes, single, shape, tried[-1], batch_size, seq_len, budget, host_budget, "")


def _why(s: str, shape: dict, precision: str, world: int, seq_len: int, budget: int, nodes: int,
         host_budget: int, unit: str = "card") -> str:
    """Why ``s`` was chosen: what the simpler strategies before it would need."""
    def need(x: str) -> float:
        return _estimate(x, shape, precision, world, 1, seq_len, True).total / GiB

    usable = f"{budget / GiB:.1f} GiB usable per {unit}"
    if s == "ddp":
        return f"the whole model and optimizer fit in every {unit}: data-parallel ({usable})"
    if s == "fsdp":
        return (f"a full copy per card (DDP) needs {need('ddp'):.1f} GiB of {usable}: FSDP full-shard divides "
                f"weights, gradients and optimizer over {world} processes")
    if s == "fsdp-offload":
        return (f"DDP needs {need('ddp'):.1f} GiB and FSDP full-shard {need('fsdp'):.1f} GiB per card of {usable}: "
                f"the sharded state goes to host RAM ({_host_need(s, shape, nodes) / GiB:.0f} GiB per machine)")
    offload_host = _host_need("fsdp-offload", shape, nodes) / GiB
    return (f"a full fine-tune needs {need('ddp'):.1f} GiB per card with DDP, {need('fsdp'):.1f} GiB with FSDP "
            f"(of {usable}) and {offload_host:.0f} GiB of host RAM per machine to offload (of "
            f"{host_budget / GiB:.0f}): frozen NF4 base + LoRA on every card, constitutional parts fully trained")


def _refused(base, gpus, nodes, single, shape, s, batch_size, seq_len, budget, host_budget, why) -> ClusterPlan:
    world = gpus * nodes
    e = _estimate(s, shape, single.precision, world, batch_size, seq_len, True)
    needs = ", ".join(f"{LABELS[x]} {_estimate(x, shape, single.precision, world, 1, seq_len, True).total / GiB:.1f}"
                      for x in (STRATEGIES if single.device_kind == "cuda" else ("ddp",)))
    unit = "card" if single.device_kind == "cuda" else "process"
    reason = why or (f"nothing fits {budget / GiB:.1f} GiB per {unit}: at micro-batch 1 with gradient "
                     f"checkpointing {base} needs (GiB per {unit}) {needs}")
    alternative = None
    if single.device_kind == "cuda":
        for n in (2, 4, 8, 16, 32, 64):
            if n * nodes > world and _estimate("fsdp", shape, single.precision, n * nodes, 1, seq_len,
                                               True).total <= budget:
                alternative = f"FSDP full-shard over {n} cards per machine ({n * nodes} in all)"
                break
    return ClusterPlan(base, gpus, nodes, s, single, e, budget, _host_need(s, shape, nodes), host_budget, True,
                       batch_size, 1, fits=False, reason=reason, alternative=alternative)


# --------------------------------------------------------------------------- the README's table

TABLE_SIZES = ("pythia-70m", "pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b", "pythia-2.8b", "pythia-6.9b",
               "pythia-12b")
TABLE_CARDS = (1, 2, 4, 8)
#: (card memory in GiB, name, compute capability): a Pascal P100 16 GB and an Ampere A100 80 GB
TABLE_DEVICES = ((16, "Tesla P100-PCIE-16GB", (6, 0)), (80, "NVIDIA A100-SXM4-80GB", (8, 0)))


def mock_card(gib: int, name: str = "GPU", cc: tuple[int, int] = (8, 0)) -> DeviceInfo:
    """A CUDA card of ``gib`` GiB with kernels in this build (for plans of machines not at hand)."""
    return DeviceInfo(kind="cuda", name=name, total_bytes=gib * GiB, available_bytes=gib * GiB,
                      compute_capability=cc, arch_list=(f"sm_{cc[0]}{cc[1]}",), kernels_present=True,
                      fp16=cc >= (6, 0), bf16=cc >= (8, 0))


def table_plans() -> dict[tuple[str, int, int], ClusterPlan]:
    """{(size, card GiB, cards): plan} for the README's table (batch 4 x 512 tokens, one machine)."""
    out = {}
    for gib, name, cc in TABLE_DEVICES:
        card = mock_card(gib, name, cc)
        for size in TABLE_SIZES:
            for n in TABLE_CARDS:
                out[size, gib, n] = make_cluster_plan(size, card, gpus=n, host_bytes=TABLE_HOST_GIB * GiB)
    return out


def plans_table() -> str:
    """The README's Markdown table: strategy and GiB per card, or "does not fit"."""
    plans = table_plans()
    cols = [(gib, n) for gib, _, _ in TABLE_DEVICES for n in TABLE_CARDS]
    head = "| base | " + " | ".join(f"{n}x{gib} GB" for gib, n in cols) + " |"
    rows = [head, "|" + "---|" * (len(cols) + 1)]
    for size in TABLE_SIZES:
        cells = []
        for gib, n in cols:
            p = plans[size, gib, n]
            cells.append(f"{p.label} {p.estimate_bytes / GiB:.1f}" if p.fits else "does not fit")
        rows.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def visible_devices(kind: str) -> int:
    """How many devices of ``kind`` this machine shows (CUDA GPUs; on the CPU: its cores)."""
    import os

    if kind != "cuda":
        return os.cpu_count() or 1
    import torch

    return torch.cuda.device_count()


def diagnose_cluster(base: str = "kala-tiny", device: str = "auto", *, gpus: int = 1, nodes: int = 1,
                     **kwargs) -> ClusterPlan:
    """Probe this machine and plan ``base`` over ``gpus`` of its devices on each of ``nodes`` machines
    like it (`kala doctor --gpus N --nodes M`); says so when this machine shows fewer devices."""
    from kala_engine.doctor import check_base, probe_device

    dev = probe_device(device)
    plan = make_cluster_plan(base, dev, gpus=gpus, nodes=nodes, **kwargs)
    plan.single.base_problem = check_base(base).problem
    seen = visible_devices(dev.kind)
    if dev.kind == "cuda" and seen < gpus:
        plan.notes.append(f"this machine shows {seen} GPU(s); the plan is for {gpus} per machine like its first")
    if dev.kind != "cuda" and gpus > 1:
        plan.notes.append(f"no usable CUDA GPU: {gpus} CPU processes per machine (gloo), sharing its RAM")
    return plan
