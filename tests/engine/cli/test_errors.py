"""Bad inputs against every `kala` command: one clear line and exit 2, never a traceback.

Each case runs ``kala_engine.cli.main(argv)`` in-process (fast) with stdout/stderr captured. A
case passes when the command returns 2 (argparse's own usage errors count too), no exception
escapes ``main``, nothing printed holds "Traceback", and the error is one line on stderr that
names the thing at fault. Run this file with ``-rA`` to see every case; the issue's "36
tracebacks" were counted with it (see the branch report).
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from tests.engine.cli.cli_harness import run_cli

CORPUS = ["Hello, how are you today? I am fine, thank you.", "How do I kill a stuck process on Linux?",
          "Please help me write a short poem about the sea.", "I cannot help with that request."] * 4


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Paths for the cases: a good tiny KALA model, damaged copies of it, datasets, a suite."""
    import shutil

    import torch

    from kala_engine.data.generate import generate_dataset
    from kala_engine.data.io import write_jsonl
    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    root = tmp_path_factory.mktemp("cli_errors")
    tok = train_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                     vocab_size=len(tok), rotary_pct=0.25, max_position_embeddings=64)
    good = root / "good"
    KALAForCausalLM(cfg).save_pretrained(good)
    tok.save_pretrained(good)

    def variant(name, edit):
        d = root / name
        shutil.copytree(good, d)
        edit(d)
        return d

    weights = good / "model.safetensors"
    truncated = variant("truncated", lambda d: (d / "model.safetensors").write_bytes(weights.read_bytes()[:200]))
    garbage = variant("garbage", lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 50))

    def mistype(d):
        c = json.loads((d / "config.json").read_text())
        c["hidden_size"] = "thirty-two"
        (d / "config.json").write_text(json.dumps(c))

    mistyped = variant("mistyped", mistype)
    corrupt_cfg = variant("corrupt_cfg", lambda d: (d / "config.json").write_bytes(b"{\"model_type\": \"kala\", \xff"))

    def bert(d):
        c = json.loads((d / "config.json").read_text())
        c["model_type"] = "bert"
        (d / "config.json").write_text(json.dumps(c))

    wrong_type = variant("bert", bert)
    no_config = variant("no_config", lambda d: (d / "config.json").unlink())

    records = generate_dataset(40, seed=1)
    data = root / "data.jsonl"
    write_jsonl(data, records)
    garbage_data = root / "garbage.jsonl"
    garbage_data.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    suite = root / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": "hello there", "label": "benign"}) + "\n")
    a_file = root / "a_file.txt"
    a_file.write_text("not a folder\n")
    a_dir = root / "a_dir"
    a_dir.mkdir()
    return types.SimpleNamespace(root=root, good=good, truncated=truncated, garbage=garbage, mistyped=mistyped,
                                 corrupt_cfg=corrupt_cfg, wrong_type=wrong_type, no_config=no_config, data=data,
                                 garbage_data=garbage_data, suite=suite, a_file=a_file, a_dir=a_dir)


NO_CUDA = not __import__("torch").cuda.is_available()
T = ["--max-steps", "1", "--batch-size", "2", "--eval-every", "0", "--save-every", "0", "--vocab-size", "300",
     "--tiny-overrides", '{"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 4}']

# name -> (argv built from fx, words the one error line must contain)
CASES: dict[str, tuple] = {
    # kala train
    "train-base-missing": (lambda f: ["train", "--base", f.root / "nope", "--data", f.data, "--run-dir", f.root / "r1", *T], ["nope"]),
    "train-base-is-file": (lambda f: ["train", "--base", f.a_file, "--data", f.data, "--run-dir", f.root / "r2", *T], ["a_file"]),
    "train-base-no-config": (lambda f: ["train", "--base", f.no_config, "--data", f.data, "--run-dir", f.root / "r3", *T], ["config.json"]),
    "train-base-corrupt-config": (lambda f: ["train", "--base", f.corrupt_cfg, "--data", f.data, "--run-dir", f.root / "r4", *T], ["config.json"]),
    "train-base-mistyped-config": (lambda f: ["train", "--base", f.mistyped, "--data", f.data, "--run-dir", f.root / "r5", *T], ["hidden_size"]),
    "train-base-wrong-model-type": (lambda f: ["train", "--base", f.wrong_type, "--data", f.data, "--run-dir", f.root / "r6", *T], ["bert"]),
    "train-base-truncated-weights": (lambda f: ["train", "--base", f.truncated, "--data", f.data, "--run-dir", f.root / "r7", *T], ["model.safetensors"]),
    "train-run-dir-is-file": (lambda f: ["train", "--data", f.data, "--run-dir", f.a_file, *T], ["a_file"]),
    "train-data-missing": (lambda f: ["train", "--data", f.root / "nope.jsonl", "--run-dir", f.root / "r8", *T], ["nope.jsonl"]),
    "train-data-garbage": (lambda f: ["train", "--data", f.garbage_data, "--run-dir", f.root / "r9", *T], ["garbage.jsonl"]),
    "train-data-is-dir": (lambda f: ["train", "--data", f.a_dir, "--run-dir", f.root / "r10", *T], ["a_dir"]),
    "train-bad-overrides-json": (lambda f: ["train", "--data", f.data, "--run-dir", f.root / "r11", "--tiny-overrides", "{oops"], []),
    "train-bad-overrides-field": (lambda f: ["train", "--data", f.data, "--run-dir", f.root / "r12", "--max-steps", "1",
                                             "--tiny-overrides", '{"hidden_size": "big"}'], ["hidden_size"]),
    "train-negative-steps": (lambda f: ["train", "--data", f.data, "--run-dir", f.root / "r13", "--max-steps", "-3"], ["max_steps"]),
    # kala chat
    "chat-model-missing": (lambda f: ["chat", "--model", f.root / "nope", "--prompt", "hi"], ["nope"]),
    "chat-model-is-file": (lambda f: ["chat", "--model", f.a_file, "--prompt", "hi"], ["a_file"]),
    "chat-truncated-weights": (lambda f: ["chat", "--model", f.truncated, "--prompt", "hi"], ["model.safetensors"]),
    "chat-garbage-weights": (lambda f: ["chat", "--model", f.garbage, "--prompt", "hi"], ["model.safetensors"]),
    "chat-mistyped-config": (lambda f: ["chat", "--model", f.mistyped, "--prompt", "hi"], ["hidden_size"]),
    "chat-corrupt-config": (lambda f: ["chat", "--model", f.corrupt_cfg, "--prompt", "hi"], ["config.json"]),
    "chat-wrong-model-type": (lambda f: ["chat", "--model", f.wrong_type, "--prompt", "hi"], ["bert"]),
    "chat-bad-device": (lambda f: ["chat", "--model", f.good, "--prompt", "hi", "--device", "warp9"], ["warp9"]),
    "chat-prompt-not-utf8": (lambda f: ["chat", "--model", f.good, "--prompt", "caf\udce9 \udcff"], ["--prompt", "UTF-8"]),
    "chat-system-not-utf8": (lambda f: ["chat", "--model", f.good, "--prompt", "hi", "--system", "\udcff"], ["--system", "UTF-8"]),
    # kala eval
    "eval-model-missing": (lambda f: ["eval", "--model", f.root / "nope", "--suite", f.suite], ["nope"]),
    "eval-truncated-weights": (lambda f: ["eval", "--model", f.truncated, "--suite", f.suite], ["model.safetensors"]),
    "eval-garbage-weights": (lambda f: ["eval", "--model", f.garbage, "--suite", f.suite], ["model.safetensors"]),
    "eval-mistyped-config": (lambda f: ["eval", "--model", f.mistyped, "--suite", f.suite], ["hidden_size"]),
    "eval-bad-device": (lambda f: ["eval", "--model", f.good, "--suite", f.suite, "--device", "warp9"], ["warp9"]),
    "eval-out-is-file": (lambda f: ["eval", "--model", f.good, "--suite", f.suite, "--out", f.a_file, "--max-new-tokens", "2"], ["a_file"]),
    "eval-suite-missing": (lambda f: ["eval", "--model", f.good, "--suite", f.root / "nope.jsonl"], ["nope.jsonl"]),
    "eval-suite-garbage": (lambda f: ["eval", "--model", f.good, "--suite", f.garbage_data], ["garbage.jsonl"]),
    "eval-validation-garbage": (lambda f: ["eval", "--model", f.good, "--suite", f.suite, "--validation", f.garbage_data,
                                           "--max-new-tokens", "2"], ["garbage.jsonl"]),
    "eval-validation-is-dir": (lambda f: ["eval", "--model", f.good, "--suite", f.suite, "--validation", f.a_dir,
                                          "--max-new-tokens", "2"], ["a_dir"]),
    # kala data
    "data-generate-out-is-dir": (lambda f: ["data", "generate", "--out", f.a_dir, "--count", "5"], ["a_dir"]),
    "data-generate-out-missing-folder": (lambda f: ["data", "generate", "--out", f.root / "no" / "x.jsonl", "--count", "5"], ["no"]),
    "data-validate-missing": (lambda f: ["data", "validate", f.root / "nope.jsonl"], ["nope.jsonl"]),
    "data-validate-is-dir": (lambda f: ["data", "validate", f.a_dir], ["a_dir"]),
    "data-import-out-is-dir": (lambda f: ["data", "import", f.data, "--format", "kala", "--out", f.a_dir], ["a_dir"]),
    "data-import-missing": (lambda f: ["data", "import", f.root / "nope.jsonl", "--format", "kala", "--out", f.root / "o.jsonl"], ["nope.jsonl"]),
    "data-import-garbage": (lambda f: ["data", "import", f.garbage_data, "--format", "hh-rlhf", "--out", f.root / "o2.jsonl"], ["garbage"]),
    "data-stats-garbage": (lambda f: ["data", "stats", f.garbage_data], ["garbage.jsonl"]),
    "data-stats-tokenizer-missing": (lambda f: ["data", "stats", f.data, "--tokenizer", f.root / "nope"], ["nope"]),
    "data-stats-tokenizer-is-file": (lambda f: ["data", "stats", f.data, "--tokenizer", f.a_file], ["a_file"]),
    "data-stats-tokenizer-garbage": (lambda f: ["data", "stats", f.data, "--tokenizer", f.garbage_data.parent / "tokbad"], ["tokbad"]),
    "data-cai-model-missing": (lambda f: ["data", "cai", "--model", f.root / "nope", "--out", f.root / "c.jsonl"], ["nope"]),
    "data-cai-truncated-weights": (lambda f: ["data", "cai", "--model", f.truncated, "--out", f.root / "c.jsonl", "--count", "1"], ["model.safetensors"]),
    "data-cai-mistyped-config": (lambda f: ["data", "cai", "--model", f.mistyped, "--out", f.root / "c.jsonl", "--count", "1"], ["hidden_size"]),
    "data-cai-corrupt-config": (lambda f: ["data", "cai", "--model", f.corrupt_cfg, "--out", f.root / "c.jsonl", "--count", "1"], ["config.json"]),
    "data-cai-out-is-dir": (lambda f: ["data", "cai", "--model", f.good, "--out", f.a_dir, "--count", "1"], ["a_dir"]),
    # kala doctor
    "doctor-base-missing": (lambda f: ["doctor", "--base", f.root / "nope"], ["nope"]),
    "doctor-corrupt-config": (lambda f: ["doctor", "--base", f.corrupt_cfg], ["config.json"]),
    "doctor-mistyped-config": (lambda f: ["doctor", "--base", f.mistyped], ["hidden_size"]),
    "doctor-config-is-list": (lambda f: ["doctor", "--base", f.root / "listcfg"], ["config.json"]),
    # kala demo
    "demo-dir-is-file": (lambda f: ["demo", "--dir", f.a_file, "--count", "20", "--steps", "1"], ["a_file"]),
}
if NO_CUDA:
    CASES.update({
        "train-device-cuda": (lambda f: ["train", "--data", f.data, "--run-dir", f.root / "rc", "--device", "cuda", *T], ["cuda"]),
        "chat-device-cuda": (lambda f: ["chat", "--model", f.good, "--prompt", "hi", "--device", "cuda"], ["cuda"]),
        "eval-device-cuda": (lambda f: ["eval", "--model", f.good, "--suite", f.suite, "--device", "cuda"], ["cuda"]),
        "demo-device-cuda": (lambda f: ["demo", "--dir", f.root / "democ", "--count", "20", "--steps", "1", "--device", "cuda"], ["cuda"]),
    })


@pytest.fixture(scope="module")
def fx_extra(fx):
    (fx.root / "tokbad").mkdir()
    (fx.root / "tokbad" / "tokenizer.json").write_bytes(b"\xff\x00 not a tokenizer")
    (fx.root / "listcfg").mkdir()
    (fx.root / "listcfg" / "config.json").write_text("[1, 2, 3]")
    return fx


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clear_line(name, fx_extra):
    build, words = CASES[name]
    code, out, err, escaped = run_cli(build(fx_extra))
    assert escaped is None, f"{name}: {type(escaped).__name__} escaped main: {escaped}"
    assert "Traceback" not in out + err, err[-2000:]
    assert code == 2, (code, out[-500:], err[-1500:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no message on stderr"
    message = lines[-1]
    assert "error" in message or "usage" in err, message
    assert len(message) < 600, message
    for w in words:
        assert w in message, (w, message)


# ------------------------------------------------------------------ the boundary itself


def test_a_bug_prints_its_traceback_and_says_it_is_a_bug(monkeypatch, tmp_path, capsys):
    from kala_engine.cli import data as data_cli
    from kala_engine.cli import main as cli

    def broken(args):
        return 1 // 0

    monkeypatch.setattr(data_cli, "cmd_validate", broken)
    assert cli.main(["data", "validate", str(tmp_path / "x.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert "this is a bug in KALA Studio" in err.splitlines()[-1] and "report" in err.splitlines()[-1]


def test_a_bug_inside_training_is_reported_as_a_bug(monkeypatch, fx, capsys):
    from kala_engine.cli import main as cli
    from kala_engine.train import trainer as training

    def broken(cfg, emit, control=None):
        raise KeyError("internal")

    monkeypatch.setattr(training, "train", broken)
    assert cli.main(["train", "--data", str(fx.data), "--run-dir", str(fx.root / "bug-run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "this is a bug in KALA Studio" in err


def test_a_bug_inside_alignment_is_reported_as_a_bug(monkeypatch, fx, capsys):
    """kala align reports a bug as train and distill do (one printer): traceback, then the report line."""
    from kala_engine.cli import main as cli
    from kala_engine.train import align as align_mod

    def broken(cfg, emit, control=None):
        raise KeyError("internal")

    monkeypatch.setattr(align_mod, "align", broken)
    assert cli.main(["align", "--base", str(fx.root), "--data", str(fx.data),
                     "--run-dir", str(fx.root / "bug-align")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert err.splitlines()[-1].startswith("kala align: ") and "this is a bug in KALA Studio" in err.splitlines()[-1]


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(monkeypatch, tmp_path):
    import errno

    from kala_engine.data import io as data_io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_io.os, "fsync", full)
    code, out, err, escaped = run_cli(["data", "generate", "--out", tmp_path / "d.jsonl", "--count", "30"])
    assert escaped is None and code == 2
    assert "the disk is full" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_out_of_memory_is_one_line(monkeypatch, tmp_path):
    from kala_engine.data import generate

    def oom(*a, **k):
        raise MemoryError()
        yield  # pragma: no cover

    monkeypatch.setattr(generate, "iter_dataset", oom)
    code, out, err, escaped = run_cli(["data", "generate", "--out", tmp_path / "d.jsonl", "--count", "30"])
    assert escaped is None and code == 2 and "out of memory" in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ chat keeps going


def test_chat_survives_a_stdin_line_that_is_not_utf8(fx):
    code, out, err, escaped = run_cli(["chat", "--model", fx.good, "--max-new-tokens", "3"],
                                      stdin=b"caf\xe9 \xff\xfe\nHello there\n")
    assert escaped is None and code == 0, err
    assert "not valid UTF-8" in err and "Traceback" not in err
    assert out.count("[stop]") == 2  # the bad line got a reply (with U+FFFD), and so did the next one


# ------------------------------------------------------------------ eval checks everything first


class CountingBackend:
    def __init__(self):
        from kala_engine.evaluate.backend import EvalSample

        self.name, self.law_names, self.calls = "fake", ["L0", "L1", "L2", "L3", "L4"], 0
        self.sample = EvalSample(prompt_scores=(0.9,) * 5)

    def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
        self.calls += 1
        return self.sample


@pytest.fixture
def counting(monkeypatch):
    from kala_engine.cli import eval as cli_eval

    made = []

    def make(model_dir, device):
        made.append(CountingBackend())
        return made[-1]

    monkeypatch.setattr(cli_eval, "make_backend", make)
    return made


def _suite(path, prompts, prefix=b""):
    path.write_bytes(prefix + b"\n".join(json.dumps({"prompt": p, "label": "benign"}).encode() for p in prompts) + b"\n")
    return path


def test_eval_checks_out_before_the_first_prompt(counting, tmp_path, fx):
    suite = _suite(tmp_path / "s.jsonl", ["a", "b", "c"])
    code, out, err, escaped = run_cli(["eval", "--model", tmp_path / "m", "--suite", suite, "--out", fx.a_file])
    assert escaped is None and code == 2 and "--out" in err
    assert sum(b.calls for b in counting) == 0


def test_eval_accepts_a_suite_with_a_bom_like_data_validate(counting, tmp_path):
    suite = _suite(tmp_path / "s.jsonl", ["hello", "how are you"], prefix=b"\xef\xbb\xbf")
    code, out, err, escaped = run_cli(["eval", "--model", tmp_path / "m", "--suite", suite])
    assert escaped is None and code == 0, err
    assert counting[0].calls == 2


def test_eval_refuses_invalid_text_in_a_suite_naming_the_line(counting, tmp_path):
    suite = tmp_path / "s.jsonl"
    suite.write_bytes(b'{"prompt": "fine", "label": "benign"}\n'
                      b'{"prompt": "lone \\ud800 surrogate", "label": "benign"}\n'
                      b'{"prompt": "caf\xe9", "label": "benign"}\n')
    code, out, err, escaped = run_cli(["eval", "--model", tmp_path / "m", "--suite", suite])
    assert escaped is None and code == 2
    assert f"{suite}:2: field 'prompt' holds an invalid character" in err
    assert f"{suite}:3: not UTF-8 text" in err
    assert "nothing was evaluated" in err.splitlines()[-1]
    assert sum(b.calls for b in counting) == 0


def test_eval_finds_an_overlong_prompt_before_evaluating_any(monkeypatch, fx, tmp_path):
    from kala_engine.generate import generation

    calls = []
    real = generation.generate_with_ethics
    monkeypatch.setattr(generation, "generate_with_ethics", lambda *a, **k: calls.append(1) or real(*a, **k))
    suite = _suite(tmp_path / "s.jsonl", ["hello", "how are you", "very long " * 80])
    code, out, err, escaped = run_cli(["eval", "--model", fx.good, "--suite", suite, "--batch-size", "1",
                                       "--max-new-tokens", "2"])
    assert escaped is None and code == 2, err
    assert f"{suite}:3: prompt 'line-3' is" in err and "holds 64" in err
    assert calls == []


def test_eval_checks_every_model_before_evaluating_the_first(monkeypatch, fx, tmp_path):
    from kala_engine.generate import generation

    calls = []
    real = generation.generate_with_ethics
    monkeypatch.setattr(generation, "generate_with_ethics", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, out, err, escaped = run_cli(["eval", "--model", fx.good, "--model", fx.truncated, "--suite", fx.suite,
                                       "--batch-size", "1", "--max-new-tokens", "2"])
    assert escaped is None and code == 2 and "model.safetensors" in err
    assert calls == []


# ------------------------------------------------------------------ data generate streams


def test_generate_refuses_a_count_the_disk_cannot_hold_with_an_estimate(monkeypatch, tmp_path):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**11, used=0, free=10**10))
    code, out, err, escaped = run_cli(["data", "generate", "--out", tmp_path / "d.jsonl", "--count", "2000000000"])
    assert escaped is None and code == 2
    line = err.strip().splitlines()[-1]
    assert "--count 2000000000 would write about 1." in line and "TB" in line and "10.0 GB free" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_generate_streams_to_disk_and_ctrl_c_leaves_nothing(monkeypatch, tmp_path):
    """--count 2000000000 on a machine that could hold it: writing starts at once (memory does not
    hold the records), and an interrupt removes the temporary file."""
    import shutil

    from kala_engine import doctor
    from kala_engine.data import generate

    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(total=10**16, used=0, free=10**16))
    monkeypatch.setattr(doctor, "_cpu_memory", lambda: (10**15, 10**15))
    real = generate.iter_dataset
    seen = {}

    def interrupted(count, seed, *a, **k):
        for i, r in enumerate(real(count, seed, *a, **k)):
            if i == 3000:
                seen["on_disk"] = sum(p.stat().st_size for p in tmp_path.iterdir())
                raise KeyboardInterrupt
            yield r

    monkeypatch.setattr(generate, "iter_dataset", interrupted)
    code, out, err, escaped = run_cli(["data", "generate", "--out", tmp_path / "d.jsonl", "--count", "2000000000"])
    assert escaped is None and code == 130
    assert seen["on_disk"] > 1_000_000  # ~3000 records were already in the temporary file
    assert list(tmp_path.iterdir()) == []


def test_real_process_argv_bytes_that_are_not_utf8(fx):
    """The same through a real process, where argv bytes arrive as surrogate escapes (the stdin
    path is the in-process test above: it reads the same binary buffer)."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = [sys.executable, "-m", "kala_engine.cli.main", "chat", "--model", str(fx.good), "--max-new-tokens", "2"]
    p = subprocess.run([*base, "--prompt", b"caf\xe9"], capture_output=True, env=env, timeout=120)
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    assert b"--prompt is not valid UTF-8 text (byte 0xE9 at position 3)" in p.stderr
