"""`kala doctor`: hardware/software report and the training plan for a base (one device, or
``--gpus N [--nodes M]``: the plan over several, see kala_engine.doctor_multi)."""

from __future__ import annotations

import json


def cmd_doctor(args) -> int:
    from pathlib import Path

    from kala_engine.cli.checks import CLIError, check_model_folder
    from kala_engine.doctor_multi import diagnose_cluster

    if Path(args.base).is_dir():
        check_model_folder(args.base, "--base", kinds=("gpt_neox", "kala"))
    if args.gpus < 1 or args.nodes < 1:
        raise CLIError("--gpus and --nodes must be >= 1")
    if args.gpus * args.nodes == 1:  # one device: the single-card plan, --mode as given
        from kala_engine.doctor import diagnose
        from kala_engine.doctor_multi import ClusterPlan

        one = diagnose(args.base, device=args.device, batch_size=args.batch_size, seq_len=args.seq_len,
                       mode=args.mode)
        cluster = ClusterPlan(one.base, 1, 1, "single", one, one.estimate, one.available_bytes,
                              gradient_checkpointing=one.gradient_checkpointing, batch_size=one.batch_size,
                              grad_accum=one.grad_accum, fits=one.fits, reason=one.reason,
                              alternative=one.alternative, notes=one.notes)
    else:
        cluster = diagnose_cluster(args.base, device=args.device, gpus=args.gpus, nodes=args.nodes,
                                   batch_size=args.batch_size, seq_len=args.seq_len,
                                   strategy="nf4-lora" if args.mode == "nf4-lora" else "auto")
    plan = cluster.single
    if args.json:
        d = plan.device
        print(json.dumps({
            "device": {"kind": d.kind, "name": d.name, "compute_capability": d.compute_capability,
                       "arch_list": list(d.arch_list), "kernels_present": d.kernels_present, "fp16": d.fp16,
                       "bf16": d.bf16, "total_bytes": d.total_bytes, "available_bytes": d.available_bytes,
                       "bitsandbytes": d.bnb_library, "torch": d.torch_version, "cuda": d.cuda_version,
                       "warnings": list(d.warnings)},
            "plan": {"base": plan.base, "device": plan.device_kind, "precision": plan.precision,
                     "mode": plan.mode if cluster.world == 1 else cluster.mode,
                     "strategy": cluster.strategy, "gpus": cluster.gpus, "nodes": cluster.nodes,
                     "gradient_checkpointing": cluster.gradient_checkpointing, "batch_size": cluster.batch_size,
                     "grad_accum": cluster.grad_accum, "estimate_bytes": cluster.estimate_bytes,
                     "available_bytes": cluster.card_budget, "host_bytes": cluster.host_need, "fits": cluster.fits,
                     "reason": cluster.reason, "alternative": cluster.alternative,
                     "base_problem": plan.base_problem, "notes": cluster.notes},
        }, indent=2))
    else:
        print(cluster.report())
    return 0 if cluster.fits and not plan.base_problem else 1  # a base that is not here is a no-go too


def register(sub) -> None:
    p = sub.add_parser("doctor", help="hardware and software report, and the training plan that fits")
    p.add_argument("--base", default="kala-tiny", help="preset or local model folder to plan for")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--mode", choices=["auto", "full", "lora", "nf4-lora"], default="auto")
    p.add_argument("--gpus", type=int, default=1,
                   help="devices per machine to plan for: DDP, FSDP full-shard (+ CPU offload) or NF4 + LoRA")
    p.add_argument("--nodes", type=int, default=1, help="machines like this one")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)
