"""`kala doctor`: hardware/software report and the training plan for a base."""

from __future__ import annotations

import json


def cmd_doctor(args) -> int:
    from pathlib import Path

    from kala_engine.cli.checks import check_model_folder
    from kala_engine.doctor import diagnose

    if Path(args.base).is_dir():
        check_model_folder(args.base, "--base", kinds=("gpt_neox", "kala"))
    plan = diagnose(args.base, device=args.device, batch_size=args.batch_size, seq_len=args.seq_len,
                    mode=args.mode)
    if args.json:
        d = plan.device
        print(json.dumps({
            "device": {"kind": d.kind, "name": d.name, "compute_capability": d.compute_capability,
                       "arch_list": list(d.arch_list), "kernels_present": d.kernels_present, "fp16": d.fp16,
                       "bf16": d.bf16, "total_bytes": d.total_bytes, "available_bytes": d.available_bytes,
                       "bitsandbytes": d.bnb_library, "torch": d.torch_version, "cuda": d.cuda_version,
                       "warnings": list(d.warnings)},
            "plan": {"base": plan.base, "device": plan.device_kind, "precision": plan.precision, "mode": plan.mode,
                     "gradient_checkpointing": plan.gradient_checkpointing, "batch_size": plan.batch_size,
                     "grad_accum": plan.grad_accum, "estimate_bytes": plan.estimate_bytes,
                     "available_bytes": plan.available_bytes, "fits": plan.fits, "reason": plan.reason,
                     "alternative": plan.alternative, "base_problem": plan.base_problem},
        }, indent=2))
    else:
        print(plan.report())
    return 0 if plan.fits and not plan.base_problem else 1  # a base that is not here is a no-go too


def register(sub) -> None:
    p = sub.add_parser("doctor", help="hardware and software report, and the training plan that fits")
    p.add_argument("--base", default="kala-tiny", help="preset or local model folder to plan for")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--mode", choices=["auto", "full", "lora", "nf4-lora"], default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
