"""Data page: Generate fills the table and chart; a bad file lists problems by line and shows the error dialog."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from kala_app.error_dialog import ErrorDialog
from kala_app.pages.data import DataPage


@pytest.fixture
def page(make_page):
    return make_page(DataPage)


def test_generate_fills_preview_table_and_coverage(qtbot, page, ctx):
    page.count_spin.setValue(300)
    page.seed_spin.setValue(3)
    with qtbot.waitSignal(page.dataset_ready, timeout=30000) as blocker:
        qtbot.mouseClick(page.generate_button, Qt.MouseButton.LeftButton)
    path = blocker.args[0]
    assert path.endswith(".jsonl") and str(ctx.datasets_dir) in path
    n_lines = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
    assert page.model.rowCount() == n_lines == 300
    # the table shows real record text: the kind column and a user message
    kinds = {page.model.index(r, 1).data() for r in range(page.model.rowCount())}
    assert kinds <= set(page.kinds) and len(kinds) >= 3
    assert any(page.model.index(r, 4).data() for r in range(20))
    # the coverage chart counts every record once per violated law (or once as "none")
    total = sum(sum(row) for row in page.chart.counts)
    assert total >= 300
    assert page.errors == []
    assert "300 valid records" in page.summary.text()
    # filtering by kind
    page.kind_filter.setCurrentText("benign")
    assert 0 < page.model.rowCount() < 300
    assert {page.model.index(r, 1).data() for r in range(page.model.rowCount())} == {"benign"}


def test_generate_only_chosen_kinds(qtbot, page):
    for k, cb in page.kind_checks.items():
        cb.setChecked(k in ("benign", "harmful_request"))
    with qtbot.waitSignal(page.dataset_ready, timeout=30000):
        page.generate(count=200, seed=1)
    assert {r["kind"] for r in page.model.records} == {"benign", "harmful_request"}


def test_bad_data_file_lists_problems_by_line_and_shows_error_dialog(qtbot, page, ctx, tmp_path):
    good = None
    with qtbot.waitSignal(page.dataset_ready, timeout=30000) as blocker:
        page.generate(count=20, seed=0)
    good = [line + "\n" for line in Path(blocker.args[0]).read_text().splitlines() if line.strip()]
    bad = tmp_path / "bad.jsonl"
    rec = json.loads(good[1])
    rec["primary_law"] = 9
    bad.write_text(good[0] + "{not json\n" + json.dumps(rec) + "\n" + good[2], encoding="utf-8")
    with qtbot.waitSignal(ctx.worker.finished, timeout=10000):
        page.open_file(bad)
    lines = [page.problems.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(page.problems.rowCount())]
    assert lines == [2, 3]
    assert "JSON" in page.problems.item(0, 1).text()
    assert "primary_law" in page.problems.item(1, 1).text()
    assert page.model.rowCount() == 2  # the valid lines are still shown
    dlg = page.findChildren(ErrorDialog)[-1]
    assert "2 problem(s)" in dlg.message and "line 2" in dlg.message
    assert "line 3: " in dlg.traceback


def test_missing_file_shows_error_dialog(qtbot, page, ctx, tmp_path):
    with qtbot.waitSignal(ctx.worker.finished, timeout=10000):
        page.open_file(tmp_path / "nope.jsonl")
    dlg = page.findChildren(ErrorDialog)[-1]
    assert "no such file" in dlg.message


def test_preview_table_stays_smooth_with_100k_rows(qtbot, page):
    base = {"kind": "benign", "split": "train", "primary_law": None, "labels": [1.0] * 5,
            "parts": [{"role": "user", "text": "how do I kill a stuck process?", "labels": [1.0] * 5, "lm": False},
                      {"role": "assistant", "text": "Use kill -TERM on its pid.", "labels": [1.0] * 5, "lm": True}]}
    records = [dict(base, id=str(i)) for i in range(100_000)]
    t0 = time.perf_counter()
    page.model.set_records(records)
    qtbot.wait(1)
    load_s = time.perf_counter() - t0
    bar = page.table.verticalScrollBar()
    times = []
    for i in range(40):
        bar.setValue(int(bar.maximum() * i / 39))
        t = time.perf_counter()
        page.table.viewport().repaint()
        times.append(time.perf_counter() - t)
    times_ms = np.array(times) * 1e3
    print(f"100k rows: load {load_s * 1e3:.0f} ms; scroll+repaint p50 {np.median(times_ms):.1f} ms, "
          f"max {times_ms.max():.1f} ms")
    assert load_s < 1.0
    assert np.percentile(times_ms, 95) < 50
    assert page.model.index(page.model.rowCount() - 1, 0).data() == "100000"


def test_the_search_box_filters_as_you_type_after_a_pause(qtbot, ctx):
    from kala_app.pages.data import SEARCH_DEBOUNCE_MS, DataPage

    page = DataPage(ctx)
    qtbot.addWidget(page)
    recs = [{"kind": "benign", "split": "train", "parts": [{"role": "user", "text": t}]}
            for t in ("rivers bend", "how to bake bread", "bread and rivers")]
    page.model.set_records(recs)
    assert "as you type" in page.search.placeholderText() + page.search.toolTip()
    qtbot.keyClicks(page.search, "bread")
    assert page.model.rowCount() == 3  # not on every key press...
    qtbot.waitUntil(lambda: page.model.rowCount() == 2, timeout=SEARCH_DEBOUNCE_MS * 8)  # ...but once typing stops
    page.search.clear()
    qtbot.waitUntil(lambda: page.model.rowCount() == 3, timeout=SEARCH_DEBOUNCE_MS * 8)
