"""The settings of a training run: :class:`TrainConfig`, the one source of their defaults.

``kala train``'s flags, ``kala demo`` and the app's Train page take their defaults from the
fields here (no torch here: the app imports it). The run records the config in its run.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: peak learning rate of a model trained from scratch (kala-tiny; what ``kala demo`` uses)
SCRATCH_LEARNING_RATE = 2e-3
#: peak learning rate when fine-tuning a pretrained base (Pythia or a KALA model)
FINE_TUNE_LEARNING_RATE = 3e-4


#: training methods: kala train's supervised fine-tuning, and kala align's preference methods
METHODS = ("sft", "dpo", "orpo", "simpo")
#: peak learning rate of kala align (preference optimisation moves a trained model a little)
ALIGN_LEARNING_RATE = 5e-5


def default_learning_rate(base: str) -> float:
    """The learning rate a run of ``base`` uses unless one is given."""
    return SCRATCH_LEARNING_RATE if base == "kala-tiny" else FINE_TUNE_LEARNING_RATE


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
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is split across them, sizes differing by at most 1)
    #: peak LR; None: :func:`default_learning_rate` of the base (kala-tiny from scratch 2e-3, as
    #: ``kala demo``; a pretrained base 3e-4 - lower it for large ones, e.g. 2e-5)
    learning_rate: float | None = None
    min_lr_ratio: float = 0.1  # cosine decays to learning_rate * min_lr_ratio
    warmup_steps: int | None = None  # None: 5 % of the steps (at most 100)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ethics_weight: float = 2.0  # lambda: ethics loss weight against the LM loss (kala demo's)
    deep_supervision_weight: float = 0.1  # mu: per-layer term relative to the final ethics loss
    max_length: int = 256  # tokens per example (longer ones are cut)
    seed: int = 0
    eval_every: int = 50  # optimizer steps between validations, also at the start and the end (0: never)
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

    # -- preference alignment (kala align, issue 17; kala_engine.train.align) --
    #: sft: kala train's supervised loss; dpo (a reference model), orpo or simpo (reference-free):
    #: a preference loss on chosen/rejected pairs plus ethics_weight * the ethics loss
    method: str = "sft"
    beta: float = 0.1  # DPO/SimPO: inverse temperature of the implicit reward; ORPO: weight of the odds-ratio term
    simpo_gamma: float = 0.5  # SimPO's target reward margin (TRL's simpo_gamma)

    # --- several processes (issue 19): `kala train --gpus N [--nodes M ...]` starts them through
    # torch.distributed.run; the doctor's plan over every device (kala_engine.doctor_multi) chooses the strategy
    gpus: int = 1  # processes per machine: CUDA GPUs, or gloo processes on the CPU
    nodes: int = 1  # machines
    node_rank: int = 0  # this machine's index among them (0: the one at master_addr)
    master_addr: str = "127.0.0.1"  # address of machine 0, which every process connects to
    master_port: int = 29500
    strategy: str = "auto"  # auto | ddp | fsdp | fsdp-offload | nf4-lora (auto: the plan's first that fits)

    # ---- issue 18: dynamic ethics weights, per-layer ethics tuning, students (kala_engine.train.ethics_weights)
    #: how lambda (ethics_weight) moves over the run: constant | warmup (linear from 0 over
    #: lambda_warmup_steps) | cosine (the warm-up, then cosine down to ethics_weight * lambda_min_ratio)
    lambda_schedule: str = "constant"
    lambda_warmup_steps: int = 100
    lambda_min_ratio: float = 0.1
    #: per-law weights on top of the constitution's priorities: fixed (the priorities) | uncertainty
    #: (Kendall et al. 2018: learned log-variances, a law with a larger loss pulls less) | validation
    #: (after each validation a law's weight is its MAE over the mean MAE, bounded to
    #: [1/adaptive_bound, adaptive_bound]: a law the model gets more wrong pulls more)
    law_weighting: str = "fixed"
    adaptive_bound: float = 2.0
    #: layers whose constitutional parts (value head, monitor, gate) train; None: every layer
    ethics_layers: list | None = None
    #: per-layer weights of the deep-supervision term (one per layer); None: equal
    layer_supervision_weights: list | None = None
    #: freeze the whole base (embeddings, attention, MLP, LM head): only constitutional parts train
    constitutional_only: bool = False
    #: keep this many layers of the base, evenly spaced, the last kept (a smaller student); None: all
    keep_layers: int | None = None
    #: a folder whose tokenizer this run uses instead of the base's (or of training one for kala-tiny)
    tokenizer_from: str | None = None

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
        if self.learning_rate is None:
            self.learning_rate = default_learning_rate(self.base)
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
        if self.gpus < 1 or self.nodes < 1 or not 0 <= self.node_rank < self.nodes:
            bad("gpus/nodes/node_rank", f"gpus >= 1, nodes >= 1 and node_rank in [0, nodes={self.nodes})")
        if self.strategy not in ("auto", "ddp", "fsdp", "fsdp-offload", "nf4-lora"):
            bad("strategy", "auto, ddp, fsdp, fsdp-offload or nf4-lora")
        if not 0 < self.master_port < 65536:
            bad("master_port", "in (0, 65536)")
        if self.eval_every < 0 or self.save_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("TrainConfig.eval_every/save_every must be >= 0 and keep_checkpoints >= 1")
        if self.method not in METHODS:
            bad("method", " | ".join(METHODS))
        if not 0 < self.beta <= 100:
            bad("beta", "in (0, 100]")
        if not 0 <= self.simpo_gamma <= 100:
            bad("simpo_gamma", "in [0, 100]")
        if self.method != "sft" and self.gpus * self.nodes > 1:
            raise ValueError(f"TrainConfig: {self.method} (kala align) runs in one process for now; several "
                             "GPUs or machines train with the constitutional SFT method (gpus=1, nodes=1)")
        self._check_issue_18_fields(bad)

    def _check_issue_18_fields(self, bad) -> None:
        if self.lambda_schedule not in LAMBDA_SCHEDULES:
            bad("lambda_schedule", " | ".join(LAMBDA_SCHEDULES))
        if self.lambda_warmup_steps < 0:
            bad("lambda_warmup_steps", ">= 0")
        if not 0 <= self.lambda_min_ratio <= 1:
            bad("lambda_min_ratio", "in [0, 1]")
        if self.law_weighting not in LAW_WEIGHTINGS:
            bad("law_weighting", " | ".join(LAW_WEIGHTINGS))
        if not 1 <= self.adaptive_bound <= 100:
            bad("adaptive_bound", "in [1, 100]")
        if self.ethics_layers is not None and (not self.ethics_layers or any(
                not isinstance(i, int) or i < 0 for i in self.ethics_layers)):
            bad("ethics_layers", "a non-empty list of layer indices >= 0")
        if self.layer_supervision_weights is not None and (not self.layer_supervision_weights or any(
                not isinstance(w, (int, float)) or w < 0 for w in self.layer_supervision_weights)):
            bad("layer_supervision_weights", "a non-empty list of weights >= 0")
        if self.keep_layers is not None and self.keep_layers < 1:
            bad("keep_layers", ">= 1")


LAMBDA_SCHEDULES = ("constant", "warmup", "cosine")
LAW_WEIGHTINGS = ("fixed", "uncertainty", "validation")
