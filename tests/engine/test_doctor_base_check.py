"""Is the base here? A preset that was never downloaded and a folder without a model are refused
up front (doctor, training), with the reason, and a refused start leaves no run folder."""

from __future__ import annotations

import json

import pytest

from kala_engine.doctor import DeviceInfo, check_base, check_model_folder, make_plan
from kala_engine.jobs import JobError

GiB = 1024**3
CPU = DeviceInfo(kind="cpu", name="x86_64", total_bytes=24 * GiB, available_bytes=22 * GiB)


@pytest.fixture
def pythia_dir(make_neox_dir):
    from kala_engine.data.tokenizer import train_tokenizer

    _, d = make_neox_dir("pythia", vocab_size=320)
    train_tokenizer(["hello world"] * 10, vocab_size=300).save_pretrained(d)
    return d


def test_a_complete_pythia_folder_is_accepted(pythia_dir):
    assert check_model_folder(pythia_dir) == ""
    found = check_base(str(pythia_dir))
    assert found.ok and found.folder == str(pythia_dir)


@pytest.mark.parametrize("breakage, reason", [
    ("no config", "no config.json"),
    ("llama", "GPT-NeoX"),
    ("auto_map", "would run Python code"),
    ("no tokenizer", "no tokenizer"),
    ("bin weights", "safetensors only"),
    ("no weights", "no weight files"),
])
def test_a_folder_without_a_usable_model_is_refused_with_the_reason(pythia_dir, breakage, reason):
    cfg = pythia_dir / "config.json"
    d = json.loads(cfg.read_text())
    if breakage == "no config":
        cfg.unlink()
    elif breakage == "llama":
        cfg.write_text(json.dumps({**d, "model_type": "llama"}))
    elif breakage == "auto_map":
        cfg.write_text(json.dumps({**d, "auto_map": {"AutoModel": "x.Y"}}))
    elif breakage == "no tokenizer":
        (pythia_dir / "tokenizer.json").unlink()
    elif breakage in ("bin weights", "no weights"):
        for w in pythia_dir.glob("*.safetensors"):
            w.unlink()
        if breakage == "bin weights":
            (pythia_dir / "pytorch_model.bin").write_bytes(b"\0")
    why = check_model_folder(pythia_dir)
    assert reason in why, why
    assert not check_base(str(pythia_dir)).ok


def test_a_preset_not_in_the_cache_is_not_available(empty_hf_cache):
    found = check_base("pythia-70m")
    assert not found.ok and found.folder is None
    assert "not downloaded" in found.problem and "EleutherAI/pythia-70m" in found.problem
    assert check_base("kala-tiny").ok  # trained from scratch: always here


def test_a_preset_in_the_cache_is_found_there(empty_hf_cache, pythia_dir):
    import shutil

    repo = empty_hf_cache / "models--EleutherAI--pythia-70m"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(pythia_dir, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    found = check_base("pythia-70m")
    assert found.ok, found.problem
    assert found.folder == str(snap)


def test_the_doctor_never_says_fits_alone_for_a_base_that_is_not_here(empty_hf_cache, monkeypatch):
    from kala_engine import doctor

    monkeypatch.setattr(doctor, "probe_device", lambda device="auto": CPU)
    plan = doctor.diagnose("pythia-70m")
    assert plan.fits  # the memory alone would fit on 22 GiB
    report = plan.report()
    assert "fits (but the base is not available" in report
    assert "NOT AVAILABLE: EleutherAI/pythia-70m is not downloaded" in report
    assert make_plan("pythia-70m", CPU).base_problem == ""  # make_plan alone does not look


def _cfg(tmp_path, base, run_dir):
    from kala_engine.data.generate import write_dataset
    from kala_engine.train.trainer import TrainConfig

    data = tmp_path / "d.jsonl"
    write_dataset(data, 40, 0)
    return TrainConfig(base=base, data=str(data), run_dir=str(run_dir), max_steps=1, batch_size=2,
                       eval_every=0, save_every=0)


def test_training_from_a_missing_base_leaves_no_run_folder(tmp_path, empty_hf_cache, pythia_dir):
    from kala_engine.train.trainer import train

    run_dir = tmp_path / "runs" / "r1"
    with pytest.raises(JobError, match="not downloaded"):
        train(_cfg(tmp_path, "pythia-70m", run_dir), lambda e: None)
    assert not run_dir.exists()
    (pythia_dir / "tokenizer.json").unlink()
    with pytest.raises(JobError, match="no tokenizer"):
        train(_cfg(tmp_path, str(pythia_dir), run_dir), lambda e: None)
    assert not run_dir.exists()


def test_kala_doctor_says_no_go_for_a_base_that_is_not_here(empty_hf_cache, monkeypatch, capsys):
    import json as _json

    from kala_engine import doctor
    from kala_engine.cli.main import main

    monkeypatch.setattr(doctor, "probe_device", lambda device="auto": CPU)
    assert main(["doctor", "--base", "pythia-70m"]) == 1
    assert "NOT AVAILABLE" in capsys.readouterr().out
    assert main(["doctor", "--base", "pythia-70m", "--json"]) == 1
    out = _json.loads(capsys.readouterr().out)
    assert out["plan"]["fits"] is True and "not downloaded" in out["plan"]["base_problem"]
    assert main(["doctor", "--base", "kala-tiny"]) == 0
