"""Preference alignment of a KALA model (``kala align``): DPO, ORPO or SimPO plus the ethics loss.

loss = preference loss (:mod:`kala_engine.train.preference`) + lambda * (ethics + mu * deep
supervision) over the tokens of *both* replies: the chosen reply's tokens toward its labels (1.0),
the rejected reply's toward its low law vector, so the ethics heads stay trained while the
language model learns to prefer the chosen reply.

The reference model of DPO costs no second copy when the plan uses LoRA: the same model with its
adapters disabled is the reference (the constitutional parts, trained in full, are shared by
both). A fully trained model gets a frozen copy of the starting weights, made before a resume
restores the checkpoint, so the reference is always the model the run started from. ORPO and
SimPO need no reference.

Everything else is :mod:`kala_engine.train.trainer`'s: the run-folder lock, the plan and
accelerate, the tokenizer and model set-up, the optimizer, checkpoints and exact resume (data
order fixed by seed and step), pause/resume/cancel through :class:`JobControl`, calibration and
``final/``. metrics.jsonl lines carry the method's numbers: ``preference_loss``,
``rewards_chosen``, ``rewards_rejected``, ``reward_margin``, ``preference_accuracy``, the
ethics loss per law, ``lm_loss`` (the per-token NLL of the chosen replies), and the model's own
preference, comparable before and after a run and across methods: ``logp_accuracy`` (the share
of pairs whose chosen reply has the higher per-token log-probability) and ``logp_margin`` (the
mean per-token log-probability of the chosen reply minus the rejected one's).
:func:`held_out_preference` measures the last two for any saved model.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kala_engine.constitution import NUM_LAWS
from kala_engine.jobs import Emit, JobControl, JobError, LogLine, Validation
from kala_engine.train.config import TrainConfig
from kala_engine.train.model_setup import base_dir, is_main
from kala_engine.train.preference import NEEDS_REFERENCE, preference_loss, sequence_logps
from kala_engine.train.run_folder import RunFolder
from kala_engine.train.run_info import versions
from kala_engine.train.trainer import (
    LAW_KEYS,
    _finish,
    _fit,
    _micro_batches,
    _model_and_tokenizer,
    _optimizer,
    _plan_and_accelerator,
    _restore,
    _Run,
    train,
)

#: per-step numbers besides the law losses: (metrics key, index in the step's stats vector)
STATS = ("loss", "preference_loss", "lm_loss", "ethics_loss", "deep_loss", "rewards_chosen", "rewards_rejected",
         "reward_margin", "preference_accuracy", "logp_accuracy", "logp_margin")


def align(cfg: TrainConfig, emit: Emit, control: JobControl | None = None) -> dict:
    """Run (or resume) preference alignment in ``cfg.run_dir``; returns the run's summary."""
    if cfg.method == "sft":
        raise JobError("kala align needs a preference method (dpo, orpo or simpo); kala train does sft")
    return train(cfg, emit, control, body=_align)


def align_job(cfg: TrainConfig):
    """The alignment run as an engine job ``(emit, control) -> summary`` (see kala_engine.jobs)."""

    def job(emit: Emit, control: JobControl) -> dict:
        return align(cfg, emit, control)

    return job


def _align(cfg: TrainConfig, emit: Emit, control: JobControl | None) -> dict:
    run = _set_up(cfg, emit, control or JobControl())
    step = _fit(run, _align_step, _validate_and_log, f"aligning ({cfg.method})", all_ranks=False)
    final_val = _validate_and_log(run, step) if is_main() and run.validates else None
    return _finish(run, step, final_val)


@dataclass
class _AlignRun(_Run):
    ref_model: Any = None  # DPO on a fully trained model: the frozen starting weights
    lora: bool = False  # DPO's reference is the model with its adapters disabled


# --------------------------------------------------------------------------- data


class PairDataset:
    """Pairs as (chosen, rejected) encoded examples (the collator's format); the first token of
    each reply (its ``<|assistant|>`` role token, the same in both) is not scored. A pair whose
    reply ``max_length`` cuts off entirely is left out (counted in ``dropped``): it has nothing to
    compare (and ORPO's log-odds of an empty reply are undefined)."""

    def __init__(self, pairs: list[dict], tokenizer, max_length: int):
        from kala_engine.data.collate import encode_records
        from kala_engine.data.pairs import pair_records

        recs = [r for p in pairs for r in pair_records(p)]
        enc = encode_records(recs, tokenizer, max_length) if recs else []
        for e in enc:
            first = next((i for i, x in enumerate(e["labels"]) if x != -100), None)
            if first is not None:
                e["labels"][first] = -100
        pairs_enc = list(zip(enc[0::2], enc[1::2], strict=True))
        self.items = [(c, r) for c, r in pairs_enc if any(x != -100 for x in c["labels"])
                      and any(x != -100 for x in r["labels"])]
        self.dropped = len(pairs_enc) - len(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class PairCollator:
    """A batch of B pairs as one batch of 2B sequences: the B chosen, then the B rejected."""

    def __init__(self, tokenizer, max_length: int):
        from kala_engine.data.collate import ConstitutionalCollator

        self.collate = ConstitutionalCollator(tokenizer, max_length=max_length)

    def __call__(self, items):
        return self.collate([c for c, _ in items] + [r for _, r in items])


# --------------------------------------------------------------------------- set-up


def _frozen_copy(model, device):
    """DPO's reference for a fully trained model: a frozen copy of its starting weights."""
    return copy.deepcopy(model).eval().requires_grad_(False).to(device)


def _load_pairs(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    from kala_engine.data.pairs import is_pair_file, load_pairs

    try:
        if not is_pair_file(cfg.data):
            raise JobError(f"{cfg.data} holds no preference pairs (its first record has no 'chosen' and "
                           f"'rejected'); make pairs with: kala data generate --pairs --out PAIRS.jsonl")
        pairs = load_pairs(cfg.data)
    except ValueError as e:
        raise JobError(f"the pair file is not valid: {e}") from None
    train_pairs = [p for p in pairs if p["split"] == "train"]
    if not train_pairs:
        raise JobError(f"{cfg.data}: no training pairs (split 'train')")
    return train_pairs, [p for p in pairs if p["split"] == "validation"]


def _check_start(cfg: TrainConfig, folder: RunFolder) -> None:
    if not Path(cfg.data).is_file():
        raise JobError(f"{cfg.data}: no such pair file (make one with: kala data generate --pairs --out {cfg.data})")
    if cfg.base == "kala-tiny":
        raise JobError("kala align starts from a trained model: pass --base a KALA model folder (kala train's "
                       "RUN/final) or a Pythia base, not kala-tiny (which is trained from scratch)")
    if is_main() and folder.path.exists() and not cfg.resume and folder.has_progress():
        raise JobError(f"{folder.path} already holds a run; pass --resume to continue it or choose another folder")
    base_dir(cfg.base, cfg.revision)  # a base that is not here is refused before the run folder is made


def _set_up(cfg: TrainConfig, emit: Emit, control: JobControl) -> _AlignRun:
    """Pairs, plan, tokenizer, model, reference, optimizer, the step to start from; run.json written."""
    from kala_engine.data.pairs import calibration_records

    folder = RunFolder(cfg.run_dir)
    _check_start(cfg, folder)
    train_pairs, val_pairs = _load_pairs(cfg)
    dev, plan, accelerator = _plan_and_accelerator(cfg, emit)
    if is_main():
        folder.path.mkdir(parents=True, exist_ok=True)
    model, tokenizer, arch = _model_and_tokenizer(cfg, folder, [], plan, accelerator, emit)
    lora = hasattr(model, "disable_adapter")
    ref = None
    if cfg.method in NEEDS_REFERENCE and not lora:  # before _restore: the reference is the starting model
        ref = _frozen_copy(model, accelerator.device)
    emit(LogLine(f"{cfg.method} on {len(train_pairs)} pairs ({len(val_pairs)} held out); reference: "
                 + ("none needed" if cfg.method not in NEEDS_REFERENCE else
                    "the model with its LoRA adapters disabled" if lora else "a frozen copy of the starting model")))
    train_set = PairDataset(train_pairs, tokenizer, cfg.max_length)
    val_set = PairDataset(val_pairs, tokenizer, cfg.max_length) if val_pairs else None
    dropped = train_set.dropped + (val_set.dropped if val_set else 0)
    if dropped:
        emit(LogLine(f"{dropped} pair(s) left out: --max-length {cfg.max_length} cuts their reply off entirely",
                     level="warning"))
    if not len(train_set):
        raise JobError(f"no training pair keeps any reply token within --max-length {cfg.max_length}; raise it")
    steps_per_epoch = max(1, len(train_set) // (cfg.batch_size * accelerator.num_processes))
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(100, max(1, total_steps // 20))
    optimizer = _optimizer(model, cfg)
    start_step = _restore(cfg, folder, model, optimizer, emit)
    model, optimizer = accelerator.prepare(model, optimizer)
    if is_main():
        folder.write_info({
            "config": asdict(cfg), "versions": versions(), "plan": plan.lines, "method": cfg.method,
            "alignment": {"method": cfg.method, "beta": cfg.beta, "ethics_weight": cfg.ethics_weight,
                          **({"simpo_gamma": cfg.simpo_gamma} if cfg.method == "simpo" else {}),
                          "reference": "lora-disabled" if lora and ref is None and cfg.method in NEEDS_REFERENCE
                          else "frozen-copy" if ref is not None else "none"},
            "device": {"kind": plan.device_kind, "name": dev.name}, "processes": accelerator.num_processes,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_steps": total_steps, "train_records": len(train_set), "validation_records": len(val_set or []),
            "status": "running", "started": time.time(), "warnings": [], "architecture": arch})
    calib = calibration_records(val_pairs)
    if not any(r["kind"] == "benign" for r in calib):  # generated pairs: every prompt is harmful
        emit(LogLine("no benign prompt among the held-out pairs: the thresholds are not recalibrated; "
                     "the base model's calibrated thresholds stay with the aligned model"))
        calib = []
    return _AlignRun(cfg, folder, emit, control, accelerator, plan, tokenizer, model, optimizer, train_set, val_set,
                     calib, PairCollator(tokenizer, cfg.max_length), steps_per_epoch,
                     total_steps, warmup, start_step, ref_model=ref, lora=lora)


# --------------------------------------------------------------------------- one batch


def _reference_logps(run: _AlignRun, b: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    if run.cfg.method not in NEEDS_REFERENCE:
        return None
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad(), run.accelerator.autocast():
        if run.ref_model is not None:
            logits = run.ref_model(**inputs).logits
        else:
            with run.accelerator.unwrap_model(run.model).disable_adapter():
                logits = run.model(**inputs).logits
    ref, _ = sequence_logps(logits, b["labels"])
    return ref.chunk(2)


def _batch_loss(run: _AlignRun, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to back-propagate, detached stats: STATS then the per-law ethics losses) of one batch."""
    cfg = run.cfg
    with run.accelerator.autocast():
        out = run.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], law_targets=b["law_targets"],
                        target_mask=b["target_mask"], target_weight=b["target_weight"])
    logps, counts = sequence_logps(out.logits, b["labels"])
    (pc, pr), (nc, nr) = logps.chunk(2), counts.chunk(2)
    ref = _reference_logps(run, b)
    pref = preference_loss(cfg.method, cfg.beta, pc, pr, nc, nr, *(ref or (None, None)), simpo_gamma=cfg.simpo_gamma)
    loss = pref.loss + out.loss  # out.loss: ethics_weight * (ethics + mu * deep), the model's own
    own = pc.detach() / nc.clamp(min=1) - pr.detach() / nr.clamp(min=1)  # per-token log-prob, chosen - rejected
    stats = torch.stack([loss.detach(), pref.loss.detach(), pref.nll_chosen.detach(), out.ethics_loss.detach(),
                         out.deep_loss.detach(), pref.rewards_chosen.mean(), pref.rewards_rejected.mean(),
                         pref.margin.mean(), pref.accuracy.mean(), (own > 0).float().mean(), own.mean(),
                         *out.ethics_loss_per_law.detach()]).float()
    return loss, stats


def _optimizer_step(run: _AlignRun, step: int, lr: float) -> tuple[torch.Tensor, float, int]:
    acc, model = run.accelerator, run.model
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    stats = torch.zeros(len(STATS) + NUM_LAWS, device=acc.device)
    n_tokens = 0
    micro = _micro_batches(run, step)
    for k, (b, share) in enumerate(micro):
        n_tokens += int(b["attention_mask"].sum())
        with acc.no_sync(model) if k < len(micro) - 1 else contextlib.nullcontext():
            loss, s = _batch_loss(run, b)
            acc.backward(loss * share)
        stats += s * share
    stats = acc.reduce(stats, reduction="mean")
    if not bool(torch.isfinite(stats).all()):
        run.optimizer.zero_grad(set_to_none=True)
        raise JobError(f"the loss became NaN or infinite at step {step + 1} (preference {float(stats[1]):.4g}, "
                       f"ethics {float(stats[3]):.4g}); the run stopped. Lower the learning rate "
                       f"(now {run.cfg.learning_rate:g}) or beta (now {run.cfg.beta:g})")
    grad_norm = acc.clip_grad_norm_(model.parameters(), run.cfg.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return stats, float(grad_norm), n_tokens


def _line(stats: torch.Tensor) -> dict:
    return {**{k: float(stats[i]) for i, k in enumerate(STATS)},
            **{LAW_KEYS[i]: float(stats[len(STATS) + i]) for i in range(NUM_LAWS)}}


# --------------------------------------------------------------------------- fit, validate


def _align_step(run: _AlignRun, step: int, lr: float) -> tuple[dict, float, int]:
    """One optimizer step of preference alignment (the trainer's loop takes it): its numbers, grad norm, tokens."""
    stats, grad_norm, n_tokens = _optimizer_step(run, step, lr)
    return {"method": run.cfg.method, **_line(stats)}, grad_norm, n_tokens


def validate(run: _AlignRun, step: int) -> dict:
    """The validation line at ``step``: the step's numbers averaged over at most ``eval_batches``
    batches of the held-out pairs (unseen template families)."""
    cfg, val_set = run.cfg, run.val_set
    run.model.eval()
    sums, n = torch.zeros(len(STATS) + NUM_LAWS, dtype=torch.float64), 0
    with torch.no_grad():
        for j in range(min(cfg.eval_batches, math.ceil(len(val_set) / cfg.batch_size))):
            items = [val_set[i] for i in range(j * cfg.batch_size, min(len(val_set), (j + 1) * cfg.batch_size))]
            b = {k: v.to(run.accelerator.device) for k, v in run.collate(items).items()}
            sums += _batch_loss(run, b)[1].double().cpu() * len(items)
            n += len(items)
    run.model.train()
    line = _line(sums / max(n, 1))
    return {"split": "validation", "step": step, "method": cfg.method, **line, "pairs": n}


def _validate_and_log(run: _AlignRun, step: int) -> dict:
    line = validate(run, step)
    run.folder.append_metrics(line)
    run.emit(Validation(step=step, metrics=line))
    return line


def held_out_preference(model_dir: str, pairs_path: str, split: str = "validation", max_length: int = 256,
                        batch_size: int = 8) -> dict:
    """``logp_accuracy`` and ``logp_margin`` of a saved model on the ``split`` pairs of a pair file."""
    from kala_engine.data.pairs import load_pairs
    from kala_engine.data.tokenizer import load_tokenizer
    from kala_engine.model.loading import SAFE_KWARGS, check_folder
    from kala_engine.model.modeling_kala import KALAForCausalLM

    check_folder(model_dir)  # the loading policy first: no auto_map (foreign code), safetensors only
    tok = load_tokenizer(model_dir)
    # SAFE_KWARGS = trust_remote_code=False, local_files_only=True: nothing in the folder runs
    model = KALAForCausalLM.from_pretrained(model_dir, use_safetensors=True, **SAFE_KWARGS).eval()
    ds = PairDataset([p for p in load_pairs(pairs_path) if p["split"] == split], tok, max_length)
    collate, diffs = PairCollator(tok, max_length), []
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            b = collate([ds[j] for j in range(i, min(len(ds), i + batch_size))])
            lp, n = sequence_logps(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                   b["labels"])
            (pc, pr), (nc, nr) = lp.chunk(2), n.chunk(2)
            diffs.append(pc / nc.clamp(min=1) - pr / nr.clamp(min=1))
    d = torch.cat(diffs) if diffs else torch.zeros(0)
    return {"pairs": len(ds), "logp_accuracy": float((d > 0).float().mean()) if len(d) else float("nan"),
            "logp_margin": float(d.mean()) if len(d) else float("nan")}
