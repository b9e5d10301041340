"""Training: resume after kill -9, pause/resume/cancel, corrupt checkpoints, NaN, plans, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from kala_engine.doctor import DeviceInfo, make_plan
from kala_engine.jobs import (
    CheckpointSaved,
    Failed,
    Finished,
    JobControl,
    JobError,
    LogLine,
    TrainStep,
    run_job,
)
from kala_engine.model.presets import GiB
from kala_engine.train.trainer import train, train_job
from tests.engine.train.tiny_runs import TINY, assert_same_trajectory, cfg_for, metrics, write_data

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 240, 3)




@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory):
    """An uninterrupted run, the trajectory every resumed run must retrace."""
    d = tmp_path_factory.mktemp("ref") / "run"
    train(cfg_for(dataset, d, max_steps=40, save_every=10), lambda e: None)
    return d


def test_run_folder_layout_and_losses_fall(reference_run):
    d = reference_run
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "finished" and info["config"]["max_steps"] == 40
    assert {"torch", "transformers", "accelerate"} <= info["versions"].keys()
    lines = metrics(d)
    train_lines = [x for x in lines if x.get("split") != "validation"]
    val_lines = [x for x in lines if x.get("split") == "validation"]
    assert [x["step"] for x in train_lines] == list(range(1, 41))
    assert val_lines and all(f"val_mae_{k}" in val_lines[0] for k in range(5))
    for key in ("lm_loss", "ethics_loss", "law_loss_0", "law_loss_4", "lr", "epoch"):
        assert key in train_lines[0]
    first = sum(x["lm_loss"] for x in train_lines[:5]) / 5
    last = sum(x["lm_loss"] for x in train_lines[-5:]) / 5
    # a 32-wide model, 40 steps: the loss falls, not by much. How far the first training batches
    # sit above the last depends on which records they hold (1.37 or 0.14 nats as the banks changed,
    # while the fixed validation batches fell 1.39 and 1.29), so the validation loss carries the margin
    assert last < first
    v0, v1 = val_lines[0]["lm_loss"], val_lines[-1]["lm_loss"]
    assert v1 < v0 - 0.15, (v0, v1)
    assert (d / "final" / "model.safetensors").is_file() and (d / "final" / "tokenizer.json").is_file()
    assert sorted(os.listdir(d / "checkpoints")) == ["step-10", "step-20", "step-30"]  # keep 3, atomic names


def test_kill_9_then_resume_retraces_the_uninterrupted_run(dataset, reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kala_engine.cli.main", "train", "--data", str(dataset), "--run-dir", str(run_dir),
           "--max-steps", "40", "--batch-size", "4", "--max-length", "48", "--learning-rate", "3e-3",
           "--eval-every", "4", "--eval-batches", "2", "--save-every", "10", "--keep-checkpoints", "3", "--seed", "7",
           "--device", "cpu", "--vocab-size", "300", "--tiny-overrides", json.dumps(TINY)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=errf)
    m = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if m.is_file() and sum(1 for line in m.read_text().splitlines() if '"split"' not in line) >= 15:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.read_text()[-2000:]
    assert (run_dir / "checkpoints" / "step-10").is_dir()
    assert not (run_dir / "final").exists()

    events = []
    train(cfg_for(dataset, run_dir, max_steps=40, save_every=10, resume=True), events.append)
    assert any(isinstance(e, LogLine) and "resumed from checkpoint step-" in e.message for e in events)
    # the killed process's lock went with it (the OS drops an flock); the resume says whom it took over from
    assert any(isinstance(e, LogLine) and f"process {proc.pid}" in e.message and "without releasing" in e.message
               for e in events)
    assert_same_trajectory(metrics(run_dir), metrics(reference_run))


def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(dataset, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    control = JobControl()

    def stop_at_33(e):
        if isinstance(e, TrainStep) and e.step == 33:
            control.cancel()  # saves step-33 on the way out

    run_job(train_job(cfg_for(dataset, run_dir, max_steps=40, save_every=10)), stop_at_33, control)
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step-20", "step-30", "step-33"]
    newest = run_dir / "checkpoints" / "step-33"
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 3])
    events = []
    train(cfg_for(dataset, run_dir, max_steps=40, save_every=10, resume=True), events.append)
    msgs = [e.message for e in events if isinstance(e, LogLine)]
    assert any("step-33 is unreadable" in x for x in msgs), msgs
    assert any("resumed from checkpoint step-30" in x for x in msgs), msgs
    assert_same_trajectory(metrics(run_dir), metrics(reference_run))


def test_pause_resume_cancel_through_the_control_token(dataset, tmp_path):
    run_dir = tmp_path / "run"
    control = JobControl()
    events: list = []
    timeline: list[tuple[float, object]] = []

    def emit(e):
        events.append(e)
        timeline.append((time.monotonic(), e))
        if isinstance(e, TrainStep) and e.step == 3 and not hasattr(emit, "paused"):
            emit.paused = True
            control.pause()
            threading.Timer(0.6, control.resume).start()
        if isinstance(e, TrainStep) and e.step == 6:
            emit.cancel_at = time.monotonic()
            control.cancel()

    run_job(train_job(cfg_for(dataset, run_dir, max_steps=500, save_every=0)), emit, control)
    steps = [e.step for e in events if isinstance(e, TrainStep)]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing after the cancel
    t3 = next(t for t, e in timeline if isinstance(e, TrainStep) and e.step == 3)
    t4 = next(t for t, e in timeline if isinstance(e, TrainStep) and e.step == 4)
    assert t4 - t3 >= 0.5  # held while paused
    assert any(isinstance(e, LogLine) and "paused at step 3" in e.message for e in events)
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    assert saved and saved[-1].step == 6 and Path(saved[-1].path).is_dir()
    fin = events[-1]
    assert isinstance(fin, Finished) and fin.cancelled
    assert timeline[-1][0] - emit.cancel_at < 2.0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "cancelled"


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(dataset, tmp_path, monkeypatch):
    from kala_engine.model.modeling_kala import KALAForCausalLM

    calls = {"n": 0}
    real = KALAForCausalLM.forward

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:
                out.loss = out.loss * float("nan")
                out.lm_loss = out.lm_loss * float("nan")
        return out

    monkeypatch.setattr(KALAForCausalLM, "forward", poisoned)
    run_dir = tmp_path / "run"
    events = []
    run_job(train_job(cfg_for(dataset, run_dir, max_steps=20, save_every=4, eval_every=0)), events.append)
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert "NaN at step 6" in failed.message and "step-4" in failed.message and "learning rate" in failed.message
    assert (run_dir / "checkpoints" / "step-4").is_dir()
    assert not any(p.name.startswith("step-") and p.name != "step-4" for p in (run_dir / "checkpoints").iterdir())
    with pytest.raises(JobError, match="already holds a run"):
        train(cfg_for(dataset, run_dir), lambda e: None)


def test_bad_training_input_gives_user_messages(dataset, tmp_path):
    with pytest.raises(JobError, match="no such dataset"):
        train(cfg_for(tmp_path / "missing.jsonl", tmp_path / "r"), lambda e: None)
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        cfg_for(dataset, tmp_path / "r", batch_size=0)
    with pytest.raises(ValueError, match="TrainConfig.learning_rate"):
        cfg_for(dataset, tmp_path / "r", learning_rate=5.0)


def test_lora_mode_trains_adapters_and_constitutional_parts_only(dataset, tmp_path, make_neox_dir):
    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.generate.session import load_chat_model

    _, base = make_neox_dir("pythia", vocab_size=320)
    tok = train_tokenizer(["hello world"] * 10, vocab_size=300)
    tok.save_pretrained(base)
    run_dir = tmp_path / "lora"
    result = train(cfg_for(dataset, run_dir, base=str(base), mode="lora", max_steps=3, save_every=0,
                           eval_every=0), lambda e: None)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["trainable_parameters"] < 0.5 * info["parameters"]
    model, _ = load_chat_model(result["final_dir"])
    assert type(model).__name__ == "KALAForCausalLM"  # adapters merged into a plain KALA model
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_grad_accum_that_does_not_divide_the_batch_trains_on_every_example(dataset, tmp_path, monkeypatch):
    """Batch 5 in 2 micro-batches: 2 + 3 examples a step (it used to be 2 + 2, one example dropped)."""
    from kala_engine.data.collate import ConstitutionalCollator
    from kala_engine.train.trainer import micro_batch_sizes

    assert micro_batch_sizes(8, 3) == [2, 3, 3] and micro_batch_sizes(8, 4) == [2, 2, 2, 2]
    assert micro_batch_sizes(5, 5) == [1] * 5
    seen: list[int] = []
    real_call = ConstitutionalCollator.__call__

    def counting(self, examples):
        seen.append(len(examples))
        return real_call(self, examples)

    monkeypatch.setattr(ConstitutionalCollator, "__call__", counting)
    train(cfg_for(dataset, tmp_path / "r", batch_size=5, grad_accum=2, max_steps=3, eval_every=0, save_every=0,
                  calibrate=False), lambda e: None)
    assert seen == [2, 3] * 3


def test_validate_every_0_never_validates(dataset, tmp_path):
    """'Validate every 0: never' on the Train page and in --eval-every: not at the start, not at the end."""
    events: list = []
    result = train(cfg_for(dataset, tmp_path / "r", max_steps=3, eval_every=0, save_every=0, calibrate=False),
                   events.append)
    assert not any(type(e).__name__ == "Validation" for e in events)
    assert all(d.get("split") != "validation" for d in metrics(tmp_path / "r"))
    assert result["validation"] is None and (tmp_path / "r" / "final").is_dir()


# --------------------------------------------------------------------------- plans (mocked devices)

P100 = DeviceInfo(kind="cuda", name="Tesla P100-PCIE-16GB", total_bytes=16 * GiB, available_bytes=int(15.9 * GiB),
                  compute_capability=(6, 0), arch_list=("sm_50", "sm_60", "sm_70", "sm_80", "sm_90"),
                  kernels_present=True, fp16=True, bf16=False, bnb_library="libbitsandbytes_cuda126.so")
A100 = DeviceInfo(kind="cuda", name="NVIDIA A100-SXM4-80GB", total_bytes=80 * GiB, available_bytes=79 * GiB,
                  compute_capability=(8, 0), arch_list=("sm_80", "sm_90"), kernels_present=True, fp16=True,
                  bf16=True)
CPU = DeviceInfo(kind="cpu", name="x86_64", total_bytes=24 * GiB, available_bytes=22 * GiB)


def test_plan_cpu():
    plan = make_plan("kala-tiny", CPU)
    assert (plan.device_kind, plan.precision, plan.mode, plan.fits) == ("cpu", "fp32", "full", True)


def test_plan_p100_pythia_6_9b_is_fp16_nf4_lora_under_14_gb():
    plan = make_plan("pythia-6.9b", P100, batch_size=4, seq_len=512)
    assert plan.fits and plan.precision == "fp16" and plan.mode == "nf4-lora"
    assert plan.estimate_bytes <= 14 * GiB
    assert any("full fine-tune needs" in n for n in plan.notes)
    full = make_plan("pythia-6.9b", P100, batch_size=4, seq_len=512, mode="full")
    assert not full.fits
    assert full.estimate_bytes > 100 * GiB and "needs 1" in full.reason  # "needs 10x.x GiB"
    assert full.alternative and "nf4-lora" in full.alternative
    assert "DOES NOT FIT" in full.report()


def test_plan_a100_uses_bf16_and_full_fine_tune_where_it_fits():
    small = make_plan("pythia-1b", A100, batch_size=8, seq_len=512)
    assert (small.precision, small.mode, small.fits) == ("bf16", "full", True)
    big = make_plan("pythia-12b", A100, batch_size=4, seq_len=512)
    assert big.mode == "nf4-lora" and big.fits


def test_plan_gpu_without_kernels_falls_back_to_cpu_and_says_what_to_install():
    from kala_engine.doctor import kernel_advice, kernels_for

    arch = ("sm_75", "sm_80", "sm_90")
    assert not kernels_for((6, 0), arch) and kernels_for((8, 6), arch) and kernels_for((6, 1), ("sm_60",))
    advice = kernel_advice((6, 0), arch, "2.13.0")
    assert "sm_60" in advice and "torch==2.7.1" in advice and "cu126" in advice
    dev = DeviceInfo(kind="cuda", name="Tesla P100", total_bytes=16 * GiB, available_bytes=16 * GiB,
                     compute_capability=(6, 0), arch_list=arch, kernels_present=False, fp16=True,
                     warnings=(advice,))
    plan = make_plan("kala-tiny", dev)
    assert plan.device_kind == "cpu" and plan.precision == "fp32" and plan.fits
    assert "sm_60" in plan.report()


# --------------------------------------------------------------------------- two processes


def test_two_cpu_processes_with_torchrun(dataset, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this python")
    run_dir = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "kala_engine.cli.main", "train",
           "--data", str(dataset), "--run-dir", str(run_dir), "--max-steps", "16", "--batch-size", "4",
           "--max-length", "48", "--learning-rate", "3e-3", "--eval-every", "8", "--save-every", "8",
           "--seed", "3", "--device", "cpu", "--tiny-overrides", json.dumps(TINY)]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["processes"] == 2 and info["status"] == "finished"
    lines = [x for x in metrics(run_dir) if x.get("split") != "validation"]
    assert [x["step"] for x in lines] == list(range(1, 17))  # one writer: no duplicated lines
    assert out.stdout.count("step    16/16") == 1  # only rank 0 prints
    assert sum(x["lm_loss"] for x in lines[-4:]) < sum(x["lm_loss"] for x in lines[:4])
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step-8"]
    assert not list(run_dir.glob("**/.tmp*"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_autocast_and_gradient_checkpointing(dataset, tmp_path):
    cfg = cfg_for(dataset, tmp_path / "gpu", device="cuda", precision="fp16", gradient_checkpointing=True,
                  max_steps=6)
    result = train(cfg, lambda e: None)
    assert result["steps"] == 6 and result["lm_loss"] == result["lm_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_nf4_lora(dataset, tmp_path, make_neox_dir):
    pytest.importorskip("bitsandbytes")
    from kala_engine.data.tokenizer import train_tokenizer

    _, base = make_neox_dir("pythia-gpu", vocab_size=320)
    train_tokenizer(["hello world"] * 10, vocab_size=300).save_pretrained(base)
    cfg = cfg_for(dataset, tmp_path / "nf4", base=str(base), device="cuda", mode="nf4-lora", max_steps=4,
                  save_every=0, eval_every=0)
    result = train(cfg, lambda e: None)
    assert result["steps"] == 4
