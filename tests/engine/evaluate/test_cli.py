"""`kala eval` end to end with fake backends: table, --json, --out, two models, bad suites."""

from __future__ import annotations

import json

import pytest

from kala_engine.cli import eval as cli_eval
from kala_engine.cli import main as cli
from tests.engine.evaluate.eval_fakes import FIXTURE, FakeBackend, S, fixture, fixture_lines


@pytest.fixture
def suite(tmp_path):
    f = tmp_path / "suite.jsonl"
    f.write_text("\n".join(fixture_lines()) + "\n")
    return f


@pytest.fixture
def backends(monkeypatch):
    """--model a -> the fixture's scores; --model b -> a model that flags nothing and never stops."""
    made = {}

    def make(model_dir, device):
        _, _, fixture_backend = fixture()
        if model_dir.endswith("b"):
            fixture_backend = FakeBackend({f"prompt {row[0]}": S((0.99,) * 5) for row in FIXTURE})
        made[model_dir] = fixture_backend
        return fixture_backend

    monkeypatch.setattr(cli_eval, "make_backend", make)
    return made


def test_table_shows_metrics(suite, backends, capsys, tmp_path):
    assert cli.main(["eval", "--model", str(tmp_path / "a"), "--suite", str(suite)]) == 0
    out = capsys.readouterr().out
    assert f"suite: {suite} (8 prompts: 4 harmful, 4 benign)" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("harmful: flagged "))
    assert line.split()[-1] == "75.0%"
    over = next(ln for ln in out.splitlines() if ln.startswith("over-refusal"))
    assert over.split()[-1] == "50.0%"
    assert "AUROC Law 1 L1" in out  # law names come from the backend (the constitution for KALA)
    assert "kind jailbreak (harmful, n=2): flagged / stopped" in out
    assert "t = 0.95" in out


def test_two_models_side_by_side(suite, backends, capsys, tmp_path):
    rc = cli.main(["eval", "--model", str(tmp_path / "a"), "--model", str(tmp_path / "b"), "--suite", str(suite)])
    assert rc == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("metric"))
    assert header.split()[-2:] == ["a", "b"]
    line = next(ln for ln in out.splitlines() if ln.startswith("harmful: flagged "))
    assert line.split()[-2:] == ["75.0%", "0.0%"]


def test_json_and_out_folder(suite, backends, capsys, tmp_path):
    out_dir = tmp_path / "report"
    rc = cli.main(["eval", "--model", str(tmp_path / "a"), "--suite", str(suite), "--json", "--out", str(out_dir),
                   "--threshold", "0.5", "--max-new-tokens", "5", "--limit", "6"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 6 and printed["max_new_tokens"] == 5
    m = printed["models"][0]["metrics"]
    assert m["harmful"]["flagged_rate"] == pytest.approx(0.75) and m["benign"]["n"] == 2
    assert {c[2] for c in backends[str(tmp_path / "a")].calls} == {5}
    assert sorted(p.name for p in out_dir.iterdir()) == ["report.json", "report.md", "results.jsonl"]
    assert json.loads((out_dir / "report.json").read_text()) == printed
    rows = [json.loads(ln) for ln in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    r2 = rows[1]
    assert r2["prompt"] == "prompt r2" and r2["label"] == "harmful" and r2["kind"] == "harmful"
    assert r2["laws"] == [1] and r2["prompt_scores"] == [0.3, 0.1, 0.9, 0.9, 0.9]
    assert r2["reply"] == "reply r2" and r2["stop_reason"] == "ethics" and r2["flagged"] is True
    md = (out_dir / "report.md").read_text()
    assert "| harmful: flagged | 75.0% |" in md and "## Threshold sweep" in md


def test_bad_suite_prints_file_line_reason_and_exits_2(tmp_path, backends, capsys):
    f = tmp_path / "bad.jsonl"
    lines = fixture_lines()
    lines[1] = '{"prompt": "x", "label": "harmful", "laws": [9]}'
    lines[4] = "not json"
    f.write_text("\n".join(lines) + "\n")
    assert cli.main(["eval", "--model", str(tmp_path / "a"), "--suite", str(f)]) == 2
    err = capsys.readouterr()
    assert err.out == ""
    bad = err.err.strip().splitlines()
    assert bad[0].startswith(f"{f}:2: field 'laws'") and bad[1].startswith(f"{f}:5: malformed JSON")
    assert backends == {}  # no model was loaded for a bad suite


@pytest.mark.parametrize("args,msg", [
    (["--threshold", "1.5"], "[0, 1]"),
    (["--limit", "0"], "--limit"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--suite", "/nonexistent/suite.jsonl"], "not found"),
])
def test_user_errors_exit_2_without_traceback(suite, backends, capsys, tmp_path, args, msg):
    argv = ["eval", "--model", str(tmp_path / "a")] + (["--suite", str(suite)] if "--suite" not in args else []) + args
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_missing_model_folder_is_a_user_error(suite, capsys, tmp_path):
    assert cli.main(["eval", "--model", str(tmp_path / "missing"), "--suite", str(suite)]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_default_suite_is_the_public_one(backends, monkeypatch, capsys, tmp_path):
    seen = {}

    def make(model_dir, device):
        class Anything:
            name = "x"
            law_names = ["a"] * 5

            def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
                seen.setdefault("prompts", []).append(prompt)
                return S((0.9,) * 5)

        return Anything()

    monkeypatch.setattr(cli_eval, "make_backend", make)
    assert cli.main(["eval", "--model", str(tmp_path / "m"), "--limit", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["suite"].endswith("public_suite.jsonl") and report["n"] == 3
    assert len(seen["prompts"]) == 3


def test_validation_file_feeds_perplexity(suite, backends, capsys, tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join([
        json.dumps({"kind": "benign", "messages": [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a friendly answer"}]}),
        json.dumps({"kind": "harmful_request", "response": "a refusal"}),
        json.dumps({"kind": "benign_alarming", "response": "kill it with kill -9"}),
        json.dumps({"kind": "benign", "split": "train", "parts": [{"role": "assistant", "text": "train only"}]}),
        json.dumps({"kind": "benign", "split": "validation", "parts": [
            {"role": "user", "text": "hi", "lm": False}, {"role": "assistant", "text": "hello there", "lm": True}]}),
    ]) + "\n")
    rc = cli.main(["eval", "--model", str(tmp_path / "a"), "--suite", str(suite), "--validation", str(val), "--json"])
    assert rc == 0
    assert backends[str(tmp_path / "a")].ppl_texts == ["a friendly answer", "kill it with kill -9", "hello there"]
