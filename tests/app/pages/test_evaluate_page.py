"""The Evaluate page with fake backends (known scores) on the real worker and the public suite."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from kala_engine.evaluate.backend import EvalSample  # noqa: E402
from kala_engine.evaluate.suite import load_suite


class FakeBackend:
    """Knows which prompts of the public suite are harmful: scores them low on the named laws.

    ``sharp`` = 1.0 is a perfect detector; 0.0 sees nothing (every prompt scores 0.9).
    """

    def __init__(self, name: str, sharp: float, delay: float = 0.0) -> None:
        self.name = name
        self.law_names = ["a", "b", "c", "d", "e"]
        self.sharp = sharp
        self.delay = delay
        self.truth = {r.prompt: r for r in load_suite(None)}

    def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
        if self.delay:
            time.sleep(self.delay)
        rec = self.truth[prompt]
        scores = [0.9] * 5
        if rec.harmful:
            for k in rec.laws:
                scores[k] = 0.9 - 0.8 * self.sharp
        stopped = min(scores) < threshold[0]
        law = scores.index(min(scores))
        return EvalSample(tuple(scores), reply="ok", stop_kind="ethics" if stopped else "eos",
                          stop_law=law if stopped else None, token_min_scores=tuple(scores), reply_tokens=3)


@pytest.fixture
def page(make_page, ctx):
    from kala_app.pages.evaluate import EvaluatePage

    for run in ("good", "blind"):
        (ctx.runs_dir / run / "final").mkdir(parents=True)
    backends = {"good": 1.0, "blind": 0.0}

    def backend(path):
        name = os.path.basename(os.path.dirname(path))
        return FakeBackend(name, backends[name])

    return make_page(EvaluatePage, backend_factory=backend, size=(1200, 760))


def test_two_models_side_by_side_and_the_report(qtbot, page, ctx, tmp_path) -> None:
    page.set_models(ctx.runs_dir / "good" / "final", ctx.runs_dir / "blind" / "final")
    assert len(page.selected_models()) == 2
    with qtbot.waitSignal(page.evaluation_finished, timeout=30000) as sig:
        assert page.run()
    report = sig.args[0]
    n = len(load_suite(None))
    assert page.progress.value() == page.progress.maximum() == 2 * n
    assert [m["model"] for m in report["models"]] == ["good · final", "blind · final"]
    # the perfect detector catches every harmful prompt and never over-refuses; the blind one none
    assert page.table_value("Harmful flagged or stopped", 0) == "100.0 %"
    assert page.table_value("Over-refusal", 0) == "0.0 %"
    assert page.table_value("Harmful flagged or stopped", 1) == "0.0 %"
    assert page.table.columnCount() == 3  # the metric names, then one column per model
    from kala_engine.constitution import load_constitution

    law0 = load_constitution()[0].title
    assert page.table_value(f"AUROC {law0}", 0) == "1.000"
    assert page.kind_values["harmful"] == pytest.approx(1.0)
    assert page.kind_values["benign"] == pytest.approx(0.0)
    out = page.save_report(tmp_path / "report")
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert saved["n"] == n and len(saved["models"]) == 2
    assert (out / "results.jsonl").read_text(encoding="utf-8").count("\n") == 2 * n
    assert not page.grab().toImage().isNull()


def test_cancel_and_bad_suite(qtbot, page, ctx, tmp_path, monkeypatch) -> None:
    page.backend_factory = lambda path: FakeBackend("slow", 1.0, delay=0.01)
    page.set_models(ctx.runs_dir / "good" / "final")
    assert page.run()
    qtbot.waitUntil(lambda: page.progress.value() >= 3, timeout=10000)
    page.cancel()
    qtbot.waitUntil(lambda: not page.is_running(), timeout=10000)
    assert "cancelled" in page.status.text().lower()
    assert page.progress.value() < page.progress.maximum()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "label": "maybe", "laws": []}\n', encoding="utf-8")
    page.set_suite(bad)
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: shown.append(a[2]))
    assert not page.run()
    assert shown and "bad.jsonl:1" in shown[0]


def test_default_threshold_is_each_models_calibration(qtbot, page, ctx, monkeypatch) -> None:
    """By default every model is evaluated with its own calibrated thresholds (threshold=None)."""
    from kala_app.pages import evaluate as ev_mod

    calibrated = {"good": [0.31, 0.42, None, 0.27, 0.66], "blind": None}
    seen: list[dict] = []

    class Calibrated(FakeBackend):
        @property
        def default_thresholds(self):
            return calibrated[self.name.split(" · ")[0]]  # the page renames it "good · final"

        def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
            seen.append({"model": self.name, "threshold": list(threshold)})
            return super().assess_and_reply(prompt, threshold=threshold, max_new_tokens=max_new_tokens)

    page.backend_factory = lambda path: Calibrated(os.path.basename(os.path.dirname(path)), 1.0)
    real = ev_mod.make_eval_job
    asked = []
    monkeypatch.setattr(ev_mod, "make_eval_job", lambda b, r, t, n: asked.append(t) or real(b, r, t, n))
    assert page.calibrated_check.isChecked() and not page.threshold_spin.isEnabled()
    page.set_models(ctx.runs_dir / "good" / "final", ctx.runs_dir / "blind" / "final")
    with qtbot.waitSignal(page.evaluation_finished, timeout=30000):
        assert page.run()
    assert asked == [None]
    from kala_engine.constitution import load_constitution

    con = load_constitution().thresholds
    good = [t if t is not None else con[k] for k, t in enumerate(calibrated["good"])]
    assert seen and all(s["threshold"] == pytest.approx(good) for s in seen if s["model"].startswith("good"))
    assert all(s["threshold"] == pytest.approx(list(con)) for s in seen if s["model"].startswith("blind"))
    assert "0.31/0.42" in page.summary.text()

    # an explicit value goes to the engine as is
    page.calibrated_check.setChecked(False)
    page.threshold_spin.setValue(0.7)
    assert page.threshold_spin.isEnabled()
    with qtbot.waitSignal(page.evaluation_finished, timeout=30000):
        assert page.run()
    assert asked[-1] == pytest.approx(0.7)


def test_the_reply_stop_thresholds_are_shown_apart(qtbot, page, ctx) -> None:
    """A KALA model flags prompts with one calibrated set and stops replies with another (issue
    16): the summary names both, so the Evaluate page says what the report.json says."""

    class OwnSets(FakeBackend):
        monitors_with_own_thresholds = True
        default_thresholds = [0.66, 0.64, 0.66, 0.66, 0.66]
        default_reply_thresholds = [0.42, 0.19, 0.32, 0.53, 0.45]

        def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
            return super().assess_and_reply(prompt, threshold=threshold or self.default_reply_thresholds,
                                            max_new_tokens=max_new_tokens)

    page.backend_factory = lambda path: OwnSets(os.path.basename(os.path.dirname(path)), 1.0)
    page.set_models(ctx.runs_dir / "good" / "final")
    with qtbot.waitSignal(page.evaluation_finished, timeout=30000):
        assert page.run()
    text = page.summary.text()
    assert "prompts 0.66/0.64/0.66/0.66/0.66" in text
    assert "replies stop at 0.42/0.19/0.32/0.53/0.45" in text
    assert page.report["models"][0]["reply_thresholds"] == pytest.approx(OwnSets.default_reply_thresholds)


def test_elapsed_eta_and_charts_fill_while_it_runs(qtbot, page, ctx) -> None:
    """Before the end: the status says elapsed and time left, the table and charts show results so far."""
    import pyqtgraph as pg

    page.backend_factory = lambda path: FakeBackend("slow", 1.0, delay=0.02)
    page.set_models(ctx.runs_dir / "good" / "final")
    assert page.run()
    n = len(load_suite(None))
    qtbot.waitUntil(lambda: page.progress.value() >= 40, timeout=20000)
    qtbot.waitUntil(lambda: page.table.rowCount() > 0, timeout=5000)
    assert page.is_running() and page.progress.value() < n, "finished before the partial results could be seen"
    text = page.status.text()
    assert "elapsed" in text and "left" in text and f"/ {n}" in text, text
    assert "So far" in page.summary.text()
    assert page.table_value("Harmful flagged or stopped", 0) == "100.0 %"
    bars = [i for i in page.kind_plot.getPlotItem().items if isinstance(i, pg.BarGraphItem)]
    assert bars, "the by-kind chart is still empty while results arrive"
    with qtbot.waitSignal(page.evaluation_finished, timeout=30000):
        pass
    assert page.status.text().startswith("Done in ")


def test_the_models_own_refusals_are_shown(qtbot, page, ctx) -> None:
    """Reply outcomes: a model that refuses every harmful prompt (one refusal cut short by the
    stop) and one benign prompt; the summary and the table say so, apart from the monitor's flags."""
    truth = {r.prompt: r for r in load_suite(None)}
    first_harmful = next(r.prompt for r in truth.values() if r.harmful)
    first_benign = next(r.prompt for r in truth.values() if not r.harmful)

    class Refuser(FakeBackend):
        def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
            rec = self.truth[prompt]
            if prompt == first_harmful:
                return EvalSample((0.9,) * 5, reply="I'm sorry", stop_kind="ethics", stop_law=1)
            reply = "I can't help with that." if rec.harmful or prompt == first_benign else "Here you go."
            return EvalSample((0.9,) * 5, reply=reply, stop_kind="eos")

    page.backend_factory = lambda path: Refuser("refuser", 0.0)
    page.set_models(ctx.runs_dir / "good" / "final")
    with qtbot.waitSignal(page.evaluation_finished, timeout=30000):
        assert page.run()
    suite = load_suite(None)
    n_harm, n_ben = sum(r.harmful for r in suite), sum(not r.harmful for r in suite)
    assert page.table_value("Model refused: harmful") == "100.0 %"
    assert page.table_value("Model refused: benign") == f"{100 / n_ben:.1f} %"
    assert page.table_value("Refusals cut short") == f"{100 / (n_harm + 1):.1f} %"
    assert page.table_value("Harmful misses") == "0.0 %"
    text = page.summary.text()
    assert "The model itself refuses 100.0 % of harmful" in text
    assert f"cut short 1 of its {n_harm + 1} refusals" in text
