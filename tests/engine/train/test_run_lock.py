"""A run folder has one owner at a time (kala_engine.train.run_lock), and a resume checks the architecture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kala_engine.jobs import Failed, JobError, LogLine, run_job
from kala_engine.train.run_lock import LOCK_NAME, OWNER_NAME, RunLock, owner_of
from kala_engine.train.trainer import train, train_job
from tests.engine.train.tiny_runs import TINY, cfg_for, write_data

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 240, 3)




def _cli_train(dataset, run_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kala_engine.cli.main", "train", "--data", str(dataset), "--run-dir", str(run_dir),
            "--batch-size", "4", "--max-length", "48", "--learning-rate", "3e-3", "--eval-every", "10",
            "--eval-batches", "1", "--keep-checkpoints", "2", "--device", "cpu", "--vocab-size", "300",
            "--tiny-overrides", json.dumps(TINY), *extra]


def _train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if x.get("split") != "validation"]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _wait_for(cond, proc, timeout=180.0, what="") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_kala_train_on_one_folder_the_second_is_refused_and_the_first_is_untouched(dataset, tmp_path):
    run_dir = tmp_path / "shared-run"
    err_a = tmp_path / "a.err"
    with open(err_a, "wb") as ef:
        a = subprocess.Popen(_cli_train(dataset, run_dir, "--max-steps", "24", "--save-every", "8", "--seed", "7"),
                             cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=ef)
    try:
        _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and len(_train_lines(run_dir)) >= 2, a,
                  what="the first run's second step")
        a.send_signal(signal.SIGSTOP)  # hold run A mid-run, so that the folder cannot change under us
        owner = json.loads((run_dir / OWNER_NAME).read_text())
        assert owner["pid"] == a.pid and "train" in owner["command"]
        before = _snapshot(run_dir)

        # the second starter: with --resume (which used to interleave both runs) and without
        for extra in (["--resume"], []):
            b = subprocess.run(_cli_train(dataset, run_dir, "--max-steps", "10", "--save-every", "5", "--seed", "8",
                                          *extra), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
            assert b.returncode == 2, (b.returncode, b.stdout[-2000:], b.stderr[-2000:])
            lines = [x for x in b.stderr.splitlines() if x.strip()]
            assert len(lines) == 1 and "Traceback" not in b.stderr, b.stderr
            assert lines[0].startswith(f"kala train: error: run folder {run_dir} is in use by process {a.pid} (started ")
            assert "step" not in b.stdout

        # the app's worker runs the same engine job: refused the same way
        events = []
        run_job(train_job(cfg_for(dataset, run_dir, resume=True, seed=8)), events.append)
        assert isinstance(events[-1], Failed) and f"is in use by process {a.pid}" in events[-1].message
        assert _snapshot(run_dir) == before  # nothing written by any refused starter

        a.send_signal(signal.SIGCONT)
        assert a.wait(timeout=300) == 0, err_a.read_text()[-3000:]
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.wait()

    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["config"]["seed"] == 7 and info["config"]["max_steps"] == 24
    assert [x["step"] for x in _train_lines(run_dir)] == list(range(1, 25))  # run A's lines, each once
    final = json.loads((run_dir / "final" / "config.json").read_text())
    assert final["hidden_size"] == TINY["hidden_size"]
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert not (run_dir / OWNER_NAME).exists() and owner_of(run_dir) is None  # released at the end
    # and the finished run resumes (nothing was left inconsistent): a no-op resume exits 0
    again = subprocess.run(_cli_train(dataset, run_dir, "--max-steps", "24", "--save-every", "8", "--seed", "7",
                                      "--resume"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = ("import sys, time; from kala_engine.train.run_lock import RunLock; "
            "held = RunLock(sys.argv[1], command='kala train (killed)').acquire(); print('locked', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        held = owner_of(run_dir)
        assert held is not None and held.pid == child.pid
        with pytest.raises(JobError, match=rf"is in use by process {child.pid} \(started .*kala train \(killed\)\)"):
            RunLock(run_dir).acquire()
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert json.loads((run_dir / OWNER_NAME).read_text())["pid"] == child.pid  # the stale owner file is still there
    assert owner_of(run_dir) is None  # but nobody holds the folder: the OS released the dead process's lock
    with RunLock(run_dir) as lock:
        assert lock.took_over_from is not None and lock.took_over_from.pid == child.pid
        assert json.loads((run_dir / OWNER_NAME).read_text())["pid"] == os.getpid()
    assert not (run_dir / OWNER_NAME).exists() and (run_dir / LOCK_NAME).exists()


def test_a_training_run_says_whose_stale_lock_it_took_over(dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / OWNER_NAME).write_text(json.dumps({"pid": 999999, "host": "x", "started": 1.0, "command": "kala train"}))
    events = []
    train(cfg_for(dataset, run_dir, max_steps=2, save_every=0, eval_every=0, calibrate=False), events.append)
    warned = [e.message for e in events if isinstance(e, LogLine) and e.level == "warning"]
    assert any("process 999999" in m and "ended without releasing it" in m for m in warned), warned


def test_resume_with_another_architecture_says_what_differs(dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(cfg_for(dataset, run_dir, max_steps=3, save_every=2, eval_every=0, calibrate=False), lambda e: None)
    run_json = (run_dir / "run.json").read_bytes()
    assert json.loads(run_json)["architecture"]["hidden_size"] == TINY["hidden_size"]
    wider = {**TINY, "hidden_size": 64, "intermediate_size": 128}
    with pytest.raises(JobError) as e:
        train(cfg_for(dataset, run_dir, max_steps=4, resume=True, tiny_overrides=wider), lambda e: None)
    msg = str(e.value)
    assert "hidden_size 32 in checkpoint vs 64 now" in msg and "intermediate_size 64 in checkpoint vs 128 now" in msg
    assert "num_hidden_layers" not in msg  # only what differs
    assert (run_dir / "run.json").read_bytes() == run_json  # the refused resume changed nothing

    # a run written before run.json recorded the architecture: the tensor shapes say what differs
    info = json.loads(run_json)
    del info["architecture"]
    (run_dir / "run.json").write_text(json.dumps(info))
    with pytest.raises(JobError, match=r"checkpoint step-2 does not fit the model asked for: .* is \(\d+, 32\) in the "
                                       r"checkpoint vs \(\d+, 64\) now"):
        train(cfg_for(dataset, run_dir, max_steps=4, resume=True, tiny_overrides=wider), lambda e: None)
    # the same settings still resume
    train(cfg_for(dataset, run_dir, max_steps=4, save_every=2, eval_every=0, calibrate=False, resume=True),
          lambda e: None)
    assert [x["step"] for x in _train_lines(run_dir)] == [1, 2, 3, 4]  # resumed from step-2


def test_a_start_that_fails_before_writing_leaves_no_empty_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    run_dir = tmp_path / "runs" / "new-run"
    with pytest.raises(JobError, match="not valid"):
        train(cfg_for(bad, run_dir), lambda e: None)
    assert not run_dir.exists()


def test_run_dir_that_is_a_file_is_one_line(dataset, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(JobError, match="is a file"):
        train(cfg_for(dataset, f), lambda e: None)
    assert f.read_text() == "x"
