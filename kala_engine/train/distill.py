"""Distillation: a smaller KALA model trained on a larger one's judgement (issue 18, item 1).

The student learns, per micro-batch, from four terms, each weighted and logged on its own::

    loss = kd_weight    * T^2 KL(teacher_T || student_T)   on the reply tokens (those with LM labels)
         + score_weight * MSE(student law scores, teacher's)   every token of the record, priority-weighted
         + layer_weight * MSE(student monitors, teacher's mapped layers)   (0: off)
         + label_weight * the data's own loss (LM + ethics, with the run's dynamic ethics weights)

The teacher runs in inference mode (eval, no gradients; fp16/bf16 on a GPU when the plan trains
in it). Everything else is :func:`kala_engine.train.trainer.train`'s: the run folder and its
lock, the data order, checkpoints and an exact resume, pause/cancel through
:class:`~kala_engine.jobs.JobControl`, calibration and ``final/``. A student made from the teacher
(``--student TEACHER --student-layers N``) keeps N of its layers, evenly spaced; ``kala-tiny``
starts from scratch with the teacher's tokenizer. Teacher and student must share one tokenizer:
the distributions are compared token by token, so a mismatch is refused before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from kala_engine.jobs import Emit, JobControl, JobError, LogLine
from kala_engine.train.config import TrainConfig
from kala_engine.train.distill_config import DistillConfig
from kala_engine.train.ethics_layers import evenly_spaced
from kala_engine.train.ethics_weights import make_objective, per_layer_mse

# --------------------------------------------------------------------------- checks before a run


def check_teacher(teacher: str | Path) -> Path:
    """The teacher's folder, or JobError: it must be a KALA model with safetensors and a tokenizer."""
    d = Path(teacher)
    if not d.is_dir():
        raise JobError(f"--teacher {teacher}: no such folder (a trained KALA model, e.g. RUN/final)")
    try:
        conf = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise JobError(f"--teacher {teacher}: cannot read config.json ({e}); pass a KALA model folder") from None
    if conf.get("model_type") != "kala":
        raise JobError(f"--teacher {teacher}: model_type {conf.get('model_type')!r}, not a KALA model; "
                       f"train one first (kala train) and pass its final/ folder")
    for name in ("model.safetensors", "tokenizer.json"):
        if not (d / name).is_file():
            raise JobError(f"--teacher {teacher}: no {name} (pass a KALA model folder such as RUN/final)")
    return d


def tokenizer_mismatch(teacher_tok, student_tok) -> str | None:
    """Why two tokenizers cannot be distilled across (their vocabularies differ), or None."""
    a, b = teacher_tok.get_vocab(), student_tok.get_vocab()
    if a == b:
        return None
    differ = sum(1 for t, i in a.items() if b.get(t) != i) + sum(1 for t in b if t not in a)
    return f"{differ} of {max(len(a), len(b))} token ids differ ({len(a)} tokens in the teacher's, {len(b)} in the student's)"


def check_tokenizers(cfg: TrainConfig, teacher: Path) -> None:
    """Refuse a student whose tokenizer is not the teacher's (one line, before anything runs)."""
    from kala_engine.data.tokenizer import load_tokenizer, prepare_tokenizer
    from kala_engine.train.model_setup import base_dir

    if cfg.base == "kala-tiny":
        return  # trained from scratch with the teacher's tokenizer (tokenizer_from)
    student = base_dir(cfg.base, cfg.revision)
    try:
        s_tok = prepare_tokenizer(load_tokenizer(student))
        t_tok = prepare_tokenizer(load_tokenizer(teacher))
    except (OSError, ValueError) as e:
        raise JobError(f"cannot load a tokenizer to compare teacher and student: {e}") from None
    why = tokenizer_mismatch(t_tok, s_tok)
    if why:
        raise JobError(f"the student {cfg.base} does not use the teacher's tokenizer ({why}); distillation "
                       f"compares next-token distributions id by id - use a student of the same family, "
                       f"e.g. --student {teacher} --student-layers N")


# --------------------------------------------------------------------------- the objective


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Which teacher layer each student layer imitates: evenly spaced, last to last."""
    return evenly_spaced(n_teacher, n_student) if n_student <= n_teacher else list(range(n_student))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 KL(teacher_T || student_T), averaged over the positions that predict a reply token
    (the next token has an LM label); only the vocabulary both models share is compared."""
    shift = F.pad(labels, (0, 1), value=-100)[:, 1:]  # (B, T): the token each position predicts
    mask = shift != -100
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = F.log_softmax(student_logits[mask][:, :v].float() / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits[mask][:, :v].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (N,)
    return kl.sum() / mask.sum().clamp(min=1) * temperature**2


class DistillObjective:
    """The run's objective for distillation: the four terms of the module docstring."""

    def __init__(self, dcfg: DistillConfig, teacher, base):
        self.dcfg, self.teacher, self.base = dcfg, teacher, base
        self.layers: list[int] | None = None
        self.info = {"distillation": asdict(dcfg)}  # merged into run.json by the trainer

    def parameters(self):
        return self.base.parameters()

    def weights_log(self, step, total):
        return self.base.weights_log(step, total)

    def observe_validation(self, line):
        self.base.observe_validation(line)

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state):
        self.base.load_state_dict(state)

    def _teacher(self, batch: dict, layers: bool):
        with torch.inference_mode():
            t = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_layer_scores=layers, use_cache=False)
        # out of inference mode: plain tensors the student's graph may hold for its backward
        return (t.logits.clone(), t.law_scores.clone(), t.layer_scores.clone() if layers else None)

    def forward(self, model, batch: dict, step: int, total: int):
        d = self.dcfg
        layers = d.layer_weight > 0
        out, label_loss, extras = self.base.forward(model, batch, step, total, layer_scores=layers)
        t_logits, t_scores, t_layers = self._teacher(batch, layers)
        kd = kd_loss(out.logits, t_logits, batch["labels"], d.temperature)
        mask = batch["attention_mask"]
        prio = self.base.priority
        score = (per_layer_mse(out.law_scores.float()[None], t_scores.float(), mask)[0] * prio).sum()
        loss = d.kd_weight * kd + d.score_weight * score + d.label_weight * label_loss
        terms = {"kd_loss": kd.detach(), "score_loss": score.detach(), "label_loss": label_loss.detach()}
        if layers:
            if self.layers is None:
                self.layers = layer_map(out.layer_scores.shape[0], t_layers.shape[0])
            mon = per_layer_mse(out.layer_scores.float(), t_layers[self.layers].float(), mask)  # (L, K)
            layer = (mon * prio).sum(-1).mean()
            loss = loss + d.layer_weight * layer
            terms["layer_loss"] = layer.detach()
        return out, loss, {**extras, **terms}


def load_teacher(teacher: Path, device, precision: str):
    """The teacher in inference mode on ``device``: eval, no gradients, fp16/bf16 on a GPU when
    the run trains in it (the full-precision weights stay on disk)."""
    from kala_engine.model.loading import SAFE_KWARGS, check_folder
    from kala_engine.model.modeling_kala import KALAForCausalLM

    check_folder(teacher)  # the loading policy first: no auto_map (foreign code), safetensors only
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if str(device).startswith("cuda") \
        else None
    # SAFE_KWARGS = trust_remote_code=False, local_files_only=True: nothing in the folder runs
    model = KALAForCausalLM.from_pretrained(teacher, use_safetensors=True, dtype=dtype or torch.float32,
                                            **SAFE_KWARGS)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- the run


def student_config(cfg: TrainConfig, teacher: Path, student_layers: int | None) -> TrainConfig:
    """The run's TrainConfig for a student: the teacher's tokenizer, and N layers of the student
    (from scratch for kala-tiny, else evenly spaced layers of the student's base)."""
    cfg.tokenizer_from = str(teacher)
    if student_layers is not None:
        if cfg.base == "kala-tiny":
            cfg.tiny_overrides = {**cfg.tiny_overrides, "num_hidden_layers": student_layers}
        else:
            cfg.keep_layers = student_layers
    return cfg


def distill(cfg: TrainConfig, dcfg: DistillConfig, emit: Emit, control: JobControl | None = None) -> dict:
    """Distil ``dcfg.teacher`` into the student ``cfg.base`` (see the module docstring); returns
    :func:`kala_engine.train.trainer.train`'s summary. JobError with a user message."""
    from kala_engine.train.trainer import train

    teacher = check_teacher(dcfg.teacher)
    check_tokenizers(cfg, teacher)  # before the run folder exists: a refusal leaves nothing behind

    def make(cfg_, model, accelerator, plan, emit_):
        t = load_teacher(teacher, accelerator.device, plan.precision)
        n_t, n_s = t.config.num_hidden_layers, model.config.num_hidden_layers
        emit_(LogLine(f"teacher {teacher}: {n_t} layers, {sum(p.numel() for p in t.parameters()):,} parameters; "
                      f"student: {n_s} layers, {sum(p.numel() for p in model.parameters()):,} parameters"))
        if model.config.num_laws != t.config.num_laws:
            raise JobError("teacher and student disagree on the number of laws")
        return DistillObjective(dcfg, t, make_objective(cfg_, model, accelerator, plan, emit_))

    return train(cfg, emit, control, objective=make)


def distill_job(cfg: TrainConfig, dcfg: DistillConfig):
    """The distillation as an engine job ``(emit, control) -> summary``."""

    def job(emit: Emit, control: JobControl) -> dict:
        return distill(cfg, dcfg, emit, control)

    return job
