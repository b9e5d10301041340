"""EngineWorker: one job at a time, events in order as signals, finished exactly once, clean shutdown."""

from __future__ import annotations

import threading

import pytest

from kala_app.worker import EngineWorker
from kala_engine.jobs import JobError, LogLine, Progress, TokenEvent, TrainStep


@pytest.fixture
def worker(qtbot):
    w = EngineWorker()
    yield w
    assert w.shutdown(timeout_s=10)


def collect(worker):
    got = {"finished": [], "failed": [], "tokens": [], "steps": [], "logs": [], "progress": [], "busy": []}
    worker.finished.connect(got["finished"].append)
    worker.failed.connect(lambda m, tb: got["failed"].append((m, tb)))
    worker.token.connect(got["tokens"].append)
    worker.step.connect(got["steps"].append)
    worker.log.connect(got["logs"].append)
    worker.progress.connect(lambda d, t, m: got["progress"].append((d, t, m)))
    worker.busy_changed.connect(got["busy"].append)
    return got


def test_events_arrive_in_order_on_the_ui_thread(qtbot, worker):
    got = collect(worker)
    threads = set()
    worker.token.connect(lambda ev: threads.add(threading.current_thread() is threading.main_thread()))

    def job(emit, control):
        emit(LogLine("hello"))
        for i in range(5000):  # a burst far faster than the UI could take one posted event each
            control.checkpoint()
            emit(TokenEvent(index=i, token_id=i, text="x", law_scores=(1.0,) * 5))
        emit(Progress(1, 2, "half"))
        emit(TrainStep(step=1, total_steps=1, metrics={"lm_loss": 1.0}))
        return 42

    with qtbot.waitSignal(worker.finished, timeout=10000):
        worker.start(job, "burst")
        assert worker.is_busy() and worker.job_name == "burst"
        with pytest.raises(RuntimeError, match="still running"):
            worker.start(job, "second")
    assert [ev.index for ev in got["tokens"]] == list(range(5000))
    assert threads == {True}
    assert got["logs"] == ["hello"] and got["progress"] == [(1, 2, "half")] and len(got["steps"]) == 1
    assert len(got["finished"]) == 1 and got["finished"][0].result == 42 and not got["finished"][0].cancelled
    assert got["busy"] == [True, False]
    assert not worker.is_busy()


def test_cancel_while_paused_finishes_once_with_cancelled_flag(qtbot, worker):
    got = collect(worker)
    at_step = []

    def job(emit, control):
        for i in range(10_000):
            control.checkpoint()
            at_step.append(i)
            emit(TrainStep(step=i, total_steps=10_000, metrics={}))
            threading.Event().wait(0.002)

    worker.start(job, "long")
    qtbot.waitUntil(lambda: len(got["steps"]) > 3, timeout=5000)
    worker.pause()
    assert worker.is_paused()
    qtbot.wait(100)
    n = len(at_step)
    qtbot.wait(150)
    assert len(at_step) == n
    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.cancel()
    qtbot.wait(50)
    assert len(got["finished"]) == 1 and got["finished"][0].cancelled
    assert got["failed"] == []


def test_failure_reports_message_and_traceback_then_finished(qtbot, worker):
    got = collect(worker)

    def bad(emit, control):
        raise KeyError("boom")

    def user_error(emit, control):
        raise JobError("the data file is empty; generate one first")

    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.start(bad, "bad")
    assert got["failed"][0][0] == "KeyError: 'boom'"
    assert "Traceback" in got["failed"][0][1]
    with qtbot.waitSignal(worker.finished, timeout=5000):
        worker.start(user_error, "user")
    assert got["failed"][1] == ("the data file is empty; generate one first", "")
    assert len(got["finished"]) == 2


def test_shutdown_cancels_a_running_job_and_joins_the_thread(qtbot):
    w = EngineWorker()
    stopped = threading.Event()

    def job(emit, control):
        try:
            while True:
                control.checkpoint()
                threading.Event().wait(0.01)
        finally:
            stopped.set()

    w.start(job, "forever")
    qtbot.wait(50)
    assert w.shutdown(timeout_s=5)
    assert stopped.is_set()
    assert not w._thread.isRunning()
    with pytest.raises(RuntimeError):
        w.start(job, "after")


def test_a_job_started_from_a_finished_handler_keeps_its_owner_and_name(qtbot, worker):
    """A chain (generate, then train): every handler sees the first job's owner with its finished;
    the second job starts after them and its owner, name and busy state survive the clean-up."""
    got = collect(worker)
    first, second = object(), object()
    owners_seen = []
    started = []
    worker.started.connect(started.append)

    def quick(emit, control):
        return "a"

    def slow(emit, control):
        for i in range(30):
            control.checkpoint()
            emit(TrainStep(step=i + 1, total_steps=30, metrics={"lm_loss": 1.0}))
            threading.Event().wait(0.01)
        return "b"

    def chain(ev):  # connected first, like the Data page: starts the next job
        if ev.result == "a":
            worker.start(slow, "second", owner=second)
            assert worker.is_busy()
            with pytest.raises(RuntimeError, match="about to start"):
                worker.start(quick, "third")

    worker.finished.connect(chain)
    worker.finished.connect(lambda ev: owners_seen.append((ev.result, worker.owner)))
    steps_owner = []
    worker.step.connect(lambda ev: steps_owner.append((worker.owner, worker.job_name)))

    with qtbot.waitSignals([worker.finished, worker.finished], timeout=10000):
        worker.start(quick, "first", owner=first)
    qtbot.waitUntil(lambda: len(got["finished"]) == 2, timeout=10000)
    assert owners_seen == [("a", first), ("b", second)]
    assert steps_owner == [(second, "second")] * 30
    assert started == ["first", "second"]
    assert got["busy"] == [True, False, True, False]
    assert not worker.is_busy() and worker.owner is None


# ------------------------------------------------------------------ per-job handles (issue 14, item 5)


def _record(handle):
    got = {"started": 0, "progress": [], "result": [], "error": [], "finished": []}
    handle.started.connect(lambda: got.__setitem__("started", got["started"] + 1))
    handle.progress.connect(got["progress"].append)
    handle.result.connect(got["result"].append)
    handle.error.connect(lambda m, tb: got["error"].append((m, tb)))
    handle.finished.connect(got["finished"].append)
    return got


def test_each_job_has_its_own_signals_even_when_chained(qtbot, worker):
    """The handle of a job carries that job's events only: a job started from the first one's
    ``finished`` (a chain) never shows up on the first one's handle, and vice versa."""
    def first(emit, control):
        emit(LogLine("first says"))
        return "a"

    def second(emit, control):
        for i in range(3):
            emit(TokenEvent(index=i, token_id=i, text="x", law_scores=(1.0,) * 5))
        return "b"

    handles = {}

    def chain(ev):
        handles["b"] = worker.start(second, "second")
        handles["got_b"] = _record(handles["b"])

    handles["a"] = worker.start(first, "first")
    got_a = _record(handles["a"])
    handles["a"].finished.connect(chain)
    qtbot.waitUntil(lambda: "got_b" in handles and len(handles["got_b"]["finished"]) == 1, timeout=10000)
    got_b = handles["got_b"]
    assert [type(e).__name__ for e in got_a["progress"]] == ["LogLine"]
    assert got_a["result"] == ["a"] and len(got_a["finished"]) == 1 and got_a["started"] == 1
    assert [e.index for e in got_b["progress"]] == [0, 1, 2]
    assert got_b["result"] == ["b"] and len(got_b["finished"]) == 1 and got_b["started"] == 1
    assert not handles["a"].is_running() and not handles["b"].is_running()


def test_a_cancelled_jobs_result_is_dropped_and_finished_fires_once(qtbot, worker):
    def job(emit, control):
        while True:
            control.checkpoint()
            threading.Event().wait(0.005)

    h = worker.start(job, "forever")
    got = _record(h)
    qtbot.wait(30)
    with qtbot.waitSignal(h.finished, timeout=5000):
        h.cancel()
    qtbot.wait(30)
    assert got["result"] == [] and got["error"] == []
    assert len(got["finished"]) == 1 and got["finished"][0].cancelled
    h.cancel()  # a no-op once it finished
    assert not worker.is_busy()


def test_an_error_reaches_its_handle_then_finished(qtbot, worker):
    def bad(emit, control):
        raise JobError("the data file is empty; generate one first")

    h = worker.start(bad, "bad")
    got = _record(h)
    with qtbot.waitSignal(h.finished, timeout=5000):
        pass
    assert got["error"] == [("the data file is empty; generate one first", "")]
    assert got["result"] == [] and len(got["finished"]) == 1 and not got["finished"][0].cancelled


def test_pages_listen_to_their_own_jobs_not_to_the_worker_stream():
    """Chat, Evaluate, Models and Data connect to their job's handle (PageJob); none reads the
    worker's owner or its token/progress/failed stream to pick out its own events."""
    from pathlib import Path

    pages = Path(__file__).resolve().parents[2] / "kala_app" / "pages"
    for name in ("chat.py", "evaluate.py", "models.py", "data.py"):
        src = (pages / name).read_text(encoding="utf-8")
        assert "PageJob(" in src, name
        for pattern in (".owner", "worker.token.", "worker.progress.", "worker.failed.", "w.event.",
                        "w.progress.", "w.failed.", "w.token."):
            assert pattern not in src, (name, pattern)


def test_process_wide_workarounds_live_in_one_module(qtbot):
    """The GIL switch interval is shortened by the worker; the gc stays frozen while any holder
    asks for it (the Chat page holds it while a reply streams)."""
    import gc
    import sys

    from kala_app import workarounds

    EngineWorker().shutdown(timeout_s=5)
    assert sys.getswitchinterval() <= workarounds.GIL_SWITCH_INTERVAL_S
    a, b = object(), object()
    base = gc.get_freeze_count()
    workarounds.freeze_gc(a, True)
    workarounds.freeze_gc(b, True)
    workarounds.freeze_gc(a, False)
    assert workarounds.gc_frozen() and gc.get_freeze_count() >= base
    workarounds.freeze_gc(b, False)
    assert not workarounds.gc_frozen() and gc.get_freeze_count() == 0
