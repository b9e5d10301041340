"""Training refuses data that cannot train what the run claims, and records degenerate data in run.json."""

from __future__ import annotations

import json

import pytest

from kala_engine.data.generate import generate_dataset
from kala_engine.data.io import write_jsonl
from tests.engine.cli.cli_harness import run_cli

TINY = ["--max-steps", "2", "--batch-size", "2", "--save-every", "0", "--vocab-size", "300", "--max-length", "64",
        "--tiny-overrides", '{"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 4}']


@pytest.fixture(scope="module")
def records():
    return generate_dataset(400, seed=2)


def _write(tmp_path, rows):
    p = tmp_path / "data.jsonl"
    write_jsonl(p, rows)
    return p


def test_only_harmful_completions_is_refused(tmp_path, records):
    rows = [r for r in records if r["kind"] == "harmful_completion"]
    assert {r["split"] for r in rows} == {"train", "validation"}
    data = _write(tmp_path, rows)
    code, out, err, escaped = run_cli(["train", "--data", data, "--run-dir", tmp_path / "run", *TINY])
    assert escaped is None and code == 2, err[-2000:]
    assert 'no training record has a part with "lm": true' in err.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "final").exists()


def test_no_validation_records_is_refused_while_validation_is_on(tmp_path, records):
    data = _write(tmp_path, [r for r in records if r["split"] == "train"][:60])
    code, out, err, escaped = run_cli(["train", "--data", data, "--run-dir", tmp_path / "run", "--eval-every", "1",
                                       *TINY])
    assert escaped is None and code == 2
    line = err.strip().splitlines()[-1]
    assert "no validation records" in line and "--eval-every 0" in line


def test_no_validation_with_validation_off_trains_and_records_a_warning(tmp_path, records):
    data = _write(tmp_path, [r for r in records if r["split"] == "train"][:60])
    code, out, err, escaped = run_cli(["train", "--data", data, "--run-dir", tmp_path / "run", "--eval-every", "0",
                                       *TINY])
    assert escaped is None and code == 0, err[-2000:]
    warnings = json.loads((tmp_path / "run" / "run.json").read_text())["warnings"]
    assert any("no validation records" in w for w in warnings)
    assert "warning: " in err and "no validation records" in err


def test_a_law_without_signal_is_warned_about_and_recorded(tmp_path, records):
    rows = [r for r in records if all(p["labels"][3] >= 0.5 for p in r["parts"])][:80]
    assert any(r["split"] == "validation" for r in rows)
    data = _write(tmp_path, rows)
    code, out, err, escaped = run_cli(["train", "--data", data, "--run-dir", tmp_path / "run", "--eval-every", "1",
                                       *TINY])
    assert escaped is None and code == 0, err[-2000:]
    warnings = json.loads((tmp_path / "run" / "run.json").read_text())["warnings"]
    assert [w for w in warnings if "Law 3" in w and "as violated" in w]
    assert not [w for w in warnings if "Law 1" in w]
    assert "Law 3" in err


def test_a_folder_with_only_pickled_weights_is_refused(tmp_path, make_neox_dir):
    import torch

    _, d = make_neox_dir("neox-bin")
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    code, out, err, escaped = run_cli(["doctor", "--base", d])
    assert escaped is None and code == 2
    assert "pytorch_model.bin" in err and "safetensors only" in err
