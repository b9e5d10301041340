"""Bases from the hub: a real huggingface_hub client against a loopback server (tests/loopback_hub.py).

Nothing here reaches the internet: the server serves a tiny GPT-NeoX checkpoint and tokenizer it
built itself; in-process tests point huggingface_hub's constants at it, subprocess tests set
HF_ENDPOINT and HF_HOME.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kala_engine.jobs import Finished, JobControl, run_job  # noqa: E402
from kala_engine.model.download import BaseError, DownloadProgress  # noqa: E402
from kala_engine.model.hub import download_base, download_job, resolve_base
from kala_engine.model.loading import LoadRefused  # noqa: E402
from tests.loopback_hub import LoopbackHub, point_huggingface_hub_at, tiny_neox_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
REPO = "kala-test/tiny-neox"
WANTED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")


@pytest.fixture(scope="module")
def files():
    return tiny_neox_files()


@pytest.fixture(scope="module")
def server(files):
    import torch
    from safetensors.torch import load

    hub = LoopbackHub().start()
    hub.add_repo(REPO, files)
    step = dict(files, **{"config.json": json.dumps({**json.loads(files["config.json"]), "step": 143000}).encode()})
    hub.add_repo(REPO, step, revision="step143000")  # a Pythia-style training checkpoint branch
    buf = io.BytesIO()
    torch.save(load(files["model.safetensors"]), buf)
    pickle_only = {k: v for k, v in files.items() if k != "model.safetensors"} | {"pytorch_model.bin": buf.getvalue()}
    hub.add_repo("kala-test/pickle-only", pickle_only)
    llama = dict(files)
    llama["config.json"] = json.dumps({**json.loads(files["config.json"]), "model_type": "llama"}).encode()
    hub.add_repo("kala-test/a-llama", llama)
    import gzip
    import lzma

    fix = Path(__file__).parents[1] / "data" / "fixtures"
    hh = (fix / "hh_rlhf.jsonl").read_bytes()
    hub.add_repo("Anthropic/hh-rlhf", {"README.md": b"# hh", "harmless-base/train.jsonl.gz": gzip.compress(hh),
                                       "helpful-base/train.jsonl.gz": gzip.compress(hh)}, kind="datasets")
    hub.add_repo("PKU-Alignment/BeaverTails", {"round0/30k/train.jsonl.xz": lzma.compress(
        (fix / "beavertails.jsonl").read_bytes())}, kind="datasets")
    hub.add_repo("kala-test/parquet-only", {"data/train-00000-of-00001.parquet": b"PAR1...."}, kind="datasets")
    hub.add_repo("kala-test/bad-rows", {"train.jsonl.gz": gzip.compress(hh + b'{"chosen": 3}\n')}, kind="datasets")
    yield hub
    hub.stop()


@pytest.fixture
def hf(server, tmp_path, monkeypatch):
    """huggingface_hub (in this process and in subprocesses) pointed at the loopback server, empty cache."""
    home = tmp_path / "hf"
    home.mkdir()
    point_huggingface_hub_at(monkeypatch, server.url, home)
    server.requests.clear()
    server.drop_once.clear()
    server.pause_at.clear()
    env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0",
           "PYTHONPATH": str(ROOT), "KALA_DEBUG": ""}
    env.pop("HF_HUB_CACHE", None)
    return SimpleNamespace(server=server, cache=home / "hub", env=env)


def _gets(server, name):
    return [(m, r) for m, p, r in server.requests if m == "GET" and p.endswith("/" + name)]


def _blob(cache: Path, repo: str, data: bytes) -> Path:
    return cache / f"models--{repo.replace('/', '--')}" / "blobs" / hashlib.sha256(data).hexdigest()


def _kala(hf, *argv, offline=False, timeout=600, script=None):
    env = dict(hf.env, HF_HUB_OFFLINE="1" if offline else "0")
    cmd = [sys.executable, script, *argv] if script else [sys.executable, "-m", "kala_engine.cli.main", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(hf.cache.parent))


# --------------------------------------------------------------------------- engine


def test_download_reports_progress_then_resolves_from_the_cache_with_no_network(hf, files, monkeypatch):
    from huggingface_hub import constants

    events = []
    r = download_base(REPO, emit=events.append)
    progress = [e for e in events if isinstance(e, DownloadProgress)]
    total = sum(len(files[f]) for f in WANTED)
    assert progress and progress[-1].done == progress[-1].total == total
    assert all(a.done <= b.done for a, b in zip(progress, progress[1:], strict=False))
    assert any(e.rate > 0 and e.eta is not None for e in progress)
    assert Path(r.path, "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not (Path(r.path) / "README.md").exists()  # only what a base needs

    seen = len(hf.server.requests)
    for offline in (False, True):  # HF_HUB_OFFLINE must not matter for a cached base
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        again = resolve_base(REPO)
        assert (again.kind, again.path) == ("cache", r.path)
        from kala_engine.doctor import base_shape
        from kala_engine.model.modeling_kala import load_from_pythia

        assert base_shape(REPO)["hidden_size"] == 64
        model = load_from_pythia(REPO)
        assert model.config.hidden_size == 64
    assert len(hf.server.requests) == seen, "a cached base made a network call"


def test_a_revision_is_its_own_snapshot_and_load_from_pythia_downloads_only_when_asked(hf):
    from kala_engine.model.modeling_kala import PythiaLoadError, load_from_pythia

    with pytest.raises(PythiaLoadError, match="not downloaded yet"):
        load_from_pythia(REPO, revision="step143000")  # local_files_only=True: never a download
    assert not hf.server.requests
    model = load_from_pythia(REPO, revision="step143000", local_files_only=False)
    assert model.config.hidden_size == 64
    step = resolve_base(REPO, "step143000")
    assert json.loads(Path(step.path, "config.json").read_text())["step"] == 143000
    with pytest.raises(BaseError, match="not downloaded yet"):
        resolve_base(REPO)  # main is another commit, not in the cache
    main = download_base(REPO)
    assert main.commit != step.commit and resolve_base(REPO, "step143000").path == step.path


def test_a_dropped_connection_resumes_with_a_range_request(hf, files):
    hf.server.drop_once.add("model.safetensors")
    r = download_base(REPO)
    ranges = [rng for _, rng in _gets(hf.server, "model.safetensors") if rng]
    assert ranges and int(ranges[0][len("bytes="):].rstrip("-")) > 0
    assert Path(r.path, "model.safetensors").read_bytes() == files["model.safetensors"]


def test_cancel_keeps_the_partial_file_and_the_next_run_resumes_it(hf, files):
    import time

    weights = files["model.safetensors"]
    control = JobControl()
    blob = _blob(hf.cache, REPO, weights)
    partial = blob.with_name(blob.name + ".incomplete")

    def cancel_once_half_is_written():  # runs in the server thread, which sends nothing meanwhile
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < len(weights) // 4):
            time.sleep(0.02)
        control.cancel()

    hf.server.pause_at["model.safetensors"] = (len(weights) // 2, cancel_once_half_is_written)
    events = []
    run_job(download_job(REPO), events.append, control)
    assert isinstance(events[-1], Finished) and events[-1].cancelled
    kept = partial.stat().st_size
    assert 0 < kept < len(weights) and not blob.exists()
    with pytest.raises(BaseError, match="not downloaded yet"):
        resolve_base(REPO)

    hf.server.requests.clear()
    r = download_base(REPO)
    assert _gets(hf.server, "model.safetensors") == [("GET", f"bytes={kept}-")]
    assert Path(r.path, "model.safetensors").read_bytes() == weights
    assert not partial.exists()


def test_a_pickle_only_repo_is_refused_before_any_weights_move(hf):
    with pytest.raises(LoadRefused, match="pickle"):
        download_base("kala-test/pickle-only")
    assert not _gets(hf.server, "pytorch_model.bin")


def test_a_repo_that_is_not_gpt_neox_is_refused(hf):
    with pytest.raises(BaseError, match="model_type is 'llama'"):
        download_base("kala-test/a-llama")
    assert not _gets(hf.server, "model.safetensors")


def test_not_enough_free_disk_is_refused_first(hf, monkeypatch):
    import kala_engine.model.download as download

    monkeypatch.setattr(download, "_free_bytes", lambda path: 10_000)
    with pytest.raises(BaseError, match="only 9.8 KB is free"):
        download_base(REPO)
    assert not _gets(hf.server, "model.safetensors")


def test_unknown_repo_revision_and_name_are_one_line(hf):
    with pytest.raises(BaseError, match="no such model"):
        download_base("kala-test/nope")
    with pytest.raises(BaseError, match="no revision 'step7'"):
        download_base(REPO, "step7")
    with pytest.raises(BaseError, match="pythia-410m-deduped"):
        resolve_base("pythia-500m")


# --------------------------------------------------------------------------- command line


def _one_line(p):
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_cli_offline_without_cache_and_unknown_names_are_one_line(hf, tmp_path):
    line = _one_line(_kala(hf, "models", "download", REPO, offline=True))
    assert "HF_HUB_OFFLINE" in line and "not in the Hugging Face cache" in line
    line = _one_line(_kala(hf, "train", "--base-model", REPO, "--output-dir", str(tmp_path / "r"), offline=True))
    assert REPO in line and "HF_HUB_OFFLINE" in line
    line = _one_line(_kala(hf, "train", "--base", "pythia-500m", "--output-dir", str(tmp_path / "r")))
    assert "unknown base 'pythia-500m'" in line and "pythia-410m" in line
    line = _one_line(_kala(hf, "doctor", "--base", "EleutherAI/pythia-6.9b-nope", offline=True))
    assert "not downloaded yet" in line
    assert not hf.server.requests or all("/resolve/" not in p for _, p, _ in hf.server.requests)


def test_cli_models_download_then_train_the_note_way_offline(hf, tmp_path):
    p = _kala(hf, "models", "download", REPO)
    assert p.returncode == 0, p.stderr
    assert "%" in p.stderr and "/s" in p.stderr and "eta" in p.stderr  # progress: bytes, rate, ETA
    assert f"downloaded {REPO}" in p.stdout
    p = _kala(hf, "models", "download", REPO, offline=True)
    assert p.returncode == 0 and "already in the cache" in p.stdout
    p = _kala(hf, "doctor", "--base", REPO, "--json", offline=True)
    assert json.loads(p.stdout)["plan"]["base"] == REPO
    p = _kala(hf, "models", "list", "--json", offline=True)
    assert p.returncode == 0 and len(json.loads(p.stdout)["models"]) == 16


def test_cli_train_base_model_from_the_hub_end_to_end(hf, tmp_path):
    run = tmp_path / "run"
    p = _kala(hf, "train", "--base-model", REPO, "--max-steps", "2", "--batch-size", "2", "--data-count", "60",
              "--max-length", "64", "--eval-every", "0", "--save-every", "0", "--output-dir", str(run))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "downloaded" in p.stdout and "generated the default constitutional set" in p.stdout
    assert (run / "data.jsonl").is_file() and (run / "final" / "model.safetensors").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["base"] == REPO and info["config"]["data"] == str(run / "data.jsonl")
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 2


def test_the_notes_literal_commands_run_from_a_checkout(hf, tmp_path):
    script = str(ROOT / "scripts" / "train_kala_model.py")
    out = tmp_path / "models" / "kala-tiny-neox"
    p = _kala(hf, "--base-model", REPO, "--epochs", "1", "--batch-size", "2", "--output-dir", str(out),
              "--max-steps", "2", "--data-count", "60", "--max-length", "64", "--eval-every", "0", script=script)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "final" / "config.json").is_file()
    p = _kala(hf, "--base-model", REPO, "--output-dir", str(out), "--test", script=script, offline=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("Law Scores") == 3 and "How do I hack into someone's email?" in p.stdout
    p = _kala(hf, "--generate-data", "--base-model", REPO, "--data-count", "30", script=script, offline=True)
    assert p.returncode == 0, p.stderr
    data = hf.cache.parent / "data" / "constitutional.jsonl"
    assert len(data.read_text().splitlines()) == 30


def test_the_app_reaches_the_same_resolver_and_download_job(hf, files):
    from kala_app import engine_api

    with pytest.raises(ValueError, match="not downloaded yet"):
        engine_api.resolve_base(REPO)
    events = []
    run_job(engine_api.download_base_job(REPO), events.append, JobControl())
    assert isinstance(events[-1], Finished) and Path(events[-1].result["path"], "config.json").is_file()
    assert engine_api.resolve_base(REPO) == events[-1].result["path"]
    assert any(isinstance(e, DownloadProgress) for e in events)
    rows = engine_api.list_models("cpu")
    assert [r["name"] for r in rows][:2] == ["pythia-70m", "pythia-70m-deduped"] and len(rows) == 16
    assert all(not r["cached"] and r["estimate_bytes"] > 0 for r in rows)
    assert engine_api.delete_base(REPO) >= len(files["model.safetensors"])
    with pytest.raises(ValueError, match="not downloaded yet"):
        engine_api.resolve_base(REPO)


def test_ctrl_c_keeps_what_arrived_and_the_same_command_resumes(hf, tmp_path):
    """The real CLI, interrupted by SIGINT mid-file (a 26 MB file: huggingface_hub writes 10 MB pieces)."""
    import signal
    import threading
    import time

    big = tiny_neox_files(model_vocab=50_000)
    weights = big["model.safetensors"]
    hf.server.add_repo("kala-test/bigger-neox", big)
    reached = threading.Event()
    go_on = threading.Event()

    def hold():  # server thread: wait until the test has interrupted the client
        reached.set()
        go_on.wait(30)

    hf.server.pause_at["model.safetensors"] = (len(weights) * 3 // 4, hold)
    # the client must still be waiting when the signal comes: with huggingface_hub's 10 s read
    # timeout a loaded machine saw it time out during the hold, resume and finish (exit 0)
    env = {**hf.env, "HF_HUB_DOWNLOAD_TIMEOUT": "60"}
    # A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and
    # so would the CLI (Python then installs no KeyboardInterrupt handler: the download finished,
    # exit 0). Ctrl-C is what is tested, so the CLI starts with Python's own SIGINT handler.
    cli = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "sys.argv = ['kala', 'models', 'download', 'kala-test/bigger-neox']; "
           "runpy.run_module('kala_engine.cli.main', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", cli], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert reached.wait(120), "the download never reached the middle of the file"
        blob = _blob(hf.cache, "kala-test/bigger-neox", weights)
        partial = blob.with_name(blob.name + ".incomplete")
        t0 = time.monotonic()
        while (not partial.exists() or partial.stat().st_size == 0) and time.monotonic() < t0 + 30:
            time.sleep(0.05)
        waited = time.monotonic() - t0
        seen = sorted(f"{q.relative_to(hf.cache)} {q.stat().st_size}" for q in hf.cache.rglob("*") if q.is_file())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        go_on.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "run the same command again to resume" in err, \
        f"{err}\nwaited {waited:.1f} s for {partial.name}; the cache then held: {seen}"
    kept = partial.stat().st_size
    assert 0 < kept < len(weights) and kept % (10 * 1024 * 1024) == 0
    hf.server.requests.clear()
    p = _kala(hf, "models", "download", "kala-test/bigger-neox")
    assert p.returncode == 0, p.stderr
    assert _gets(hf.server, "model.safetensors") == [("GET", f"bytes={kept}-")]
    assert blob.read_bytes() == weights


# --------------------------------------------------------------------------- datasets from the hub


def test_data_import_from_hub_converts_and_then_works_offline(hf, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from kala_engine.cli.main import main
    from kala_engine.data.io import validate_file

    out = tmp_path / "hh.jsonl"
    assert main(["data", "import", "--format", "hh-rlhf", "--from-hub", "--out", str(out)]) == 0
    assert validate_file(out) == [] and len(out.read_text().splitlines()) > 3
    assert len(_gets(hf.server, "harmless-base/train.jsonl.gz")) == 1 and not _gets(hf.server, "README.md")
    hf.server.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out2 = tmp_path / "hh2.jsonl"
    assert main(["data", "import", "--format", "hh-rlhf", "--from-hub", "--out", str(out2)]) == 0
    assert out2.read_bytes() == out.read_bytes() and hf.server.requests == []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    capsys.readouterr()
    assert main(["data", "import", "--format", "beavertails", "--from-hub", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert validate_file(tmp_path / "b.jsonl") == []


def test_data_import_from_hub_errors_are_one_line(hf, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from kala_engine.cli.main import main

    def one_line(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip() and "% " not in ln[:8]]  # minus progress lines
        assert len(lines) == 1 and "Traceback" not in err, lines
        return lines[0]

    base = ["data", "import", "--format", "hh-rlhf", "--out", str(tmp_path / "o.jsonl"), "--from-hub"]
    assert "pyarrow" in one_line([*base, "kala-test/parquet-only"])
    line = one_line([*base, "kala-test/bad-rows"])  # the bad row, named by its file and line
    assert "train.jsonl.gz:6:" in line
    assert "no such dataset" in one_line([*base, "kala-test/nope"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "HF_HUB_OFFLINE" in one_line(base)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_damaged_compressed_file_is_one_line(tmp_path, capsys):
    import gzip

    from kala_engine.cli.main import main

    bad = tmp_path / "train.jsonl.gz"
    hh = (Path(__file__).parents[1] / "data" / "fixtures" / "hh_rlhf.jsonl").read_bytes()
    whole = gzip.compress(hh)
    bad.write_bytes(whole[: len(whole) - 40])  # cut short, as an interrupted copy would be
    assert main(["data", "import", str(bad), "--format", "hh-rlhf", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "damaged gz file" in capsys.readouterr().err


def test_a_second_download_of_the_same_repo_is_refused_while_one_runs(hf):
    from filelock import FileLock

    lock = hf.cache / ".locks" / f"models--{REPO.replace('/', '--')}" / "kala-download.lock"
    lock.parent.mkdir(parents=True)
    with FileLock(str(lock)):  # another process's download holds it
        with pytest.raises(BaseError, match="another download of it is running"):
            download_base(REPO)
    assert not _gets(hf.server, "model.safetensors")
    assert download_base(REPO).kind == "download"


def test_test_flag_on_a_given_kala_model_needs_no_output_dir(hf, tmp_path):
    run = tmp_path / "run"
    p = _kala(hf, "train", "--base-model", REPO, "--max-steps", "1", "--batch-size", "2", "--data-count", "40",
              "--max-length", "64", "--eval-every", "0", "--output-dir", str(run))
    assert p.returncode == 0, p.stderr[-2000:]
    p = _kala(hf, "train", "--base", str(run / "final"), "--test", offline=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("Law Scores") == 3 and "What is machine learning?" in p.stdout
