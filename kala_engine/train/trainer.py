"""Dual-loss training of KALA: one readable loop on accelerate, resumable, reporting live.

loss = LM cross-entropy (tokens that should be learned) + lambda * (sum_k w_k MSE_k of the final
law scores + mu * per-layer deep supervision), every term logged on its own (the model computes
them; see KALAForCausalLM.forward).

A run is a folder (its format is :class:`kala_engine.train.run_folder.RunFolder`'s)::

    run.json            the full config, package versions, hardware and plan
    metrics.jsonl       one JSON line per optimizer step; validation lines carry "split": "validation"
    tokenizer/          the tokenizer (trained on the data for kala-tiny)
    checkpoints/step-N/ model.safetensors, optimizer.pt, rng.pt, meta.json - written to a
                        temporary name then renamed; the last `keep_checkpoints` are kept
    final/              save_pretrained() + tokenizer: what `kala chat` and the app load

:func:`train` reads as its four parts: :func:`_set_up` (data, plan, model, optimizer, resume),
:func:`_fit` (the loop), :func:`validate` and :func:`_finish` (calibration, final/, run.json).

The same code runs on the CPU, one CUDA GPU, or several processes (torchrun / accelerate
launch); only the main process writes. Data order and every random state are derived from
the seed and the step, so a run resumed after a crash or kill retraces the same trajectory.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kala_engine.constitution import NUM_LAWS
from kala_engine.jobs import (
    Cancelled,
    CheckpointSaved,
    Emit,
    JobControl,
    JobError,
    LogLine,
    TrainStep,
    Validation,
)
from kala_engine.train.checkpoints import (
    architecture,
    check_resume_architecture,
    load_checkpoint,
    save_checkpoint,
)
from kala_engine.train.config import TrainConfig
from kala_engine.train.model_setup import (apply_lora, base_dir, build_model, build_tokenizer, fresh_accelerator,
                                           is_main, lr_at, merged_model)
from kala_engine.train.run_folder import RunFolder
from kala_engine.train.run_info import step_timing, versions

LAW_KEYS = [f"law_loss_{k}" for k in range(NUM_LAWS)]
#: metrics that depend on wall time (everything else in a metrics line is reproducible)
TIMING_KEYS = ("tokens_per_s", "elapsed", "eta", "memory_mb", "time")


# --------------------------------------------------------------------------- the run


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """This epoch's example order: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def train(cfg: TrainConfig, emit: Emit, control: JobControl | None = None, body=None, objective=None) -> dict:
    """Run (or resume) training; returns a summary dict. Raises JobError with a user message.

    ``body(cfg, emit, control)`` is what runs inside the run folder's lock (default: this
    module's set-up, fit, validate, finish; ``kala align`` passes its own).
    ``objective(cfg, model, accelerator, plan, emit)`` makes the loss of the default body's run
    (default :func:`kala_engine.train.ethics_weights.make_objective`; distillation passes its own).

    The main process owns the run folder for the whole run (``DIR/.lock``, see
    :mod:`kala_engine.train.run_lock`): a second starter - another ``kala train``, or the app's worker
    - is refused before it writes anything, and a start refused or failed before it wrote
    anything leaves no empty folder behind.
    """
    from kala_engine.train.run_lock import LOCK_NAME, RunLock

    body = body or (lambda c, e, k: _train(c, e, k, objective))
    if not is_main():  # torchrun / accelerate launch: rank 0 holds the folder for all ranks
        return body(cfg, emit, control)
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
        return body(cfg, emit, control)
    finally:
        lock.release()
        leave_no_empty_folder()


def _train(cfg: TrainConfig, emit: Emit, control: JobControl | None = None, objective=None) -> dict:
    """Set up, fit, validate at the end and finish: the four parts of a run, in order."""
    run = _set_up(cfg, emit, control or JobControl(), objective)
    step = _fit(run)
    final_val = _validate_and_log(run, step) if (is_main() or run.sharded) and run.validates else None
    return _finish(run, step, final_val)


@dataclass
class _Run:
    """What set-up made and the rest of a run uses."""

    cfg: TrainConfig
    folder: RunFolder
    emit: Emit
    control: JobControl
    accelerator: Any
    plan: Any
    tokenizer: Any
    model: Any
    optimizer: Any
    train_set: Any
    val_set: Any
    val_records: list[dict]
    collate: Any
    steps_per_epoch: int
    total_steps: int
    warmup: int
    start_step: int = 0
    last_lm: float = float("nan")
    local_lm: float = float("nan")  # this process's LM loss of the last step (before the mean over ranks)
    last_eth: float = float("nan")
    objective: Any = None  # the loss (kala_engine.train.ethics_weights.EthicsObjective or a distillation's)

    @property
    def validates(self) -> bool:
        """Validation is on (eval_every > 0) and there is a validation split."""
        return bool(self.cfg.eval_every) and self.val_set is not None and len(self.val_set) > 0

    @property
    def sharded(self) -> bool:
        """FSDP: every rank takes part in each forward (validation and the final model too)."""
        from kala_engine.train.distributed import is_sharded

        return is_sharded(self.accelerator)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.world


# --------------------------------------------------------------------------- set-up


def _load_data(cfg: TrainConfig, emit: Emit) -> tuple[list[dict], list[dict], list[str]]:
    """(training records, validation records, data warnings) of ``cfg.data``."""
    from kala_engine.data.checks import check_training_data
    from kala_engine.data.io import load_jsonl

    data_path = Path(cfg.data)
    try:
        records = load_jsonl(data_path)
    except ValueError as e:
        raise JobError(f"the dataset is not valid: {e} (check it with: kala data validate {data_path})") from None
    train_records = [r for r in records if r.get("split", "train") == "train"]
    val_records = [r for r in records if r.get("split") == "validation"]
    if not train_records:
        raise JobError(f"{data_path}: no training records (split 'train')")
    warnings = check_training_data(train_records, val_records, data=str(data_path), eval_every=cfg.eval_every,
                                   ethics_weight=cfg.ethics_weight)
    for w in warnings:
        emit(LogLine(w, level="warning"))
    return train_records, val_records, warnings


def _plan_and_accelerator(cfg: TrainConfig, emit: Emit):
    """(device, plan, Accelerator): what the doctor plans for this hardware; JobError if it will not fit."""
    from kala_engine.doctor import make_plan, probe_device

    dev = probe_device(cfg.device)
    if cfg.gpus * cfg.nodes > 1:  # started by `kala train --gpus N`: the plan over every device
        from kala_engine.train.distributed import make_accelerator

        return (dev, *make_accelerator(cfg, emit))
    plan = make_plan(cfg.base, dev, batch_size=cfg.batch_size, seq_len=cfg.max_length, mode=cfg.mode,
                     precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)
    for w in dev.warnings:
        emit(LogLine(w, level="warning"))
    if not plan.fits:
        raise JobError(f"this run will not fit: {plan.reason}" + (f"; try {plan.alternative}" if plan.alternative else ""))
    if cfg.gradient_checkpointing is None:
        cfg.gradient_checkpointing = plan.gradient_checkpointing
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[plan.precision]
    accelerator = fresh_accelerator(mixed, cpu=plan.device_kind == "cpu")
    emit(LogLine(f"plan: {plan.mode} on {plan.device_kind} in {plan.precision}, "
                 f"gradient checkpointing {'on' if cfg.gradient_checkpointing else 'off'}, "
                 f"{accelerator.num_processes} process(es)"))
    return dev, plan, accelerator


def _model_and_tokenizer(cfg: TrainConfig, folder: RunFolder, train_records: list[dict], plan, accelerator,
                         emit: Emit) -> tuple[Any, Any, dict]:
    """(model, tokenizer, architecture): the tokenizer from the main process, the model per the plan."""
    if accelerator.is_main_process:
        tokenizer = build_tokenizer(cfg, train_records, folder, emit)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        from kala_engine.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(folder.tokenizer_dir)
    model = build_model(cfg, tokenizer, plan, emit)
    _layers_to_train(cfg, model, emit)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = (plan.mode in ("lora", "nf4-lora") or cfg.mode in ("lora", "nf4-lora")) and not cfg.constitutional_only
    if lora:
        model = apply_lora(model, cfg, quantized=plan.mode == "nf4-lora")
    model.train()
    arch = architecture(model.get_base_model() if lora else model, cfg.lora_rank if lora else None)
    if cfg.resume:  # every rank: one refusing alone would leave the others waiting in prepare()
        check_resume_architecture(folder, arch)
    return model, tokenizer, arch


def _layers_to_train(cfg: TrainConfig, model, emit: Emit) -> None:
    """A smaller model (keep_layers) and the frozen parts (ethics_layers, constitutional_only)."""
    from kala_engine.train.ethics_layers import apply_ethics_layers, keep_layers

    if cfg.keep_layers is not None and cfg.keep_layers != model.config.num_hidden_layers:
        kept = keep_layers(model, cfg.keep_layers)
        emit(LogLine(f"kept layers {kept} of the base ({cfg.keep_layers} layers)"))
    apply_ethics_layers(model, cfg, emit)


def _optimizer(model, cfg: TrainConfig, extra: list | None = None):
    """AdamW; no weight decay on biases and norms (nanoGPT's configure_optimizers); ``extra``
    (the objective's own tensors) in a group of their own without decay."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if extra:
        groups.append({"params": list(extra), "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8, foreach=True)


def _restore(cfg: TrainConfig, folder: RunFolder, model, optimizer, emit: Emit, objective=None) -> int:
    """The step to start from: a resume restores the newest readable checkpoint; a new run seeds."""
    if not cfg.resume:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        return 0
    meta = load_checkpoint(folder, model, optimizer, emit)
    if meta is None and folder.checkpoint_steps():
        raise JobError(f"{folder.path}: no readable checkpoint to resume from; start a new run in another folder")
    if meta is None:
        emit(LogLine("no checkpoint yet: starting from step 0", level="warning"))
    start = int(meta["step"]) if meta is not None else 0
    if meta is not None and objective is not None:
        objective.load_state_dict(meta.get("position", {}).get("objective"))
    if is_main():
        folder.truncate_metrics(start)
    return start


def _set_up(cfg: TrainConfig, emit: Emit, control: JobControl, make_objective=None) -> _Run:
    """Data, plan, tokenizer, model, optimizer, the step to start from; run.json written."""
    from kala_engine.data.collate import ConstitutionalCollator, JsonlDataset

    folder = RunFolder(cfg.run_dir)
    if not Path(cfg.data).is_file():
        raise JobError(f"{cfg.data}: no such dataset file (make one with: kala data generate --out {cfg.data})")
    if is_main():
        if folder.path.exists() and not cfg.resume and folder.has_progress():
            raise JobError(f"{folder.path} already holds a run; pass --resume to continue it or choose another folder")
    if cfg.base != "kala-tiny":
        base_dir(cfg.base, cfg.revision)  # a base that is not here is refused before the run folder is made
    train_records, val_records, warnings = _load_data(cfg, emit)
    dev, plan, accelerator = _plan_and_accelerator(cfg, emit)
    if is_main():
        folder.path.mkdir(parents=True, exist_ok=True)  # only now: a refused start leaves no empty run folder
    model, tokenizer, arch = _model_and_tokenizer(cfg, folder, train_records, plan, accelerator, emit)

    train_set = JsonlDataset(train_records, tokenizer, max_length=cfg.max_length)
    val_set = JsonlDataset(val_records, tokenizer, max_length=cfg.max_length) if val_records else None
    steps_per_epoch = max(1, len(train_set) // (cfg.batch_size * accelerator.num_processes))
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, max(1, total_steps // 20))
    from kala_engine.train import ethics_weights
    from kala_engine.train.distributed import load_state_checkpoint, newest_state_checkpoint

    objective = (make_objective or ethics_weights.make_objective)(cfg, model, accelerator, plan, emit)
    if cfg.resume and "distillation" in folder.read_info() and "distillation" not in getattr(objective, "info", {}):
        raise JobError(f"{folder.path} is a distillation run; resume it with kala distill --teacher "
                       f"{folder.read_info()['distillation'].get('teacher')} ... --resume")
    optimizer = _optimizer(model, cfg, objective.parameters())
    state = newest_state_checkpoint(folder) if cfg.resume and accelerator.num_processes > 1 else None
    start_step = int(state[0]["step"]) if state else _restore(cfg, folder, model, optimizer, emit, objective)
    model, optimizer = accelerator.prepare(model, optimizer)
    if state:  # a multi-process checkpoint: accelerate's load_state (sharded under FSDP)
        load_state_checkpoint(accelerator, state[1], emit)
        if is_main():
            folder.truncate_metrics(start_step)
    if is_main():
        folder.write_info({
            "config": asdict(cfg), "versions": versions(), "plan": plan.lines,
            "device": {"kind": plan.device_kind, "name": dev.name}, "processes": accelerator.num_processes,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_steps": total_steps, "train_records": len(train_set), "validation_records": len(val_set or []),
            "status": "running", "started": time.time(), "warnings": warnings, "architecture": arch,
            **getattr(objective, "info", {})})
    return _Run(cfg, folder, emit, control, accelerator, plan, tokenizer, model, optimizer, train_set, val_set,
                val_records, ConstitutionalCollator(tokenizer, max_length=cfg.max_length), steps_per_epoch,
                total_steps, warmup, start_step, objective=objective)


# --------------------------------------------------------------------------- fit


def micro_batch_sizes(batch_size: int, grad_accum: int) -> list[int]:
    """How a step's ``batch_size`` examples split into ``grad_accum`` micro-batches: every example
    is used, the sizes differ by at most one (8 in 3: [2, 3, 3])."""
    bounds = [k * batch_size // grad_accum for k in range(grad_accum + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


def _micro_batches(run: _Run, step: int) -> list[tuple[dict, float]]:
    """This process's micro-batches of optimizer step ``step`` with their share of the step's
    examples: fixed by (seed, step), so a resumed run sees the same data."""
    cfg, rank = run.cfg, run.accelerator.process_index
    epoch, idx = divmod(step, run.steps_per_epoch)
    order = _epoch_order(len(run.train_set), cfg.seed, epoch)
    gb = run.global_batch
    ids = order[idx * gb:(idx + 1) * gb][rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
    out, start = [], 0
    for size in micro_batch_sizes(len(ids), cfg.grad_accum):
        b = run.collate([run.train_set[int(i)] for i in ids[start:start + size]])
        out.append(({k: v.to(run.accelerator.device) for k, v in b.items()}, size / len(ids)))
        start += size
    return out


def _optimizer_step(run: _Run, step: int, lr: float) -> tuple[torch.Tensor, float, int, dict]:
    """One optimizer step: (loss parts [loss, lm, ethics, deep, per law], grad norm, tokens, the
    objective's extra terms)."""
    acc, model = run.accelerator, run.model
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    parts, extra = torch.zeros(4 + NUM_LAWS, device=acc.device), {}
    n_tokens = 0
    micro = _micro_batches(run, step)
    for k, (b, share) in enumerate(micro):
        n_tokens += int(b["attention_mask"].sum())
        with acc.no_sync(model) if k < len(micro) - 1 else contextlib.nullcontext():
            with acc.autocast():
                out, loss, terms = run.objective.forward(model, b, step, run.total_steps)
            acc.backward(loss * share)
        parts += torch.stack([loss.detach(), out.lm_loss.detach(), out.ethics_loss.detach(),
                              out.deep_loss.detach(), *out.ethics_loss_per_law.detach()]).float() * share
        for name, v in terms.items():
            extra[name] = extra.get(name, 0.0) + v.detach().float() * share
    run.local_lm = float(parts[1])  # this rank's, before the mean over ranks (rank progress)
    parts = acc.reduce(parts, reduction="mean")
    names = sorted(extra)
    if names:
        values = acc.reduce(torch.stack([extra[n] for n in names]), reduction="mean")
        extra = {n: float(v) for n, v in zip(names, values, strict=True)}
    for p in run.objective.parameters():  # not the model's: DDP does not average their gradients
        if p.grad is not None and acc.num_processes > 1:
            p.grad = acc.reduce(p.grad, reduction="mean")
    if not bool(torch.isfinite(parts).all()):
        run.optimizer.zero_grad(set_to_none=True)
        good = run.folder.checkpoint_steps()
        raise JobError(
            f"the loss became {'NaN' if bool(torch.isnan(parts).any()) else 'infinite'} at step {step + 1} "
            f"(lm {float(parts[1]):.4g}, ethics {float(parts[2]):.4g}); the run stopped. Lower the learning "
            f"rate (now {run.cfg.learning_rate:g})" + (" or use fp32" if run.plan.precision != "fp32" else "")
            + (f"; the last good checkpoint is step-{good[-1]} (resume with --resume)" if good else ""))
    grad_norm = acc.clip_grad_norm_(model.parameters(), run.cfg.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return parts, float(grad_norm), n_tokens, extra


def _checkpoint(run: _Run, step: int) -> None:
    if run.world > 1:  # every rank writes its part (accelerate's save_state)
        from kala_engine.train.distributed import save_state_checkpoint

        path = save_state_checkpoint(run.folder, step, run.accelerator, {"step": step, "steps_per_epoch":
                                     run.steps_per_epoch}, run.cfg.keep_checkpoints)
        if is_main():
            run.emit(CheckpointSaved(step=step, path=str(path)))
        return
    if is_main():
        path = save_checkpoint(run.folder, step, run.accelerator.unwrap_model(run.model), run.optimizer,
                               {"step": step, "steps_per_epoch": run.steps_per_epoch,
                                **({"objective": run.objective.state_dict()} if getattr(run, "objective", None)
                                   else {})}, run.cfg.keep_checkpoints)
        run.emit(CheckpointSaved(step=step, path=str(path)))
    run.accelerator.wait_for_everyone()


def _sft_step(run: _Run, step: int, lr: float) -> tuple[dict, float, int]:
    """One optimizer step of constitutional SFT: its numbers for the metrics line, grad norm, tokens."""
    weights = run.objective.weights_log(step, run.total_steps)
    parts, grad_norm, n_tokens, extra = _optimizer_step(run, step, lr)
    return ({"loss": float(parts[0]), "lm_loss": float(parts[1]), "ethics_loss": float(parts[2]),
             "deep_loss": float(parts[3]), **{LAW_KEYS[i]: float(parts[4 + i]) for i in range(NUM_LAWS)},
             **extra, **weights}, grad_norm, n_tokens)


def _fit(run: _Run, take_step=_sft_step, validate_and_log=None, doing: str = "training", all_ranks: bool = True) -> int:
    """Every method's loop from ``run.start_step`` to ``run.total_steps`` (``take_step``: the method's
    optimizer step); returns the last step. Validates at the start and every ``eval_every`` steps (the
    end is the caller's), checkpoints every ``save_every`` steps and on cancel (run.json says "cancelled"
    or "failed"). ``all_ranks``: every rank of a sharded run validates, rank 0 shows each rank's progress."""
    cfg, emit, total = run.cfg, run.emit, run.total_steps
    validate_and_log = validate_and_log or _validate_and_log
    if run.start_step == 0 and (is_main() or (all_ranks and run.sharded)) and run.validates:
        validate_and_log(run, 0)
    t0, tokens_seen, step = time.perf_counter(), 0, run.start_step
    emit(LogLine(f"{doing} {total} steps ({run.steps_per_epoch} per epoch) from step {step}"))
    try:
        while step < total:
            run.control.checkpoint(on_pause=lambda: emit(LogLine(f"paused at step {step}")))
            lr = lr_at(step, total, cfg, run.warmup)
            numbers, grad_norm, n_tokens = take_step(run, step, lr)
            step += 1
            tokens_seen += n_tokens * run.world
            line = {"step": step, "epoch": round(step / run.steps_per_epoch, 4), **numbers, "lr": lr,
                    "grad_norm": grad_norm, **step_timing(t0, tokens_seen, step - run.start_step, total - step)}
            run.last_lm, run.last_eth = line["lm_loss"], line["ethics_loss"]
            if all_ranks and run.world > 1:  # rank 0 shows every rank's progress
                from kala_engine.train.distributed import rank_progress

                line["ranks"] = rank_progress(run.accelerator, run.local_lm, n_tokens)
            if is_main():
                run.folder.append_metrics(line)
            emit(TrainStep(step=step, total_steps=total, metrics=line))
            if (cfg.eval_every and step % cfg.eval_every == 0 and step < total
                    and (is_main() or (all_ranks and run.sharded)) and run.validates):
                validate_and_log(run, step)
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                _checkpoint(run, step)
    except BaseException as e:
        record_interruption(run, step, _checkpoint, cancelled=isinstance(e, Cancelled))
        raise
    return step


def record_interruption(run, step: int, checkpoint, cancelled: bool) -> None:
    """A fit loop (any training method's) stopped early at ``step``: cancelled → a checkpoint there
    (when the run moved) and status "cancelled"; anything else → status "failed". The caller re-raises."""
    if cancelled:
        run.emit(LogLine(f"cancelled at step {step}: saving a checkpoint"))
        if step > run.start_step:
            checkpoint(run, step)
    if is_main():
        run.folder.update_info(status="cancelled" if cancelled else "failed", step=step)


# --------------------------------------------------------------------------- validate


def validate(run: _Run, step: int) -> dict:
    """The validation line at ``step``: LM and ethics loss and per-law score MAE over at most
    ``eval_batches`` batches of the validation split."""
    cfg, model, val_set = run.cfg, run.model, run.val_set
    model.eval()
    sums = torch.zeros(3 + NUM_LAWS, dtype=torch.float64)
    abs_err = torch.zeros(NUM_LAWS, dtype=torch.float64)
    n_tok = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for j in range(min(cfg.eval_batches, math.ceil(len(val_set) / cfg.batch_size))):
            b = run.collate([val_set[i] for i in range(j * cfg.batch_size, min(len(val_set), (j + 1) * cfg.batch_size))])
            b = {k: v.to(run.accelerator.device) for k, v in b.items()}
            with run.accelerator.autocast():
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
    return {"split": "validation", "step": step, "lm_loss": float(sums[0] / k),
            "ethics_loss": float(sums[1] / k),
            **{f"val_mae_{i}": round(v, 6) for i, v in enumerate(mae)},
            "mae_mean": round(sum(mae) / NUM_LAWS, 6)}


def _validate_and_log(run: _Run, step: int) -> dict:
    line = validate(run, step)
    run.objective.observe_validation(line)  # every rank (under FSDP every rank validates)
    if is_main():
        run.folder.append_metrics(line)
        run.emit(Validation(step=step, metrics=line))
    return line


# --------------------------------------------------------------------------- finish


def _calibrate(run: _Run, model) -> dict | None:
    """Per-law thresholds on the validation split (kala_engine.train.calibration), or None."""
    if not (run.val_records and run.cfg.calibrate):
        return None
    from kala_engine.train.calibration import calibrate_thresholds

    with run.accelerator.autocast():
        calibration = calibrate_thresholds(model, run.tokenizer, run.val_records,
                                           max_fpr=run.cfg.calibration_fpr, max_length=run.cfg.max_length)
    def fmt(ts):
        return ", ".join("-" if t is None else f"{t:.3f}" for t in ts)

    run.emit(LogLine(f"calibrated per-law thresholds on the validation split (<= "
                     f"{run.cfg.calibration_fpr:.0%} benign prompts flagged): {fmt(calibration['thresholds'])}"))
    if any(t is not None for t in calibration.get("reply_thresholds") or []):
        run.emit(LogLine(f"reply-stop thresholds (<= {run.cfg.calibration_fpr:.0%} good replies and <= "
                         f"{calibration['max_refusals_stopped']:.0%} refusals stopped): "
                         f"{fmt(calibration['reply_thresholds'])}"))
    return calibration


def _finish(run: _Run, step: int, final_val: dict | None) -> dict:
    """Calibrate, save final/, mark run.json finished; returns the run's summary."""
    from kala_engine.train.distributed import full_model

    model = full_model(run.accelerator, run.model) if run.sharded else run.accelerator.unwrap_model(run.model)
    if is_main():
        calibration = _calibrate(run, model)
        save_final(model, run.tokenizer, run.folder, run.plan.mode,
                   law_thresholds=calibration["thresholds"] if calibration else None,
                   reply_thresholds=calibration.get("reply_thresholds") if calibration else None)
        run.folder.update_info(status="finished", step=step, final_lm_loss=run.last_lm,
                               final_ethics_loss=run.last_eth, final_validation=final_val,
                               calibration=calibration, finished=time.time())
        run.emit(LogLine(f"saved the final model to {run.folder.final_dir}"))
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return {"run_dir": str(run.folder.path), "final_dir": str(run.folder.final_dir), "steps": step,
            "lm_loss": run.last_lm, "ethics_loss": run.last_eth, "validation": final_val}


def save_final(model, tokenizer, folder: RunFolder, mode: str, law_thresholds: list | None = None,
               reply_thresholds: list | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer into final/, atomically. LoRA adapters are merged
    first; calibrated ``law_thresholds`` / ``reply_thresholds`` (if any law got one) become the
    model's defaults for prompt flags / reply stops."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no tqdm bar in logs and the app's console
    model = merged_model(model)  # LoRA merged; an NF4 base dequantized first
    if law_thresholds is not None and any(t is not None for t in law_thresholds):
        model.config.law_thresholds = list(law_thresholds)
    if reply_thresholds is not None and any(t is not None for t in reply_thresholds):
        model.config.reply_thresholds = list(reply_thresholds)
    with folder.writing_final() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def train_job(cfg: TrainConfig):
    """The training run as an engine job ``(emit, control) -> summary`` (see kala_engine.jobs)."""

    def job(emit: Emit, control: JobControl) -> dict:
        return train(cfg, emit, control)

    return job
