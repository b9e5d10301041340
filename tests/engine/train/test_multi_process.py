"""`kala train --gpus N` (issue 19 item 2): the processes start through PyTorch's launcher with the
doctor's plan; two CPU processes (gloo) run DDP, a multi-process checkpoint (accelerate's
save_state - the same code that writes FSDP's sharded one) killed with SIGKILL resumes on the same
trajectory, and final/ is one plain model folder that transformers loads. FSDP itself needs CUDA
(accelerate runs several CPU processes as DDP only): its tests are marked ``gpu``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.engine.train.tiny_runs import TINY, metrics, write_data

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 240, 3)


def train_cmd(dataset, run_dir, port: int, *extra: str, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "kala_engine.cli.main", "train", "--gpus", "2", "--master-port", str(port),
            "--device", device, "--data", str(dataset), "--run-dir", str(run_dir), "--max-steps", "12",
            "--batch-size", "4", "--max-length", "48", "--learning-rate", "3e-3", "--eval-every", "4",
            "--eval-batches", "2", "--save-every", "4", "--seed", "7", "--vocab-size", "300",
            "--tiny-overrides", json.dumps(TINY), *extra]


def same(a, b, where=""):
    if isinstance(a, float):
        assert abs(a - b) <= 1e-6, (where, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def ddp_run(dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    out = subprocess.run(train_cmd(dataset, run_dir, 29541), cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    return run_dir, out


def test_kala_train_gpus_2_launches_ddp_processes_and_rank_0_shows_every_rank(ddp_run):
    run_dir, out = ddp_run
    assert "launching 2 CPU process(s) on machine 0 of 1: DDP" in out.stdout
    info = json.loads((run_dir / "run.json").read_text())
    assert info["processes"] == 2 and info["status"] == "finished"
    assert info["config"]["strategy"] == "ddp" and info["config"]["gpus"] == 2
    lines = [x for x in metrics(run_dir) if x.get("split") != "validation"]
    assert [x["step"] for x in lines] == list(range(1, 13))  # one writer
    for x in lines:  # every rank's progress, gathered on rank 0; the logged loss is their mean
        assert [r["rank"] for r in x["ranks"]] == [0, 1] and all(r["tokens"] > 0 for r in x["ranks"])
        assert abs(sum(r["lm_loss"] for r in x["ranks"]) / 2 - x["lm_loss"]) < 1e-5
    assert out.stdout.count("step    12/12") == 1 and "ranks  [0] lm" in out.stdout and "[1] lm" in out.stdout
    step8 = run_dir / "checkpoints" / "step-8"
    assert json.loads((step8 / "meta.json").read_text())["processes"] == 2
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(step8 / "state"))
    assert not list(run_dir.glob("**/.tmp*"))


def test_final_model_of_a_multi_process_run_is_one_plain_folder_transformers_loads(ddp_run):
    from transformers import AutoModelForCausalLM

    run_dir, _ = ddp_run
    final = run_dir / "final"
    assert sorted(p.name for p in final.iterdir() if p.suffix in (".safetensors", ".json", ".bin")) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "KALAForCausalLM"
    from safetensors.torch import load_file

    saved = load_file(str(final / "model.safetensors"))
    assert all(torch.equal(saved[n], p) for n, p in model.state_dict().items() if n in saved)


def test_a_killed_multi_process_run_resumes_on_the_same_trajectory(dataset, ddp_run, tmp_path):
    reference, _ = ddp_run
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(dataset, run_dir, 29542), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    m = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:  # past the step-8 checkpoint
        if (run_dir / "checkpoints" / "step-8").is_dir() and m.is_file() and '"step": 9' in m.read_text():
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both processes, as a power cut would
    proc.wait()
    assert (run_dir / "checkpoints" / "step-8").is_dir() and not (run_dir / "final").exists()
    out = subprocess.run(train_cmd(dataset, run_dir, 29543, "--resume"), cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from checkpoint step-8 (accelerate load_state, 2 processes)" in out.stdout
    same(metrics(run_dir), metrics(reference))
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(reference / "final").eval()
    b = AutoModelForCausalLM.from_pretrained(run_dir / "final").eval()
    ids = torch.arange(1, 30).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=1e-6, rtol=0)


def test_a_plan_that_does_not_fit_is_refused_before_any_process_starts(dataset, tmp_path):
    out = subprocess.run(train_cmd(dataset, tmp_path / "no", 29544, "--strategy", "fsdp"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "fsdp needs CUDA GPUs" in out.stderr
    assert "launching" not in out.stdout and not (tmp_path / "no" / "run.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP needs two CUDA GPUs (accelerate runs it only there)")
def test_fsdp_on_two_gpus_resumes_a_killed_sharded_run_and_saves_a_plain_model(dataset, tmp_path):
    ref = tmp_path / "ref"
    out = subprocess.run(train_cmd(dataset, ref, 29545, "--strategy", "fsdp", device="cuda"), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((ref / "run.json").read_text())["config"]["strategy"] == "fsdp"
    assert any(p.is_dir() for p in (ref / "checkpoints" / "step-8" / "state").iterdir())  # DCP shards
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(dataset, run_dir, 29546, "--strategy", "fsdp", device="cuda"), cwd=ROOT,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    m = run_dir / "metrics.jsonl"
    while proc.poll() is None and not (m.is_file() and '"step": 9' in m.read_text()):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = subprocess.run(train_cmd(dataset, run_dir, 29547, "--strategy", "fsdp", "--resume", device="cuda"),
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    same(metrics(run_dir), metrics(ref))
    ddp = tmp_path / "ddp"
    assert subprocess.run(train_cmd(dataset, ddp, 29548, "--strategy", "ddp", device="cuda"), cwd=ROOT, env=ENV,
                          capture_output=True, timeout=600).returncode == 0
    from transformers import AutoModelForCausalLM

    ids = torch.arange(1, 30).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(run_dir / "final")(ids).logits,
                                   AutoModelForCausalLM.from_pretrained(ddp / "final")(ids).logits,
                                   atol=1e-3, rtol=1e-3)
