"""`kala distill`: a smaller KALA model from a larger one (kala_engine.train.distill)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kala_engine.cli.ethics_options import add_ethics_args


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The `kala train` flags a distillation run shares; defaults are TrainConfig's."""
    from kala_engine.train.config import TrainConfig

    d = TrainConfig.__dataclass_fields__
    for flag, kind in (("max_steps", int), ("epochs", float), ("batch_size", int), ("grad_accum", int),
                       ("learning_rate", float), ("ethics_weight", float), ("max_length", int), ("seed", int),
                       ("eval_every", int), ("eval_batches", int), ("save_every", int), ("keep_checkpoints", int)):
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=d[flag].default)
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=d["precision"].default)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d["device"].default)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")


def check_distill_args(args) -> None:
    """What `kala distill` checks before anything runs (the tokenizers are the engine's check)."""
    from kala_engine.cli.checks import CLIError, check_device, check_model_folder, check_out_dir
    from kala_engine.model.presets import PRESET_NAMES
    from kala_engine.train.distill import check_teacher

    check_out_dir(args.run_dir, "--run-dir")
    if args.device == "cuda":
        check_device("cuda")
    check_model_folder(args.teacher, "--teacher", kinds=("kala",), tokenizer=True)
    check_teacher(args.teacher)
    if args.student not in PRESET_NAMES:
        if Path(args.student).is_file():
            raise CLIError(f"--student {args.student} is a file; pass a preset name or a model folder")
        if Path(args.student).is_dir():
            check_model_folder(args.student, "--student", kinds=("gpt_neox", "kala"), tokenizer=True)
    if args.student_hidden is not None and args.student != "kala-tiny":
        raise CLIError("--student-hidden sets the width of a kala-tiny student trained from scratch; "
                       "a student made from a model keeps its width (use --student-layers)")
    if args.student_layers is not None and args.student_layers < 1:
        raise CLIError("--student-layers must be >= 1")


def configs(args):
    """(TrainConfig, DistillConfig) of the parsed flags."""
    from dataclasses import fields

    from kala_engine.train.config import TrainConfig
    from kala_engine.train.distill import DistillConfig, student_config

    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    kw["base"] = args.student
    if args.student_hidden is not None:
        h = args.student_hidden
        heads = next(n for n in (6, 4, 3, 2, 1) if h % n == 0)
        kw["tiny_overrides"] = {"hidden_size": h, "intermediate_size": 4 * h, "num_attention_heads": heads}
    dcfg = DistillConfig(teacher=args.teacher, temperature=args.temperature, kd_weight=args.kd_weight,
                         score_weight=args.score_weight, layer_weight=args.layer_weight,
                         label_weight=args.label_weight)
    cfg = student_config(TrainConfig(**kw), dcfg.teacher, args.student_layers)
    return cfg, dcfg


def cmd_distill(args) -> int:
    from kala_engine.cli.train import _exit_code, _guarded, _printer
    from kala_engine.jobs import Failed, Finished, JobControl, run_job
    from kala_engine.train.distill import check_tokenizers, distill_job

    check_distill_args(args)
    cfg, dcfg = configs(args)
    check_tokenizers(cfg, Path(dcfg.teacher))  # one line, before the run folder exists
    printer, result = _printer(quiet_steps=10, command="distill"), {}

    def emit(ev):
        if isinstance(ev, (Finished, Failed)):
            result["ev"] = ev
        printer(ev)

    run_job(_guarded(distill_job(cfg, dcfg)), emit, JobControl())
    ev = result.get("ev")
    if isinstance(ev, Failed):
        return _exit_code(ev)
    if ev.cancelled:
        print("cancelled; resume with --resume")
        return 130
    r = ev.result or {}
    print(f"done: {r.get('steps')} steps; the student is in {r.get('final_dir')}")
    return 0


def register(sub) -> None:
    from kala_engine.train.distill_config import DistillConfig

    d = DistillConfig.__dataclass_fields__
    p = sub.add_parser("distill", help="a smaller KALA model trained on a larger one's next tokens and law scores")
    p.add_argument("--teacher", required=True, help="the KALA model to learn from (RUN/final)")
    p.add_argument("--student", required=True,
                   help="kala-tiny (from scratch, the teacher's tokenizer), a preset or a model folder "
                        "(e.g. the teacher itself with --student-layers N)")
    p.add_argument("--data", required=True, help="a KALA JSONL dataset")
    p.add_argument("--run-dir", required=True, help="folder of this run")
    p.add_argument("--student-layers", type=int, default=None,
                   help="layers of the student (a model's: N evenly spaced of its layers, the last kept)")
    p.add_argument("--student-hidden", type=int, default=None, help="width of a kala-tiny student")
    p.add_argument("--temperature", type=float, default=d["temperature"].default)
    p.add_argument("--kd-weight", type=float, default=d["kd_weight"].default,
                   help="weight of the KL to the teacher's next-token distribution (reply tokens)")
    p.add_argument("--score-weight", type=float, default=d["score_weight"].default,
                   help="weight of the MSE to the teacher's law scores")
    p.add_argument("--layer-weight", type=float, default=d["layer_weight"].default,
                   help="weight of the MSE of the student's per-layer monitors to the teacher's (0: off)")
    p.add_argument("--label-weight", type=float, default=d["label_weight"].default,
                   help="weight of the data's own LM + ethics loss")
    _add_run_args(p)
    add_ethics_args(p)
    p.set_defaults(func=cmd_distill)
