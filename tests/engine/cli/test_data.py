"""`kala data ...` through kala_engine.cli.main: generate, validate (FILE:LINE), import, stats."""

from __future__ import annotations

import json
from pathlib import Path

from kala_engine.cli.main import main
from kala_engine.data.generate import generate_dataset
from kala_engine.data.io import load_jsonl, write_jsonl

FIX = Path(__file__).parents[1] / "data" / "fixtures"


def test_generate_prints_summary_and_time(tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    assert main(["data", "generate", "--out", str(out), "--count", "300", "--seed", "4"]) == 0
    text = capsys.readouterr().out
    assert "harmful_request" in text and "unique prompts" in text
    assert "wrote 300 records" in text and " s" in text
    assert load_jsonl(out) == generate_dataset(300, 4)


def test_generate_bad_count_exits_2(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["data", "generate", "--out", str(tmp_path / "d.jsonl"), "--count", "0"])
    assert e.value.code == 2
    assert not (tmp_path / "d.jsonl").exists()


def test_generate_into_missing_folder_is_a_clean_error(tmp_path, capsys):
    assert main(["data", "generate", "--out", str(tmp_path / "nope" / "d.jsonl"), "--count", "5"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_validate_ok(tmp_path, capsys):
    path = tmp_path / "ok.jsonl"
    write_jsonl(path, generate_dataset(20, 0))
    assert main(["data", "validate", str(path)]) == 0
    assert "20 records, all valid" in capsys.readouterr().out


def test_validate_reports_every_bad_line(tmp_path, capsys):
    good = generate_dataset(3, 0)
    rec = good[0]

    def variant(**changes):
        r = json.loads(json.dumps(rec))
        r["id"] = f"x{len(changes)}-{sorted(changes)}"
        for k, v in changes.items():
            if k == "part_text":
                r["parts"][0]["text"] = v
            elif v is None and k == "drop":
                pass
            else:
                r[k] = v
        return json.dumps(r).encode()

    missing = json.loads(json.dumps(rec))
    del missing["family"]
    missing["id"] = "missing"
    lines = [
        json.dumps(good[1]).encode(),  # 1 ok
        b'{"id": "broken", ',  # 2 malformed JSON
        json.dumps(missing).encode(),  # 3 missing field
        variant(primary_law=7),  # 4 law out of range
        variant(labels=[1.0, 1.0, 1.5, 1.0, 1.0]),  # 5 label outside [0, 1]
        variant(part_text="   "),  # 6 empty text
        b'{"id": "caf\xe9"}',  # 7 not UTF-8
        json.dumps(good[1]).encode(),  # 8 duplicate id
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["data", "validate", str(path)]) == 2
    out = capsys.readouterr().out
    expected = {
        2: "malformed JSON",
        3: "missing field 'family'",
        4: "out of range",
        5: "outside [0, 1]",
        6: "text is empty",
        7: "not valid UTF-8",
        8: "duplicate id",
    }
    for line, reason in expected.items():
        assert any(o.startswith(f"{path}:{line}: ") and reason in o for o in out.splitlines()), (line, out)
    assert not any(o.startswith(f"{path}:1: ") for o in out.splitlines())


def test_validate_missing_file_exits_2(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_import_cli(tmp_path, capsys):
    out = tmp_path / "hh.jsonl"
    assert main(["data", "import", str(FIX / "hh_rlhf.jsonl"), "--format", "hh-rlhf", "--out", str(out)]) == 0
    assert "records" in capsys.readouterr().out
    assert main(["data", "validate", str(out)]) == 0


def test_import_cli_error_leaves_no_output(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    code = main(["data", "import", str(FIX / "hh_rlhf.jsonl"), "--format", "beavertails", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "hh_rlhf.jsonl:1: missing field 'prompt'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_stats_table_and_json(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, generate_dataset(200, 2))
    assert main(["data", "stats", str(path)]) == 0
    assert "benign + alarming" in capsys.readouterr().out
    assert main(["data", "stats", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["records"] == 200 and len(s["law_share_of_harmful"]) == 5
    assert sum(s["by_kind"].values()) == 200
    assert sum(b["count"] for b in s["length_histogram"]) == 200


def test_data_without_action_prints_help(capsys):
    assert main(["data"]) == 2
    assert "generate" in capsys.readouterr().out


def test_stats_in_tokens_with_a_tokenizer(tmp_path, capsys, tokenizer_dir):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, generate_dataset(50, 2))
    assert main(["data", "stats", str(path), "--json", "--tokenizer", str(tokenizer_dir)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["length_unit"] == "tokens"
    assert main(["data", "stats", str(path), "--tokenizer", str(tmp_path / "none")]) == 2
