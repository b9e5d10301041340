"""Import on the Data page: the format is detected (or the likely one named), bad input never
shows a traceback, and the data set shown before stays when a file cannot be imported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kala_app.error_dialog import ErrorDialog
from kala_app.pages.data import DataPage
from kala_engine.data.detect import TITLES
from tests.engine.data.test_detect import FILES, as_csv

FORMATS = ["auto", "kala", "hh-rlhf", "pku-saferlhf", "beavertails"]


@pytest.fixture
def page(make_page):
    return make_page(DataPage)


def input_files(tmp_path: Path, kala: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (file, the format it is; None: none)."""
    other = tmp_path / "notes.csv"
    other.write_text("text,label\nhello,1\n", encoding="utf-8")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\xff\x10 not a data set")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    array = tmp_path / "hh.json"
    array.write_text(json.dumps([json.loads(x) for x in FILES["hh-rlhf"].read_text().splitlines() if x.strip()]))
    return {
        "kala": (kala, "kala"),
        "hh jsonl": (FILES["hh-rlhf"], "hh-rlhf"),
        "pku jsonl": (FILES["pku-saferlhf"], "pku-saferlhf"),
        "beavertails jsonl": (FILES["beavertails"], "beavertails"),
        "beavertails csv": (as_csv("beavertails", tmp_path / "beavertails.csv"), "beavertails"),
        "hh json array": (array, "hh-rlhf"),
        "other csv": (other, None),
        "garbage": (garbage, None),
        "empty": (empty, None),
    }


def _dialogs(page) -> list[ErrorDialog]:
    return [d for d in page.findChildren(ErrorDialog) if d.isVisible()]


def test_every_file_and_format_imports_or_says_in_one_line_what_to_choose(qtbot, page, ctx, tmp_path):
    with qtbot.waitSignal(page.dataset_ready, timeout=30000) as blocker:
        page.generate(count=30, seed=0)
    kala = Path(blocker.args[0])
    shown = (page.path, page.model.rowCount(), page.summary.text())
    tracebacks = failures = 0
    for name, (path, truth) in input_files(tmp_path, kala).items():
        for fmt in FORMATS:
            with qtbot.waitSignal(ctx.worker.finished, timeout=30000):
                assert page.open_file(path, fmt)
            dialogs = _dialogs(page)
            tracebacks += sum(1 for d in dialogs if d.traceback or d.details_button.isVisible())
            ok = truth is not None and fmt in ("auto", truth)
            where = f"{name} as {fmt}"
            if ok:
                assert not dialogs, f"{where}: {[d.message for d in dialogs]}"
                assert page.model.rowCount() > 0 and page.errors == [], where
                shown = (page.path, page.model.rowCount(), page.summary.text())
                continue
            failures += 1
            assert len(dialogs) == 1, where
            msg = dialogs[0].message
            assert "Traceback" not in msg and "Error:" not in msg, f"{where}: {msg}"
            if truth is not None:  # the likely format is named, with what to choose
                assert f"looks like {TITLES[truth]}" in msg and f"choose “{TITLES[truth]}” under Format" in msg, f"{where}: {msg}"
            else:
                assert msg.startswith(f"Cannot import {path.name}: it is "), f"{where}: {msg}"
                assert any(w in msg for w in ("matches none of the formats", "neither JSON nor CSV", "an empty file"))
            # the data set shown before stays: no empty preview
            assert (page.path, page.model.rowCount(), page.summary.text()) == shown, where
            assert page.progress.text() == "failed; the data set below is kept"
            for d in dialogs:
                d.close()
    assert (failures, tracebacks) == (33, 0)  # 45 cases, 12 of them right


def test_auto_detect_is_the_default_and_names_the_imported_format(qtbot, page, ctx, tmp_path):
    assert page.chosen_format() == "auto" and page.format_combo.currentText() == "Auto-detect"
    csv_file = as_csv("pku-saferlhf", tmp_path / "pku export.csv")
    with qtbot.waitSignal(page.dataset_ready, timeout=30000) as blocker:
        page.open_file(csv_file, page.chosen_format())
    assert Path(blocker.args[0]).name == "pku export-pku-saferlhf.jsonl"
    assert page.model.rowCount() > 0
