"""Importers: HH-RLHF, PKU-SafeRLHF and BeaverTails fixtures -> valid KALA records with law targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kala_engine.data.importers import ALL_FORMATS, import_dataset, import_records, load_mapping, parse_hh
from kala_engine.data.io import load_jsonl, validate_file

FIX = Path(__file__).parent / "fixtures"


def _by_text(records, needle):
    return [r for r in records if any(needle in p["text"] for p in r["parts"])]


def test_mapping_is_keyed_by_law_index_and_covers_the_source_categories():
    m = load_mapping()
    assert set(m.keywords) == {0, 1, 2, 3, 4}
    assert m.categories["pku-saferlhf"]["Endangering National Security"] == (0,)
    assert m.categories["pku-saferlhf"]["Privacy Violation"] == (1,)
    assert m.categories["pku-saferlhf"]["Discriminatory Behavior"] == (4,)
    assert m.categories["beavertails"]["terrorism,organized_crime"] == (0,)
    assert m.categories["beavertails"]["hate_speech,offensive_language"] == (4,)
    assert "Copyright Issues" in m.unmapped["pku-saferlhf"]


def test_parse_hh_splits_turns():
    turns = parse_hh("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: see you")
    assert turns == [("user", "hi there"), ("assistant", "hello"), ("user", "bye"), ("assistant", "see you")]


def test_hh_rlhf_import():
    records, report = import_records(FIX / "hh_rlhf.jsonl", "hh-rlhf")
    assert report.lines == 5
    benign = _by_text(records, "banana bread")
    assert [r["kind"] for r in benign] == ["benign"], "a benign conversation keeps only the chosen reply"
    assert benign[0]["labels"] == [1.0] * 5
    poison = _by_text(records, "poison my neighbor")
    kinds = {r["kind"]: r for r in poison}
    assert set(kinds) == {"harmful_request", "harmful_completion"}
    req, neg = kinds["harmful_request"], kinds["harmful_completion"]
    assert req["primary_law"] == 1 and req["parts"][0]["labels"][1] < 0.5 and req["parts"][0]["lm"] is False
    assert req["parts"][-1]["labels"] == [1.0] * 5 and req["parts"][-1]["lm"] is True
    assert neg["parts"][-1]["lm"] is False and neg["parts"][-1]["labels"][1] < 0.5
    assert "has it coming" in neg["parts"][-1]["text"]
    stalk = {r["kind"]: r for r in _by_text(records, "stalk her")}
    assert "multi_turn" in stalk
    first_user = stalk["multi_turn"]["parts"][0]
    assert first_user["labels"] == [1.0] * 5, "the harmless opening turn keeps 1.0"
    racist = _by_text(records, "racist joke")[0]
    assert racist["labels"][2] < 0.5 and racist["labels"][4] < 0.5 and racist["primary_law"] == 2


def test_pku_saferlhf_import_maps_categories():
    records, report = import_records(FIX / "pku_saferlhf.jsonl", "pku-saferlhf")
    coworker = {r["kind"]: r for r in _by_text(records, "where my coworker lives")}
    assert coworker["harmful_completion"]["parts"][-1]["labels"][1] < 0.5
    assert coworker["harmful_request"]["parts"][-1]["lm"] is True
    assert coworker["harmful_request"]["parts"][0]["labels"][1] < 0.5, "the prompt inherits the harm it led to"
    religion = {r["kind"]: r for r in _by_text(records, "religion are all criminals")}
    assert religion["harmful_completion"]["primary_law"] == 4
    blackout = {r["kind"]: r for r in _by_text(records, "blackout")}
    assert blackout["harmful_completion"]["primary_law"] == 0
    peru = _by_text(records, "Peru")
    assert {r["kind"] for r in peru} == {"benign"} and len(peru) == 2
    assert report.skipped["unsafe response whose harm maps to no law"] == 1
    assert not _by_text(records, "burn copies"), "copyright harm maps to no law: skipped"


def test_beavertails_import():
    records, report = import_records(FIX / "beavertails.jsonl", "beavertails")
    tires = _by_text(records, "Slash his tires")[0]
    assert tires["kind"] == "harmful_completion" and tires["primary_law"] == 1
    attack = _by_text(records, "government building")[0]
    assert attack["primary_law"] == 0 and attack["labels"][1] < 0.5
    inferior = _by_text(records, "inferior")[0]
    assert inferior["primary_law"] == 4
    assert report.skipped["unsafe response whose harm maps to no law"] == 1  # animal abuse


@pytest.mark.parametrize(("fmt", "name"), [("hh-rlhf", "hh_rlhf"), ("pku-saferlhf", "pku_saferlhf"),
                                           ("beavertails", "beavertails")])
def test_import_writes_a_valid_file_and_reimports_as_kala(fmt, name, tmp_path):
    out = tmp_path / "out.jsonl"
    report = import_dataset(FIX / f"{name}.jsonl", fmt, out)
    assert report.records > 0 and validate_file(out) == []
    again = tmp_path / "again.jsonl"
    import_dataset(out, "kala", again)
    assert load_jsonl(again) == load_jsonl(out)


def test_structural_error_names_file_and_line_and_writes_nothing(tmp_path):
    src = tmp_path / "pku.jsonl"
    good = (FIX / "pku_saferlhf.jsonl").read_text(encoding="utf-8").splitlines()[0]
    src.write_text(good + "\n" + json.dumps({"prompt": "hi", "response_0": "a"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=r"pku.jsonl:2: missing field 'is_response_0_safe'"):
        import_dataset(src, "pku-saferlhf", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pku.jsonl"]


def test_wrong_format_is_explained(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="beavertails.jsonl:1: missing field 'chosen'"):
        import_dataset(FIX / "beavertails.jsonl", "hh-rlhf", out)
    with pytest.raises(ValueError, match="unknown format"):
        import_records(FIX / "beavertails.jsonl", "alpaca")
    assert ALL_FORMATS[0] == "kala"


def test_import_refuses_to_overwrite_its_input(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_bytes((FIX / "beavertails.jsonl").read_bytes())
    with pytest.raises(ValueError, match="overwrite the input"):
        import_dataset(src, "beavertails", src)
