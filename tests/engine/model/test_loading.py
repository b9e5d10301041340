"""The loading policy: a model folder never runs its own code, and weights come from safetensors only.

A folder whose config.json / tokenizer_config.json has an ``auto_map`` and ships a Python file
that would write a marker file: every command that reads a model, tokenizer or config refuses it
with exit code 2 and one line, whatever is on stdin, and the marker never appears.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kala_engine.cli.main import main

EVIL_PY = '''
import os, pathlib
pathlib.Path(os.environ.get("KALA_TEST_MARKER", "/nonexistent/marker")).write_text("foreign code ran")
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast
class EvilConfig(GPTNeoXConfig):
    model_type = "gpt_neox"
class EvilModel(GPTNeoXForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
            "AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}


def _poison(d: Path, where=("config.json", "tokenizer_config.json")) -> Path:
    (d / "evil.py").write_text(EVIL_PY)
    for name in where:
        cfg = json.loads((d / name).read_text())
        cfg["auto_map"] = AUTO_MAP
        (d / name).write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from kala_engine.data.generate import write_dataset
    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    root = tmp_path_factory.mktemp("policy")
    tok = train_tokenizer(["hello world, how are you today?"] * 20, vocab_size=300)
    shape = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = {}
    for name, model in (("neox", GPTNeoXForCausalLM(GPTNeoXConfig(**shape))),
                        ("kala", KALAForCausalLM(KALAConfig(**shape)))):
        for variant in ("evil", "tokonly"):
            d = root / f"{name}-{variant}"
            model.save_pretrained(d)
            tok.save_pretrained(d)
            _poison(d, ("config.json", "tokenizer_config.json") if variant == "evil" else ("tokenizer_config.json",))
            out[f"{name}-{variant}"] = d
    write_dataset(root / "data.jsonl", 40, 0)
    out["data"] = root / "data.jsonl"
    out["root"] = root
    return out


def _commands(f, tmp_path, key_neox, key_kala):
    neox, kala = str(f[key_neox]), str(f[key_kala])
    return {
        "train": ["train", "--base", neox, "--data", str(f["data"]), "--run-dir", str(tmp_path / "run"),
                  "--max-steps", "1"],
        "data stats": ["data", "stats", str(f["data"]), "--tokenizer", neox],
        "data cai": ["data", "cai", "--model", neox, "--out", str(tmp_path / "cai.jsonl"), "--count", "1"],
        "chat": ["chat", "--model", kala, "--prompt", "hello"],
        "eval": ["eval", "--model", kala],
        "doctor": ["doctor", "--base", neox],
    }


@pytest.mark.parametrize("variant", ["evil", "tokonly"])
def test_auto_map_folder_is_refused_by_every_command_and_its_code_never_runs(folders, tmp_path, monkeypatch,
                                                                              capsys, variant):
    marker = tmp_path / "MARKER"
    monkeypatch.setenv("KALA_TEST_MARKER", str(marker))
    for label, argv in _commands(folders, tmp_path, f"neox-{variant}", f"kala-{variant}").items():
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))  # "Do you wish to run the custom code?" y
        code = main(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert not marker.exists(), f"{label}: the folder's Python file ran"
        assert code == 2, f"{label}: exit {code}: {err}"
        assert len(lines) == 1 and "auto_map" in lines[0] and "refused" in lines[0], f"{label}: {err}"
    from kala_engine.model.modeling_kala import load_from_pythia

    with pytest.raises(ValueError, match="auto_map"):
        load_from_pythia(folders[f"neox-{variant}"])
    assert not marker.exists()


def test_auto_map_refused_by_the_real_cli_with_y_on_stdin(folders, tmp_path):
    marker = tmp_path / "MARKER"
    env = {**os.environ, "KALA_TEST_MARKER": str(marker), "PYTHONPATH": str(Path(__file__).parents[3])}
    for argv in (["train", "--base", str(folders["neox-evil"]), "--data", str(folders["data"]), "--run-dir",
                  str(tmp_path / "run"), "--max-steps", "1"],
                 ["train", "--base-model", str(folders["neox-tokonly"]), "--output-dir", str(tmp_path / "run2"),
                  "--max-steps", "1", "--data-count", "20"]):
        p = subprocess.run([sys.executable, "-m", "kala_engine.cli.main", *argv], input="y\ny\ny\n", text=True,
                           capture_output=True, env=env, timeout=300)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and "auto_map" in p.stderr
        assert not marker.exists()
    assert not (tmp_path / "run" / "final").exists()


def test_pickle_only_weights_are_refused_without_unpickling(folders, tmp_path, monkeypatch, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    from kala_engine.model.modeling_kala import load_from_pythia

    for name in ("neox", "kala"):
        d = tmp_path / f"{name}-bin"
        shutil.copytree(folders[f"{name}-evil"], d)
        for f in ("config.json", "tokenizer_config.json"):
            cfg = json.loads((d / f).read_text())
            cfg.pop("auto_map")
            (d / f).write_text(json.dumps(cfg))
        (d / "evil.py").unlink()
        torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
        (d / "model.safetensors").unlink()

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called on a user's weights")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ValueError, match="pickle"):
        load_from_pythia(tmp_path / "neox-bin")
    assert main(["chat", "--model", str(tmp_path / "kala-bin"), "--prompt", "hi"]) == 2
    assert "safetensors only" in capsys.readouterr().err
    assert main(["data", "cai", "--model", str(tmp_path / "neox-bin"), "--out", str(tmp_path / "o.jsonl"),
                 "--count", "1"]) == 2
    assert "pickle" in capsys.readouterr().err


def test_align_and_distill_loaders_apply_the_loading_policy(tmp_path):
    """A teacher or an aligned model folder whose config asks for its own code (auto_map) is refused
    before transformers reads it, like every other loader."""
    import json as _json

    import pytest as _pytest

    from kala_engine.model.loading import LoadRefused
    from kala_engine.train.align import held_out_preference
    from kala_engine.train.distill import load_teacher

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(_json.dumps({"model_type": "kala", "auto_map": {"AutoModel": "x.Y"}}))
    (bad / "model.safetensors").write_bytes(b"")
    with _pytest.raises(LoadRefused):
        load_teacher(bad, "cpu", "fp32")
    with _pytest.raises(LoadRefused):
        held_out_preference(bad, tmp_path / "pairs.jsonl")
