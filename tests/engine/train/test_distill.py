"""`kala distill` (issue 18, item 1): KL falls, smaller students load/save/chat, mismatched
tokenizers refused before anything runs, kill -9 then resume retraces the run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kala_engine.jobs import JobError, LogLine
from kala_engine.train.config import TrainConfig
from kala_engine.train.distill import DistillConfig, distill, kd_loss, student_config
from kala_engine.train.trainer import train
from tests.engine.cli.cli_harness import run_cli
from tests.engine.train.tiny_runs import assert_same_trajectory, metrics, write_data

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 128}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 200, 11)


@pytest.fixture(scope="module")
def teacher(dataset, tmp_path_factory) -> Path:
    """A 4-layer kala-tiny trained a little: the teacher every test distils."""
    d = tmp_path_factory.mktemp("teacher") / "run"
    train(TrainConfig(data=str(dataset), run_dir=str(d), max_steps=12, batch_size=4, max_length=48,
                      learning_rate=3e-3, eval_every=0, save_every=0, seed=1, vocab_size=300, tiny_overrides=TINY,
                      device="cpu"), lambda e: None)
    return d / "final"


def student_cfg(dataset, run_dir, teacher, layers=2, **kw) -> TrainConfig:
    base = dict(base=str(teacher), data=str(dataset), run_dir=str(run_dir), max_steps=8, batch_size=4,
                max_length=48, learning_rate=2e-3, eval_every=4, eval_batches=1, save_every=3, keep_checkpoints=3,
                seed=5, device="cpu", law_weighting="uncertainty")
    base.update(kw)
    return student_config(TrainConfig(**base), teacher, layers)


def test_a_distillation_step_lowers_the_students_kl_to_the_teacher(dataset, teacher):
    from kala_engine.data.collate import ConstitutionalCollator, JsonlDataset
    from kala_engine.data.io import load_jsonl
    from kala_engine.data.tokenizer import load_tokenizer
    from kala_engine.model.modeling_kala import KALAForCausalLM
    from kala_engine.train.distill import DistillObjective
    from kala_engine.train.ethics_layers import keep_layers
    from kala_engine.train.ethics_weights import EthicsObjective

    tok = load_tokenizer(teacher)
    t = KALAForCausalLM.from_pretrained(teacher).eval().requires_grad_(False)
    s = KALAForCausalLM.from_pretrained(teacher)
    assert keep_layers(s, 2) == [1, 3]
    torch.manual_seed(0)
    with torch.no_grad():  # a student far from its teacher: a sharper, different head
        s.embed_out.weight.normal_(0, 0.3)
    ds = JsonlDataset(load_jsonl(dataset)[:8], tok, max_length=48)
    batch = ConstitutionalCollator(tok, max_length=48)([ds[i] for i in range(8)])
    cfg = TrainConfig(data="d", run_dir="r")
    obj = DistillObjective(DistillConfig(teacher=str(teacher), label_weight=0.0, score_weight=0.0),
                           t, EthicsObjective(cfg, list(s.config.law_weights)))

    def kl() -> float:
        with torch.no_grad():
            return float(kd_loss(s(**batch).logits, t(**batch).logits, batch["labels"], 2.0))

    before = kl()
    opt = torch.optim.AdamW(s.parameters(), lr=3e-3)
    for step in range(5):
        _, loss, terms = obj.forward(s, batch, step, 5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(terms) >= {"kd_loss", "score_loss", "label_loss"}
    assert kl() < 0.8 * before, (before, kl())


def test_a_student_with_fewer_layers_trains_saves_loads_and_chats(dataset, teacher, tmp_path):
    from kala_engine.generate.session import ChatSession, load_chat_model

    run_dir = tmp_path / "student"
    code, out, err, exc = run_cli(["distill", "--teacher", teacher, "--student", teacher, "--student-layers", "2",
                                   "--data", dataset, "--run-dir", run_dir, "--max-steps", "4", "--batch-size", "4",
                                   "--max-length", "48", "--eval-every", "2", "--eval-batches", "1",
                                   "--save-every", "0", "--device", "cpu", "--layer-weight", "0.5"])
    assert exc is None and code == 0, err[-2000:]
    model, tok = load_chat_model(run_dir / "final")
    assert model.config.num_hidden_layers == 2 and len(model.gpt_neox.layers) == 2
    assert model.gpt_neox.ethics_aggregator.layer_logits.shape == (5, 2)
    reply = ChatSession(model, tok).send("How do I store basil?", max_new_tokens=6, temperature=0.0, seed=0)
    assert reply.stop is not None and len(reply.prompt_assessment.law_scores) == 5
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if m.get("split") != "validation"]
    assert all({"kd_loss", "score_loss", "layer_loss", "label_loss", "lambda", "law_weight_0"} <= m.keys()
               for m in steps)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["distillation"]["teacher"] == str(teacher)
    assert info["calibration"] is not None  # the trainer's calibration ran on the student
    # the Runs page's Resume (a plain training job) may not continue it without its teacher
    with pytest.raises(JobError, match="is a distillation run; resume it with kala distill --teacher"):
        train(TrainConfig(base=str(teacher), data=str(dataset), run_dir=str(run_dir), resume=True, max_steps=4,
                          batch_size=4, max_length=48, device="cpu", keep_layers=2, tokenizer_from=str(teacher)),
              lambda e: None)


def test_a_kala_tiny_student_of_half_the_width_speaks_the_teachers_tokenizer(dataset, teacher, tmp_path):
    run_dir = tmp_path / "narrow"
    cfg = student_cfg(dataset, run_dir, teacher, layers=2, base="kala-tiny", eval_every=0, save_every=0,
                      max_steps=2, tiny_overrides={**TINY, "hidden_size": 16, "intermediate_size": 32})
    distill(cfg, DistillConfig(teacher=str(teacher)), lambda e: None)
    a = json.loads((teacher / "tokenizer.json").read_text())["model"]["vocab"]
    b = json.loads((run_dir / "final" / "tokenizer.json").read_text())["model"]["vocab"]
    assert a == b
    conf = json.loads((run_dir / "final" / "config.json").read_text())
    assert (conf["num_hidden_layers"], conf["hidden_size"]) == (2, 16)


def test_a_student_with_another_tokenizer_is_refused_in_one_line_before_anything_runs(dataset, teacher, tmp_path):
    from kala_engine.data.tokenizer import train_tokenizer

    other = tmp_path / "other"
    shutil.copytree(teacher, other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    train_tokenizer(["a quite different corpus of words"] * 20, out_dir=None, vocab_size=280).save_pretrained(other)
    run_dir = tmp_path / "never"
    code, out, err, exc = run_cli(["distill", "--teacher", teacher, "--student", other, "--data", dataset,
                                   "--run-dir", run_dir, "--max-steps", "2", "--device", "cpu"])
    assert exc is None and code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kala distill: error: the student")
    assert "does not use the teacher's tokenizer" in lines[0] and "token ids differ" in lines[0]
    assert not run_dir.exists()


def test_kill_9_then_resume_retraces_the_uninterrupted_distillation(dataset, teacher, tmp_path):
    reference = tmp_path / "reference"
    distill(student_cfg(dataset, reference, teacher, max_steps=10), DistillConfig(teacher=str(teacher)),
            lambda e: None)
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "kala_engine.cli.main", "distill", "--teacher", str(teacher), "--student",
           str(teacher), "--student-layers", "2", "--data", str(dataset), "--run-dir", str(run_dir),
           "--max-steps", "10", "--batch-size", "4", "--max-length", "48", "--learning-rate", "2e-3",
           "--eval-every", "4", "--eval-batches", "1", "--save-every", "3", "--keep-checkpoints", "3",
           "--seed", "5", "--device", "cpu", "--law-weighting", "uncertainty"]
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=errf)
    m = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if m.is_file() and sum(1 for line in m.read_text().splitlines() if '"split"' not in line) >= 7:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.read_text()[-2000:]
    assert (run_dir / "checkpoints" / "step-6").is_dir() and not (run_dir / "final").exists()

    events: list = []
    distill(student_cfg(dataset, run_dir, teacher, max_steps=10, resume=True), DistillConfig(teacher=str(teacher)),
            events.append)
    assert any(isinstance(e, LogLine) and "resumed from checkpoint step-" in e.message for e in events)
    a = metrics(run_dir)
    assert_same_trajectory(a, metrics(reference))
    # the learned law weights moved (uncertainty rule) and were restored with the checkpoint
    weights = [m["law_weight_0"] for m in a if "law_weight_0" in m]
    assert weights[-1] != weights[0]
