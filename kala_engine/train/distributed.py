"""Several processes for one run (issue 19): launching them, the accelerator the doctor's plan asks
for, checkpoints of a multi-process run, and the final model out of a sharded one.

Nothing here spawns processes or talks between them by hand: ``kala train --gpus N`` hands the run
to PyTorch's launcher (``torch.distributed.run``, the module behind ``torchrun``, which
``accelerate launch`` also calls for GPUs), and every process builds an ``accelerate.Accelerator``
- DDP, or FSDP full-shard through accelerate's ``FullyShardedDataParallelPlugin`` (FSDP2, with
CPU offload where the plan says). Checkpoints of a multi-process run are accelerate's
``save_state``/``load_state`` (model and optimizer sharded per rank under FSDP, through
``torch.distributed.checkpoint``) plus our ``meta.json``, written into a temporary folder by every
rank and renamed by rank 0 once all have finished - never half a checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kala_engine.jobs import Emit, JobError, LogLine
from kala_engine.train.config import TrainConfig
from kala_engine.train.run_folder import RunFolder

#: the folder inside checkpoints/step-N that accelerate's save_state fills
STATE_DIR = "state"


def launched() -> bool:
    """True inside a process started by torchrun / accelerate launch (they set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(config_file: str | Path, cfg: TrainConfig) -> list[str]:
    """The launcher's command line: cfg.gpus processes on this machine, one of cfg.nodes."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.gpus}", f"--nnodes={cfg.nodes}",
            f"--node_rank={cfg.node_rank}", f"--master_addr={cfg.master_addr}", f"--master_port={cfg.master_port}",
            "-m", "kala_engine.cli.main", "train", "--launch-config", str(config_file)]


def cluster_plan(cfg: TrainConfig):
    """The doctor's plan for this run over cfg.gpus x cfg.nodes devices (kala_engine.doctor_multi)."""
    from kala_engine.doctor import probe_device
    from kala_engine.doctor_multi import make_cluster_plan

    return make_cluster_plan(cfg.base, probe_device(cfg.device), gpus=cfg.gpus, nodes=cfg.nodes,
                             batch_size=cfg.batch_size, seq_len=cfg.max_length, strategy=cfg.strategy,
                             precision=cfg.precision, gradient_checkpointing=cfg.gradient_checkpointing)


def make_accelerator(cfg: TrainConfig, emit: Emit):
    """(plan, Accelerator) of a process started by the launcher; JobError when the plan does not fit."""
    from accelerate import Accelerator

    plan = cluster_plan(cfg)
    if world_size() != plan.world:
        raise JobError(f"the launcher started {world_size()} processes but the run asks for --gpus {cfg.gpus} x "
                       f"--nodes {cfg.nodes} = {plan.world}")
    if not plan.fits:
        raise JobError(f"this run will not fit: {plan.reason}" + (f"; try {plan.alternative}" if plan.alternative else ""))
    cfg.strategy = plan.strategy
    if cfg.gradient_checkpointing is None:
        cfg.gradient_checkpointing = plan.gradient_checkpointing
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[plan.precision]
    kwargs = {}
    if plan.strategy in ("fsdp", "fsdp-offload"):
        kwargs["fsdp_plugin"] = fsdp_plugin(offload=plan.strategy == "fsdp-offload")
    accelerator = Accelerator(mixed_precision=mixed, cpu=plan.device_kind == "cpu", **kwargs)
    emit(LogLine(f"plan: {plan.label} over {plan.world} processes on {plan.device_kind} in {plan.precision}, "
                 f"{plan.estimate_bytes / 2**30:.1f} GiB per device, gradient checkpointing "
                 f"{'on' if cfg.gradient_checkpointing else 'off'} ({plan.reason})"))
    return plan, accelerator


def fsdp_plugin(offload: bool):
    """accelerate's FSDP2 full-shard, one unit per decoder layer, sharded checkpoints."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["ConstitutionalLayer"], state_dict_type="SHARDED_STATE_DICT",
        cpu_offload=offload, cpu_ram_efficient_loading=False)


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


# --------------------------------------------------------------------------- checkpoints


def save_state_checkpoint(folder: RunFolder, step: int, accelerator, position: dict, keep: int) -> Path:
    """checkpoints/step-N/{state/, meta.json} from every rank; rank 0 renames it into place."""
    import random
    import shutil
    import time

    main = accelerator.is_main_process
    tmp = folder.checkpoints_dir / f".tmp-step-{step}-all-ranks"
    if main:
        folder.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / STATE_DIR))
    accelerator.wait_for_everyone()
    if main:
        meta = {"step": step, "position": position, "processes": accelerator.num_processes,
                "python_random": repr(random.getstate()), "time": time.time(), "format": "accelerate save_state"}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        from kala_engine.train.run_folder import _fsync_tree

        _fsync_tree(tmp)
        dest = folder.checkpoint_dir(step)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        for old in folder.checkpoint_steps()[:-keep]:
            shutil.rmtree(folder.checkpoint_dir(old), ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder.checkpoint_dir(step)


def newest_state_checkpoint(folder: RunFolder) -> tuple[dict, Path] | None:
    """(meta, folder) of the newest checkpoint written by save_state, or None."""
    for _step, d in folder.checkpoint_dirs():
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (d / STATE_DIR).is_dir():
            return meta, d
    return None


def load_state_checkpoint(accelerator, d: Path, emit: Emit) -> None:
    accelerator.load_state(str(d / STATE_DIR))
    emit(LogLine(f"resumed from checkpoint {d.name} (accelerate load_state, {accelerator.num_processes} processes)"))


# --------------------------------------------------------------------------- final model and progress


def full_model(accelerator, model):
    """A plain (unsharded) model with the run's trained weights, on rank 0 (None on the others);
    every rank must call it (FSDP gathers the shards)."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    from kala_engine.model.modeling_kala import KALAForCausalLM  # not type(model): FSDP2 renames the class

    plain = KALAForCausalLM(accelerator.unwrap_model(model).config)
    plain.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    return plain


def rank_progress(accelerator, lm_loss: float, tokens: int) -> list[dict]:
    """Every rank's LM loss and tokens of this step, gathered for rank 0 (accelerate's gather)."""
    import torch

    mine = torch.tensor([[lm_loss, float(tokens)]], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(mine).cpu().tolist()
    return [{"rank": r, "lm_loss": row[0], "tokens": int(row[1])} for r, row in enumerate(every)]


# --------------------------------------------------------------------------- the launching side


def write_launch_config(cfg: TrainConfig) -> Path:
    """The run's TrainConfig as a JSON file the launched processes read (removed by the caller)."""
    import tempfile
    from dataclasses import asdict

    fd, name = tempfile.mkstemp(prefix="kala-launch-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(cfg), f)
    return Path(name)


def checked_plan(cfg: TrainConfig):
    """The plan the processes will run, resolved before any starts; JobError when it does not fit."""
    plan = cluster_plan(cfg)
    if not plan.fits:
        raise JobError(f"this run will not fit over {plan.world} processes: {plan.reason}"
                       + (f"; try {plan.alternative}" if plan.alternative else ""))
    return plan


def launch_job(cfg: TrainConfig):
    """A multi-process run as an engine job (the app's Train page): the launcher runs the processes,
    their output becomes LogLines and rank 0's metrics.jsonl lines TrainStep / Validation events
    (with every rank's progress in ``metrics["ranks"]``). Cancel stops the processes; the run
    resumes from its last checkpoint."""
    import subprocess
    import time

    from kala_engine.jobs import Cancelled, JobControl, TrainStep, Validation

    def job(emit: Emit, control: JobControl) -> dict:
        plan = checked_plan(cfg)
        cfg.strategy = plan.strategy
        config = write_launch_config(cfg)
        folder, seen = RunFolder(cfg.run_dir), [0, 0]
        emit(LogLine(f"starting {plan.world} processes: {plan.label} ({plan.reason})"))
        proc = subprocess.Popen(launch_command(config, cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        try:
            import threading

            def pump():
                for line in proc.stdout:
                    emit(LogLine(line.rstrip()))

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            while True:
                done = proc.poll() is not None
                train, val = _read_lines(folder)
                total = folder.read_info().get("total_steps", 0) if len(train) > seen[0] else 0
                for x in train[seen[0]:]:
                    emit(TrainStep(step=x["step"], total_steps=total, metrics=x))
                for x in val[seen[1]:]:
                    emit(Validation(step=x["step"], metrics=x))
                seen = [len(train), len(val)]
                if done:
                    break
                if control.cancelled:
                    proc.terminate()
                    proc.wait(timeout=60)
                    raise Cancelled()
                time.sleep(0.2)
            reader.join(timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            config.unlink(missing_ok=True)
        if proc.returncode:
            raise JobError(f"the training processes failed (exit {proc.returncode}); see the log above")
        return {"run_dir": str(folder.path), "final_dir": str(folder.final_dir), "processes": plan.world}

    return job


def _read_lines(folder: RunFolder) -> tuple[list[dict], list[dict]]:
    try:
        return folder.read_metrics()
    except (OSError, ValueError):
        return [], []
