"""At 1024x640 nothing is cut: every label, button, check box and number shown on every page fits
the room it was given (at 1440x900 too), and the Evaluate table shows each value in full."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSpinBox,
    QApplication,
    QLabel,
    QWidget,
)

SIZES = [(1024, 640), (1440, 900)]


def _wait(seconds: float) -> None:
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def _shown(w: QWidget) -> bool:
    return w.isVisibleTo(w.window()) and w.isVisible() and w.width() > 0


def cut_widgets(root: QWidget) -> list[str]:
    """Widgets under ``root`` whose text does not fit the room they were given."""
    bad = []
    for w in root.findChildren(QWidget):
        if not _shown(w):
            continue
        name = f"{type(w).__name__}({w.objectName() or ''}) "
        if isinstance(w, QLabel) and w.text() and w.pixmap().isNull():
            if w.wordWrap():
                need = w.heightForWidth(w.contentsRect().width() + w.contentsMargins().left()
                                        + w.contentsMargins().right())
                if need > w.height() + 1:
                    bad.append(f"{name}{w.text()[:60]!r}: needs {need} px high, has {w.height()}")
            elif w.sizeHint().width() > w.width() + 1:
                bad.append(f"{name}{w.text()[:60]!r}: needs {w.sizeHint().width()} px, has {w.width()}")
        elif isinstance(w, QAbstractButton) and w.text():
            if w.minimumSizeHint().width() > w.width() + 1:
                bad.append(f"{name}{w.text()!r}: needs {w.minimumSizeHint().width()} px, has {w.width()}")
        elif isinstance(w, QAbstractSpinBox):
            text = w.text()
            need = w.fontMetrics().horizontalAdvance(text) + 28  # frame and arrows
            if need > w.width():
                bad.append(f"{name}{text!r}: needs {need} px, has {w.width()}")
    return bad


def _save_tiny_final(folder: Path) -> None:
    """A randomly initialised model of kala-tiny's shape (4 layers, 6 heads), saved like a final one."""
    import torch

    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    torch.manual_seed(0)
    KALAForCausalLM(KALAConfig(hidden_size=48, num_attention_heads=6, num_hidden_layers=4, intermediate_size=96,
                               vocab_size=64, max_position_embeddings=64)).save_pretrained(folder)


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    """The main window with something on every page: a data set, a run, a chat, an evaluation."""
    import os

    from kala_app.context import AppContext
    from kala_app.main_window import MainWindow
    from kala_app.screenshots import _show_finished_run
    from tests.app.pages.test_chat_screenshots import BENIGN_PROMPT, ScriptedBackend, scripted_job_factory
    from tests.app.synthetic_run import write_synthetic_run

    home = tmp_path_factory.mktemp("layout")
    old = os.environ.get("KALA_STUDIO_HOME")
    os.environ["KALA_STUDIO_HOME"] = str(home)
    ctx = AppContext.create()
    win = MainWindow(ctx, show_quickstart=True)
    win.resize(1024, 640)
    win.show()
    data = win.pages["data"]
    assert data.generate(count=300, seed=0)
    assert ctx.worker.wait_idle(120)
    _wait(0.3)
    run = ctx.runs_dir / "20261130-010000-kala-tiny"
    write_synthetic_run(run, Path(data.path), steps=120)
    _save_tiny_final(run / "final")  # so the Runs page draws its layer x law and gate heatmaps
    _show_finished_run(win.pages["train"], run)
    write_synthetic_run(ctx.runs_dir / "20261130-020000-kala-tiny-second", Path(data.path), steps=80)
    for name in ("scripted-a", "scripted-b"):
        (ctx.runs_dir / name / "final").mkdir(parents=True)
    chat = win.show_page("chat")
    chat.job_factory = scripted_job_factory
    chat.refresh_models()
    chat.new_chat()
    chat.input.setPlainText(BENIGN_PROMPT)
    chat.send()
    deadline = time.monotonic() + 60
    while chat.is_generating() and time.monotonic() < deadline:
        _wait(0.02)
    evaluate = win.show_page("evaluate")
    evaluate.backend_factory = lambda path: ScriptedBackend(Path(path).parent.name)
    evaluate.refresh_models()
    evaluate.set_models(ctx.runs_dir / "scripted-a" / "final", ctx.runs_dir / "scripted-b" / "final")
    assert evaluate.run()
    deadline = time.monotonic() + 120
    while evaluate.is_running() and time.monotonic() < deadline:
        _wait(0.05)
    assert evaluate.report is not None
    runs = win.show_page("runs")
    runs.refresh()
    yield win
    chat.store.close()
    ctx.worker.shutdown(30)
    win.close()
    if old is None:
        os.environ.pop("KALA_STUDIO_HOME", None)
    else:
        os.environ["KALA_STUDIO_HOME"] = old


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("page", ["data", "models", "train", "chat", "evaluate", "runs"])
def test_nothing_is_cut(window, page, size):
    window.resize(*size)
    shown = window.show_page(page)
    _wait(0.3)
    if page == "models":  # its table is read on a thread when the page is first shown
        deadline = time.monotonic() + 60
        while not shown.rows and time.monotonic() < deadline:
            _wait(0.1)
        assert len(shown.rows) == 16
    assert window.width() == size[0] and window.height() == size[1]
    bad = cut_widgets(window.pages[page]) + cut_widgets(window.statusBar())
    assert not bad, "\n".join(bad)
    # the page fits whole in the room it has (with the first-start banner shown under it)
    assert window.banner.isVisible()
    w = window.pages[page]
    need = w.minimumSizeHint()
    assert need.width() <= w.width() and need.height() <= w.height(), (need, w.size())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_evaluate_values_are_shown_in_full(window, size):
    """Every number of the results table is drawn whole (the old page showed "46...." at 1024 px)."""
    window.resize(*size)
    ev = window.show_page("evaluate")
    _wait(0.3)
    t = ev.table
    values = 0
    for c in range(t.columnCount()):
        for r in range(t.rowCount()):
            text = t.item(r, c).text()
            if not any(ch.isdigit() for ch in text.replace("Law 0", "").replace("Law 1", "")
                       .replace("Law 2", "").replace("Law 3", "").replace("Law 4", "")):
                continue  # a metric name: it may elide (its tooltip has it whole)
            values += 1
            assert t.fontMetrics().horizontalAdvance(text) + 6 <= t.columnWidth(c), (text, t.columnWidth(c))
            assert t.columnViewportPosition(c) + t.columnWidth(c) <= t.viewport().width(), "a value column is off screen"
    assert values >= 2 * 13  # two models, every metric
    assert ev.table_value("Over-refusal", 1).endswith("%")


def test_data_problems_and_coverage_get_room_at_1024(window):
    window.resize(1024, 640)
    data = window.show_page("data")
    _wait(0.2)
    data.bottom_tabs.setCurrentWidget(data.problems_box)
    _wait(0.2)
    # the problem texts get the page's width, not a 120-px strip beside the chart
    assert data.problems.viewport().width() >= 400, data.problems.viewport().width()
    data.bottom_tabs.setCurrentIndex(0)
    _wait(0.2)
    assert data.chart.width() >= 250 and data.chart.legend_widget.isVisible()
    assert not cut_widgets(data.chart.legend_widget)


def test_a_long_name_in_a_combo_is_elided_not_cut(qtbot):
    from kala_app.widgets.elided_combo import ElidedComboBox

    c = ElidedComboBox()
    qtbot.addWidget(c)
    name = "demo-20261129-234242-a-very-long-run-name · final"
    c.addItem(name, "/runs/x/final")
    c.resize(160, c.sizeHint().height())
    c.show()
    shown = c.shown_text()
    assert shown != name and "…" in shown and shown.startswith("demo-") and shown.endswith("final")
    assert c.toolTip() == name  # the full name, on hover
    c.clear()
    c.setPlaceholderText("No trained model yet")
    c.resize(300, c.sizeHint().height())
    assert c.shown_text() == "No trained model yet"


def test_runs_comparison_shows_every_value_at_1024(window):
    window.resize(1024, 640)
    runs = window.show_page("runs")
    runs.refresh()
    trained = [r.name for r in runs.runs if "kala-tiny" in r.name]  # the two runs with curves (not scripted-*)
    assert runs.select_runs(trained) == 2
    _wait(0.3)
    t = runs.compare_table
    assert t.columnCount() == 2
    for c in range(2):
        assert t.columnViewportPosition(c) + t.columnWidth(c) <= t.viewport().width(), "a run's column is off screen"
        for r in range(t.rowCount()):
            text = t.item(r, c).text()
            assert t.fontMetrics().horizontalAdvance(text) + 6 <= t.columnWidth(c), (text, t.columnWidth(c))
    assert not cut_widgets(runs)


def test_screenshot_dir_renders_every_page_at_both_sizes(qapp, tmp_path, monkeypatch):
    """``kala-studio --screenshot-dir`` (render_all): <page>-1024x640.png and <page>-1440x900.png."""
    from PySide6.QtGui import QImage

    from kala_app.main_window import PAGES
    from kala_app.screenshots import SIZES, render_all
    from tests.app.synthetic_run import write_synthetic_run

    monkeypatch.setenv("KALA_STUDIO_HOME", str(tmp_path / "home"))
    run = tmp_path / "20261130-010000-kala-tiny"
    write_synthetic_run(run, tmp_path / "d.jsonl", steps=50)
    paths = render_all(tmp_path / "shots", run=run, chat_and_eval=False)
    assert SIZES == ((1024, 640), (1440, 900))
    assert sorted(p.name for p in paths) == sorted(f"{k}-{w}x{h}.png" for k, *_ in PAGES for w, h in SIZES)
    for p in paths:
        img = QImage(str(p))
        w, h = (int(v) for v in p.stem.split("-")[-1].split("x"))
        assert (img.width(), img.height()) == (w, h), p.name


def test_first_start_pages_fit_1024x640(qtbot, studio_home):
    """Before anything exists (no data, no model; the quickstart banner shown) every page fits too."""
    from kala_app.context import AppContext
    from kala_app.main_window import PAGES, MainWindow

    win = MainWindow(AppContext.create(), show_quickstart=True)
    qtbot.addWidget(win)
    win.resize(1024, 640)
    win.show()
    qtbot.waitExposed(win)
    for key, *_ in PAGES:
        page = win.show_page(key)
        _wait(0.2)
        need = page.minimumSizeHint()
        assert need.width() <= page.width() and need.height() <= page.height(), (key, need, page.size())
        assert not cut_widgets(page), key
    win.ctx.worker.shutdown(10)


def test_data_preview_never_scrolls_sideways_at_1024(window):
    """The records preview fits its columns in the room it has: the texts elide (whole in the
    tooltip) instead of the table scrolling sideways (it did at 1024 px)."""
    window.resize(1024, 640)
    data = window.show_page("data")
    _wait(0.3)
    t = data.table
    assert data.model.rowCount() > 0
    assert t.horizontalScrollBar().maximum() == 0, t.horizontalScrollBar().maximum()
    last = data.model.columnCount() - 1
    assert t.columnViewportPosition(last) + t.columnWidth(last) <= t.viewport().width()
    assert min(t.columnWidth(4), t.columnWidth(5)) >= 70  # both texts keep some room
    assert data.model.index(0, 4).data(Qt.ItemDataRole.ToolTipRole)  # the whole text


def _flag_law0_factory(model, messages, settings):
    """A reply to a prompt flagged on Law 0, whose title is the longest word of the line."""
    from kala_engine.jobs import TokenEvent
    from tests.app.fakes import generation_result

    def job(emit, control):
        emit(TokenEvent(0, 1, "No.", (0.9,) * 5))
        return generation_result("No.", prompt_scores=(0.19, 0.9, 0.9, 0.9, 0.9))

    return job


@pytest.mark.parametrize("size", [(1024, 640), (1280, 800)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_flagged_prompts_assessment_line_is_never_cut(window, size):
    """"Prompt flagged: Law 0 Civilizational 0.19" under a user message wraps inside its bubble,
    and the bubble inside the transcript: at 1024x640 the bubble was wider than the column and
    the line was cut ("Law 0 Civilizationa")."""
    window.resize(*size)
    chat = window.show_page("chat")
    old = chat.job_factory
    chat.job_factory = _flag_law0_factory
    try:
        chat.new_chat()
        assert chat.send("Explain how to take down a power grid")
        deadline = time.monotonic() + 30
        while chat.is_generating() and time.monotonic() < deadline:
            _wait(0.02)
        _wait(0.3)
        user = chat.view.user_messages()[-1]
        assert user.assessment_text().startswith("Prompt flagged: Law 0")
        viewport = chat.view.viewport()
        right = user.mapTo(viewport, user.rect().topRight()).x()
        assert right <= viewport.width(), f"the bubble ends at {right}, the transcript at {viewport.width()}"
        label = user.assessment_label
        label_right = label.mapTo(viewport, label.rect().topRight()).x()
        assert label_right <= viewport.width()
        fm = label.fontMetrics()
        widest_word = max(fm.horizontalAdvance(w) for w in user.assessment_text().split())
        assert widest_word <= label.contentsRect().width()
        assert not cut_widgets(user)
        assert label.toolTip() == user.assessment_text()  # the whole line, however narrow
    finally:
        chat.job_factory = old


def test_train_settings_column_never_scrolls_sideways_at_1024(window):
    """The Train page's left column (method, hyperparameters, ethics fold) grew taller than 640 px:
    its vertical scroll bar must not bring a horizontal one; the column wraps to its width."""
    from PySide6.QtWidgets import QScrollArea

    window.resize(1024, 640)
    train = window.show_page("train")
    _wait(0.3)
    area = next(a for a in train.findChildren(QScrollArea) if a.widget() is not None
                and a.widget().isAncestorOf(train.hp_form))
    assert not area.horizontalScrollBar().isVisible()


def cut_plots(root: QWidget) -> list[str]:
    """Plots under ``root`` cut by the room they were given: a legend wider than its plot's view
    (pyqtgraph clips it at the view's edge, so its first column loses its words), a plot laid out
    wider than its widget (its right columns cut), or a plot that reaches past the page's edge."""
    import pyqtgraph as pg

    bad = []
    for w in root.findChildren(pg.PlotWidget):
        if not _shown(w):
            continue
        item = w.getPlotItem()
        legend = item.legend
        if legend is not None and legend.isVisible() and legend.items:
            view = item.getViewBox().sceneBoundingRect()
            box = legend.sceneBoundingRect()
            if box.left() < view.left() - 1 or box.right() > view.right() + 1:
                bad.append(f"legend of {item.titleLabel.text!r}: {box.width():.0f} px wide, its view "
                           f"{view.width():.0f} px ({box.left():.0f}..{box.right():.0f} in {view.left():.0f}..{view.right():.0f})")
        laid_out = item.sceneBoundingRect()
        if laid_out.right() > w.viewport().width() + 1:  # a title or axes wider than the widget
            bad.append(f"plot {item.titleLabel.text!r} laid out {laid_out.right():.0f} px wide in a "
                       f"widget {w.viewport().width()} px wide")
        right = w.mapTo(root, QPoint(w.width(), 0)).x()
        if right > root.width() + 1:
            bad.append(f"plot {item.titleLabel.text!r} reaches {right} px on a page {root.width()} px wide")
    return bad


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("page", ["train", "runs"])
def test_no_plot_legend_or_heatmap_is_cut(window, page, size):
    window.resize(*size)
    shown = window.show_page(page)
    if page == "runs":
        assert shown.select_run("20261130-010000-kala-tiny")
        shown.load_selected_curves()
        assert shown.layer_map.law_plot.isVisible() and shown.layer_map.gate_plot.isVisible()
    _wait(0.5)
    bad = cut_plots(window.pages[page])
    assert not bad, "\n".join(bad)
