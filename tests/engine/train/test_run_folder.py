"""RunFolder: the one owner of a run folder's format (run.json, metrics.jsonl, checkpoints, final/)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kala_engine.train.run_folder import RunFolder, checkpoint_step

ROOT = Path(__file__).resolve().parents[3]


def test_run_json_is_written_atomically_and_a_damaged_one_reads_as_empty(tmp_path):
    f = RunFolder(tmp_path)
    assert f.read_info() == {} and not f.is_run()
    f.write_info({"config": {"base": "kala-tiny"}, "status": "running"})
    f.update_info(status="finished", step=3)
    assert f.read_info() == {"config": {"base": "kala-tiny"}, "status": "finished", "step": 3}
    assert f.config() == {"base": "kala-tiny"} and f.is_run()
    assert not list(tmp_path.glob("*.tmp"))
    f.run_file.write_bytes(b"\xff{not json")
    assert f.read_info() == {}
    f.run_file.write_text(json.dumps({"base": "old-layout"}))  # older folders kept the config at the top
    assert f.config() == {"base": "old-layout"}


def test_metrics_lines_torn_lines_and_truncation(tmp_path):
    f = RunFolder(tmp_path)
    for step in (1, 2, 3):
        f.append_metrics({"step": step, "lm_loss": 1.0 / step})
        if step == 2:
            f.append_metrics({"split": "validation", "step": 2, "lm_loss": 0.9})
    with open(f.metrics_file, "a", encoding="utf-8") as fh:
        fh.write('{"step": 4, "lm_lo')  # a kill in the middle of a line
    train, val = f.read_metrics()
    assert [d["step"] for d in train] == [1, 2, 3] and [d["step"] for d in val] == [2]
    assert f.last_metrics()["step"] == 3
    f.truncate_metrics(2)  # a resume from step-2 drops what came after it
    train, val = f.read_metrics()
    assert [d["step"] for d in train] == [1, 2] and [d["step"] for d in val] == [2]
    assert f.has_progress()


def test_checkpoints_are_atomic_and_only_the_newest_are_kept(tmp_path):
    f = RunFolder(tmp_path)
    for step in (10, 20, 30):
        with f.writing_checkpoint(step, keep=2) as tmp:
            (tmp / "meta.json").write_text(json.dumps({"step": step}))
    assert f.checkpoint_steps() == [20, 30] and f.last_checkpoint() == f.checkpoint_dir(30)
    with pytest.raises(RuntimeError), f.writing_checkpoint(40, keep=2) as tmp:
        (tmp / "meta.json").write_text("half")
        raise RuntimeError("killed while writing")
    assert f.checkpoint_steps() == [20, 30]  # no half-written step-40, no temporary folder left
    assert [p.name for p in f.checkpoints_dir.iterdir() if p.name.startswith(".")] == []
    assert checkpoint_step(f.checkpoint_dir(20)) == 20 and checkpoint_step(tmp_path / "step-20") is None


def test_final_replaces_the_old_one_only_when_complete(tmp_path):
    f = RunFolder(tmp_path)
    with f.writing_final() as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(OSError), f.writing_final() as tmp:
        raise OSError("disk full")
    assert f.has_final() and (f.final_dir / "config.json").is_file()
    assert not (tmp_path / "final.tmp").exists()


def test_one_parser_of_the_format():
    """run.json, metrics.jsonl and the checkpoints folder are spelled in run_folder.py only."""
    spelled = []
    for p in [*ROOT.glob("kala_engine/**/*.py"), *ROOT.glob("kala_app/**/*.py")]:
        if p.name == "run_folder.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("run.json", "metrics.jsonl", "checkpoints"):
                spelled.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert spelled == []


def test_the_module_does_not_import_torch():
    """The app's Runs and Train pages read run folders through it."""
    code = "import sys, kala_engine.train.run_folder, kala_engine.train.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
