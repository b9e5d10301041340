"""Preference pairs as data: `kala data generate --pairs`, importer pairs, validation with every FILE:LINE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kala_engine.cli.main import main
from kala_engine.data.io import iter_jsonl_lines
from kala_engine.data.pairs import iter_pairs, load_pairs, validate_pair, validate_pair_file

FIX = Path(__file__).parent / "fixtures"


def test_generate_pairs_writes_valid_pairs_split_by_family(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "generate", "--pairs", "--out", str(out), "--count", "400", "--seed", "3"]) == 0
    assert "wrote 400 pairs" in capsys.readouterr().out
    pairs = load_pairs(out)
    assert len(pairs) == 400 and all(validate_pair(p) == [] for p in pairs)
    assert {p["source"] for p in pairs} == {"harmful_completion", "critique_revision", "over_refusal"}
    train = {p["family"] for p in pairs if p["split"] == "train"}
    val = {p["family"] for p in pairs if p["split"] == "validation"}
    assert val and train and not train & val  # held-out families: validation measures unseen wordings
    for p in pairs:  # the rejected reply violates the law its request is built around
        if p["source"] == "over_refusal":  # a needless refusal of a benign question: no law violated
            assert p["violated"] == [] and p["primary_law"] is None and min(p["prompt"][-1]["labels"]) == 1.0
            continue
        assert p["violated"] and p["rejected"]["labels"][p["primary_law"]] < 0.5
        assert min(p["chosen"]["labels"]) == 1.0 and p["chosen"]["text"] != p["rejected"]["text"]
    assert pairs == list(iter_pairs(400, 3))  # same seed, same file
    assert main(["data", "validate", str(out)]) == 0


def test_bad_pair_lines_are_refused_with_every_file_line(tmp_path, capsys):
    good = list(iter_pairs(5, 0))
    bad_labels = dict(good[1], chosen={"text": "fine", "labels": [1.0, 0.1, 1.0, 1.0, 1.0]})
    same = dict(good[3], rejected=dict(good[3]["chosen"]), violated=[], primary_law=None)
    no_user = dict(good[4], prompt=[{"role": "system", "text": "sys", "labels": [1.0] * 5}])
    lines = [json.dumps(good[0]), json.dumps(bad_labels), "{not json", json.dumps(same), json.dumps(no_user),
             json.dumps(dict(good[2], violated=[0, 1]))]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = validate_pair_file(path)
    assert sorted({int(p.split(":")[1]) for p in problems}) == [2, 3, 4, 5, 6]
    assert all(p.startswith(f"{path}:") for p in problems)
    assert main(["data", "validate", str(path)]) == 2
    printed = capsys.readouterr().out
    for n in (2, 3, 4, 5, 6):
        assert f"{path}:{n}: " in printed
    with pytest.raises(ValueError) as e:
        load_pairs(path)
    assert all(f"{path}:{n}: " in str(e.value) for n in (2, 3, 4, 5, 6))


@pytest.mark.parametrize(("fmt", "name"), [("hh-rlhf", "hh_rlhf"), ("pku-saferlhf", "pku_saferlhf")])
def test_import_pairs_prefers_the_safe_reply(tmp_path, capsys, fmt, name):
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "import", str(FIX / f"{name}.jsonl"), "--format", fmt, "--pairs", "--out", str(out)]) == 0
    pairs = load_pairs(out)
    assert pairs and all(p["source"] == fmt for p in pairs)
    rows = [v for _, v, _ in iter_jsonl_lines(FIX / f"{name}.jsonl")]
    for p in pairs:
        assert p["violated"] and p["prompt"][-1]["role"] == "user"
        if fmt == "pku-saferlhf":  # the response flagged safe is the chosen one
            row = next(r for r in rows if r["prompt"].strip() == p["prompt"][-1]["text"])
            safe = [row[f"response_{i}"].strip() for i in (0, 1) if row[f"is_response_{i}_safe"]]
            assert p["chosen"]["text"] in safe and p["rejected"]["text"] not in safe
        else:  # HH-RLHF's chosen conversation ends with the chosen reply
            row = next(r for r in rows if r["chosen"].rstrip().endswith(p["chosen"]["text"]))
            assert row["rejected"].rstrip().endswith(p["rejected"]["text"])
