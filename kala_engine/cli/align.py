"""``kala align``: preference alignment (DPO, ORPO, SimPO) of a trained KALA model or a Pythia base.

    kala align --method dpo --base MODEL --data PAIRS --run-dir DIR [--max-steps N] [--resume] [...]

PAIRS come from ``kala data generate --pairs`` or ``kala data import ... --pairs``. The run folder,
resume, checkpoints and ``final/`` are ``kala train``'s (kala_engine.train.align).
"""

from __future__ import annotations

import json

from kala_engine.jobs import Failed, Finished, JobControl, TrainStep, Validation, run_job


def _step_line(ev: TrainStep) -> str:
    m = ev.metrics
    return (f"step {ev.step:>5}/{ev.total_steps}  {m['method']} {m['preference_loss']:.4f}  "
            f"margin {m['reward_margin']:+.4f}  acc {m['preference_accuracy']:.2f}  "
            f"ethics {m['ethics_loss']:.4f}  lr {m['lr']:.2e}  eta {m['eta']:.0f}s")


def _validation_line(ev: Validation) -> str:
    m = ev.metrics
    return (f"validation @ {ev.step} ({m['pairs']} held-out pairs): {m['method']} {m['preference_loss']:.4f}  "
            f"margin {m['reward_margin']:+.4f}  reward acc {m['preference_accuracy']:.3f}  "
            f"logp acc {m['logp_accuracy']:.3f}  ethics {m['ethics_loss']:.4f}")


def register(sub) -> None:
    from kala_engine.train.config import ALIGN_LEARNING_RATE, TrainConfig

    d = TrainConfig.__dataclass_fields__
    p = sub.add_parser("align", help="preference alignment (DPO, ORPO, SimPO) on chosen/rejected pairs")
    p.add_argument("--method", choices=["dpo", "orpo", "simpo"], default="dpo",
                   help="dpo (a reference model: LoRA adapters off, or a frozen copy), orpo or simpo (none)")
    p.add_argument("--base", "--base-model", dest="base", required=True,
                   help="the model to align: a KALA model folder (kala train's RUN/final), a Pythia folder or hub id")
    p.add_argument("--data", required=True, help="a pair file (kala data generate --pairs / kala data import --pairs)")
    p.add_argument("--run-dir", required=True, help="folder of this run")
    p.add_argument("--beta", type=float, default=d["beta"].default,
                   help="DPO/SimPO: inverse temperature of the implicit reward; ORPO: odds-ratio weight")
    p.add_argument("--simpo-gamma", type=float, default=d["simpo_gamma"].default, help="SimPO's target margin")
    p.add_argument("--learning-rate", type=float, default=ALIGN_LEARNING_RATE)
    p.add_argument("--ethics-weight", type=float, default=d["ethics_weight"].default,
                   help="lambda: weight of the ethics loss on both replies")
    for flag, typ in (("max-steps", int), ("epochs", float), ("batch-size", int), ("grad-accum", int),
                      ("max-length", int), ("seed", int), ("eval-every", int), ("eval-batches", int),
                      ("save-every", int), ("keep-checkpoints", int), ("lora-rank", int),
                      ("deep-supervision-weight", float), ("warmup-steps", int)):
        p.add_argument(f"--{flag}", type=typ, default=d[flag.replace("-", "_")].default)
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=d["precision"].default)
    p.add_argument("--mode", choices=["auto", "full", "lora", "nf4-lora"], default=d["mode"].default)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d["device"].default)
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.set_defaults(func=cmd_align)


def cmd_align(args) -> int:
    from dataclasses import fields

    from kala_engine.cli.checks import check_out_dir
    from kala_engine.cli.train import _exit_code, _guarded, _printer
    from kala_engine.train.align import align_job
    from kala_engine.train.config import TrainConfig

    check_out_dir(args.run_dir, "--run-dir")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
    out: dict = {}
    printer = _printer(quiet_steps=10, command="align", step_line=_step_line, validation_line=_validation_line)

    def emit(ev):
        if isinstance(ev, (Finished, Failed)):
            out["ev"] = ev
        printer(ev)

    run_job(_guarded(align_job(cfg)), emit, JobControl())
    ev = out.get("ev")
    if isinstance(ev, Failed):
        return _exit_code(ev)
    if ev is not None and ev.cancelled:
        print("cancelled; resume with --resume")
        return 130
    r = (ev.result if ev is not None else None) or {}
    print(f"done: {r.get('steps')} steps; final model in {r.get('final_dir')}")
    if r.get("validation"):
        print(json.dumps({k: v for k, v in r["validation"].items() if k != "split"}))
    return 0

