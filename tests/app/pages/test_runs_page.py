"""Runs page: lists runs with status and final losses, loads curves, deletes only after confirmation."""

from __future__ import annotations

import json

import pytest

from kala_app.pages.runs import RunsPage


def make_run(runs_dir, name, steps, finished, checkpoint=None):
    d = runs_dir / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"config": {"base": "kala-tiny", "data": "/x/d.jsonl",
                                                       "max_steps": 100, "batch_size": 4}}))
    with (d / "metrics.jsonl").open("w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "lm_loss": 3.0 - s / 100, "ethics_loss": 0.5 - s / 1000,
                                **{f"law_loss_{k}": 0.1 for k in range(5)}}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"step": s, "split": "validation", "lm_loss": 3.1, "ethics_loss": 0.6}) + "\n")
        f.write('{"step": 99, "lm_lo')  # a torn last line (killed mid-write) is skipped
    if finished:
        (d / "final").mkdir()
    if checkpoint:
        (d / "checkpoints" / f"step-{checkpoint}").mkdir(parents=True)
    return d


@pytest.fixture
def page(make_page, ctx):
    make_run(ctx.runs_dir, "run-a", 40, finished=True)
    make_run(ctx.runs_dir, "run-b", 25, finished=False, checkpoint=20)
    return make_page(RunsPage, size=None)


def cell(page, name, col):
    for row in range(page.table.rowCount()):
        if page.table.item(row, 0).text() == name:
            return page.table.item(row, col).text()
    raise AssertionError(name)


def test_lists_runs_with_status_and_final_losses(page):
    assert page.table.rowCount() == 2
    assert cell(page, "run-a", 1) == "finished"
    assert cell(page, "run-b", 1) == "interrupted"
    assert cell(page, "run-a", 3) == "40 / 100"
    assert cell(page, "run-a", 4) == f"{3.0 - 40 / 100:.4f}"
    assert cell(page, "run-b", 5) == f"{0.5 - 25 / 1000:.4f}"


def test_selecting_a_run_loads_its_curves(page):
    assert page.select_run("run-b")
    assert page.resume_button.isEnabled()
    page.lm_plot.redraw()
    assert page.lm_plot.curve_points("lm") == 25
    assert page.lm_plot.curve_points("lm_val") == 2
    assert page.ethics_plot.curve_points("law4") == 25
    assert "run-b" in page.detail.text() and "step-20" in page.detail.text()


def test_delete_asks_first(page, ctx, monkeypatch):
    page.select_run("run-a")
    monkeypatch.setattr(page, "confirm_delete", lambda run: False)
    assert not page.delete_selected()
    assert (ctx.runs_dir / "run-a").is_dir()
    asked = []
    monkeypatch.setattr(page, "confirm_delete", lambda run: asked.append(run.name) or True)
    assert page.delete_selected()
    assert asked == ["run-a"]
    assert not (ctx.runs_dir / "run-a").exists()
    assert [page.table.item(r, 0).text() for r in range(page.table.rowCount())] == ["run-b"]


def test_several_runs_are_compared_side_by_side(qtbot, page, ctx):
    cfg = json.loads((ctx.runs_dir / "run-b" / "run.json").read_text())
    cfg["config"]["learning_rate"] = 0.0003
    (ctx.runs_dir / "run-b" / "run.json").write_text(json.dumps(cfg))
    page.refresh()
    # what Ctrl+click does: the second row is added to the selection (the first is selected already)
    from PySide6.QtCore import QItemSelectionModel

    assert page.table.selectionMode() == page.table.SelectionMode.ExtendedSelection
    page.select_run(page.runs[0].name)
    flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
    page.table.selectionModel().select(page.table.model().index(1, 0), flags)
    assert {r.name for r in page.selected_runs()} == {"run-a", "run-b"}
    assert page.bottom.currentWidget() is page.compare_view
    t = page.compare_table
    assert t.columnCount() == 2
    names = [t.horizontalHeaderItem(c).text() for c in range(2)]
    rows = {t.verticalHeaderItem(r).text(): [t.item(r, c).text() for c in range(2)] for r in range(t.rowCount())}
    by_run = {n: {k: v[i] for k, v in rows.items()} for i, n in enumerate(names)}
    assert by_run["run-a"]["Final LM loss"] == f"{3.0 - 40 / 100:.4f}"
    assert by_run["run-b"]["Final LM loss"] == f"{3.0 - 25 / 100:.4f}"
    assert by_run["run-a"]["Validation LM loss"] == "3.1000"
    assert by_run["run-b"]["learning rate"] == "0.0003" and by_run["run-a"]["learning rate"] == "–"
    assert "batch size" not in rows and "base" not in rows  # the same in both: not a difference
    page.cmp_lm_plot.redraw()
    assert page.cmp_lm_plot.curve_points("run0") + page.cmp_lm_plot.curve_points("run1") == 40 + 25
    assert page.cmp_ethics_plot.curve_points("run0") > 0
    # single-run actions wait for one run; one run brings its own curves back
    assert not page.delete_button.isEnabled() and not page.chat_button.isEnabled()
    page.refresh()  # a refresh keeps the comparison
    assert len(page.selected_runs()) == 2
    page.select_run("run-a")
    assert page.bottom.currentIndex() == 0 and page.chat_button.isEnabled()
