"""`kala train --gpus N [--nodes M --node-rank R --master-addr A]`: the run over several processes,
started by PyTorch's launcher (torch.distributed.run) with the doctor's plan; the processes print
(rank 0 only, with every rank's progress) straight to this terminal."""

from __future__ import annotations

import subprocess


def launch(cfg) -> int:
    """Plan, then run the launcher; its exit code (0: every process finished)."""
    from kala_engine.cli.checks import CLIError
    from kala_engine.jobs import JobError
    from kala_engine.train.distributed import checked_plan, launch_command, write_launch_config

    try:
        plan = checked_plan(cfg)
    except JobError as e:
        raise CLIError(str(e)) from None
    cfg.strategy = plan.strategy
    unit = "GPU" if plan.device_kind == "cuda" else "CPU process"
    print(f"launching {cfg.gpus} {unit}(s) on machine {cfg.node_rank} of {cfg.nodes}: {plan.label}, "
          f"{plan.estimate_bytes / 2**30:.1f} GiB per device ({plan.reason})", flush=True)
    config = write_launch_config(cfg)
    try:
        return subprocess.run(launch_command(config, cfg), check=False).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        config.unlink(missing_ok=True)
