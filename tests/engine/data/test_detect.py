"""Format detection and CSV / JSON-array containers for the importers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kala_engine.data.detect import detect_format, iter_rows
from kala_engine.data.importers import import_records

FIX = Path(__file__).parent / "fixtures"
FILES = {"hh-rlhf": FIX / "hh_rlhf.jsonl", "pku-saferlhf": FIX / "pku_saferlhf.jsonl",
         "beavertails": FIX / "beavertails.jsonl"}


def rows(fmt):
    return [json.loads(line) for line in FILES[fmt].read_text(encoding="utf-8").splitlines() if line.strip()]


def as_csv(fmt: str, out: Path, python_dicts: bool = False) -> Path:
    """The fixture as a spreadsheet/pandas export: one column per field, objects as JSON or Python."""
    data = rows(fmt)
    cols = list(dict.fromkeys(k for r in data for k in r))
    with out.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in data:
            w.writerow({k: (repr(v) if python_dicts else json.dumps(v)) if isinstance(v, dict)
                        else ("True" if v is True else "False" if v is False else v) for k, v in r.items()})
    return out


@pytest.mark.parametrize("fmt", list(FILES))
def test_each_format_is_detected_in_every_container(fmt, tmp_path):
    d = detect_format(FILES[fmt])
    assert (d.fmt, d.container) == (fmt, "jsonl")
    arr = tmp_path / "x.json"
    arr.write_text(json.dumps(rows(fmt), indent=2), encoding="utf-8")
    assert (detect_format(arr).fmt, detect_format(arr).container) == (fmt, "json")
    c = as_csv(fmt, tmp_path / "x.csv")
    assert (detect_format(c).fmt, detect_format(c).container) == (fmt, "csv")
    # the same records whatever the container
    want, _ = import_records(FILES[fmt], fmt)
    for path in (arr, c, as_csv(fmt, tmp_path / "py.csv", python_dicts=True)):
        got, _ = import_records(path, fmt)
        assert [(r["kind"], r["labels"], [p["text"] for p in r["parts"]]) for r in got] == \
               [(r["kind"], r["labels"], [p["text"] for p in r["parts"]]) for r in want], path.name
    assert import_records(c, "auto")[1].fmt == fmt


def test_a_kala_file_and_files_of_no_format(tmp_path):
    kala = tmp_path / "k.jsonl"
    kala.write_text(json.dumps({"id": "1", "kind": "benign", "parts": []}) + "\n")
    assert detect_format(kala).fmt == "kala"
    other = tmp_path / "o.csv"
    other.write_text("text,label\nhello,1\n")
    d = detect_format(other)
    assert (d.fmt, d.container, d.fields) == (None, "csv", ("text", "label"))
    assert "CSV with the columns text, label" in d.describe()
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01\x02garbage")
    assert detect_format(binary).fmt is None
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    assert detect_format(empty).container == "empty"


def test_a_wrong_format_names_the_right_one(tmp_path):
    c = as_csv("beavertails", tmp_path / "bt.csv")
    with pytest.raises(ValueError, match=r"^bt.csv looks like BeaverTails \(CSV\), not HH-RLHF: choose the format beavertails"):
        import_records(c, "hh-rlhf")
    with pytest.raises(ValueError, match=r"looks like HH-RLHF \(JSON lines\), not KALA: choose the format hh-rlhf"):
        import_records(FILES["hh-rlhf"], "kala")
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,response,is_safe\nhi,there,maybe\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: column 'is_safe': 'maybe' is not true or false"):
        import_records(bad, "beavertails")
    assert list(iter_rows(bad)) == [(2, None, "column 'is_safe': 'maybe' is not true or false")]


def test_cli_import_detects_the_format_and_names_the_right_one(tmp_path, capsys):
    from kala_engine.cli import main as cli

    out = tmp_path / "x.jsonl"
    assert cli.main(["data", "import", str(FILES["pku-saferlhf"]), "--out", str(out)]) == 0
    assert "(pku-saferlhf)" in capsys.readouterr().out and out.is_file()
    assert cli.main(["data", "import", str(FILES["hh-rlhf"]), "--format", "beavertails", "--out", str(out)]) == 2
    assert "looks like HH-RLHF (JSON lines), not BeaverTails: choose the format hh-rlhf" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_a_compressed_file_past_a_few_kb_is_detected_decompressed(suffix, tmp_path):
    """The hub serves HH-RLHF as .jsonl.gz and BeaverTails as .jsonl.xz: their compressed bytes
    were sniffed as text and looked like CSV once the archive passed a few KB (import failed)."""
    import gzip
    import lzma
    import random

    rnd = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    rows = [{"chosen": f"\n\nHuman: {' '.join(rnd.choices(words, k=12))}?\n\nAssistant: {' '.join(rnd.choices(words, k=24))}.",
             "rejected": "\n\nHuman: hi?\n\nAssistant: no."} for _ in range(1500)]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path = tmp_path / f"train.jsonl{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".gz" else lzma.compress(raw))
    assert path.stat().st_size > 20_000
    d = detect_format(path)
    assert (d.fmt, d.container) == ("hh-rlhf", "jsonl")
    records, report = import_records(path, "hh-rlhf")
    assert report.lines == 1500 and records
