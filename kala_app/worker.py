"""The engine worker: runs one ``kala_engine`` job at a time on a background QThread.

The UI talks to :class:`EngineWorker` (it lives in the UI thread); the job itself runs inside a
private :class:`_JobRunner` QObject that is moved to a :class:`QThread`. Events the job emits are
put on a thread-safe queue; the worker drains that queue on the UI thread (polled every 10 ms,
a time budget per drain) and re-emits every event as a Qt signal. So a job that emits thousands
of events a second never floods the UI event loop with one posted event per token, and the UI
thread never spends more than ~8 ms at a time delivering them.

Signals (all delivered on the UI thread, in the order the job emitted the events):

* ``started(str)`` - the job's name, right after :meth:`EngineWorker.start`.
* ``event(object)`` - every event, including the terminal Finished/Failed.
* ``token(object)`` / ``step(object)`` / ``validation(object)`` / ``checkpoint_saved(object)``
  - TokenEvent / TrainStep / Validation / CheckpointSaved events.
* ``log(str)`` - the message of each LogLine.
* ``progress(int, int, str)`` - done, total, message of each Progress event.
* ``failed(str, str)`` - message and traceback (empty for a JobError meant for the user).
* ``finished(object)`` - the :class:`kala_engine.jobs.Finished` event; fires **exactly once per
  job**: after success, after cancel (``cancelled=True``), and after a failure (right after
  ``failed``, with ``result=None, cancelled=False``), so clean-up code belongs here.
* ``busy_changed(bool)`` - True when a job starts, False once its ``finished`` was delivered.

A ``finished`` handler may start the next job (a chain: generate, then train). That start is
held until every handler has seen the ``finished`` of the job that ended (so :attr:`owner` is
still that job's owner for all of them), then the ended job's ``busy_changed(False)`` is
delivered and the next job starts with its own ``busy_changed(True)`` and ``started``; its
owner and name are never touched by the clean-up of the job before it.

Pause/resume/cancel reach the job through its :class:`kala_engine.jobs.JobControl`.

**Per-job signals.** :meth:`EngineWorker.start` returns a :class:`JobHandle` whose signals
belong to that one job (superqt's worker names: started, progress, result, error, finished), so
a page connects to its own job instead of filtering the worker-wide stream by owner. The
worker-wide signals above stay for whoever watches every job (the main window, the base picker watching for a download).

**Why not superqt's ``create_worker``** (measured on this machine, 100,000 token events, Python
3.11, PySide6 6.12, the refcount guard of :mod:`kala_app.workarounds` applied): superqt emits
one queued cross-thread signal per ``yield``; delivering them took 1.6-2.9 s against 0.6 s
through the queue below (the UI thread's longest pause was similar, 28-93 ms against 32-62 ms).
With the guard it never crashed (0 of 3 runs); without it, 2 of 2 runs aborted in superqt's
``yielded.emit`` ("Fatal Python error: bool_dealloc"): the ``Signal.emit`` crash seen before was
that refcount bug, not cross-thread emission as such. superqt's thread pool also runs any number of jobs at once, and its generator
workers pause/cancel by ``yield``, while the engine's jobs take an ``emit`` callback and a
:class:`~kala_engine.jobs.JobControl`. So the engine keeps one QThread and this queue; the
handle follows superqt's signal names.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from kala_engine.jobs import (
    CheckpointSaved,
    Failed,
    Finished,
    JobControl,
    LogLine,
    Progress,
    TokenEvent,
    TrainStep,
    Validation,
    run_job,
)

from .workarounds import shorten_switch_interval

#: How often the UI thread collects a running job's events (ms).
POLL_MS = 10
#: How long one drain of the event queue may run on the UI thread before yielding (seconds).
DRAIN_BUDGET_S = 0.008
#: After a drain used its whole budget, the next one waits this long (ms), so timers, painting
#: and input always get the UI thread back even when a job emits faster than the UI can take.
DRAIN_PAUSE_MS = 8


#: queued by the runner when a job begins on the worker thread (never a worker-wide event)
_STARTED = object()


class _JobRunner(QObject):
    """Lives in the worker thread; runs the job it is handed, pushing events to ``sink``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._queue: deque = deque()

    def push(self, ev: Any) -> None:
        """The ``emit`` callback handed to the job: cheap, thread-safe, never touches Qt.

        No signal is emitted from the job's thread: PySide6 6.12 on Python 3.11 crashed now and
        then (a segfault inside ``Signal.emit``) when a worker thread emitted thousands of
        signals, so the UI thread polls this queue instead (``EngineWorker._poll``).
        """
        with self._lock:
            self._queue.append(ev)

    def take(self) -> list:
        """Called on the UI thread: everything queued so far."""
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        return items

    @Slot(object, object)
    def run(self, job: Any, control: JobControl) -> None:
        self.push(_STARTED)  # delivered as the job handle's ``started``, before any event of the job
        run_job(job, self.push, control)


class JobHandle(QObject):
    """One job's own signals, all delivered on the UI thread in the order the job emitted events.

    * ``started()`` - the job began on the worker thread (delivered like its events, so a
      handler connected right after :meth:`EngineWorker.start` returned sees it).
    * ``progress(object)`` - every event of the job before its end (TokenEvent, Progress,
      LogLine, TrainStep ...).
    * ``result(object)`` - the job's return value, after success only (a cancelled job's result
      is dropped, as superqt does).
    * ``error(str, str)`` - message and traceback (empty for a JobError meant for the user).
    * ``finished(object)`` - the :class:`kala_engine.jobs.Finished` event, exactly once, after
      success, cancel (``cancelled=True``) or failure (``result=None``): clean-up goes here.
    """

    started = Signal()
    progress = Signal(object)
    result = Signal(object)
    error = Signal(str, str)
    finished = Signal(object)

    def __init__(self, worker: EngineWorker, name: str) -> None:
        super().__init__()
        self._worker = worker
        self.name = name
        self.control = JobControl()
        self.done = False  # its ``finished`` was delivered

    def cancel(self) -> None:
        """Ask the job to stop (a no-op once it finished)."""
        if not self.done:
            self.control.cancel()

    def pause(self) -> None:
        if not self.done:
            self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def is_running(self) -> bool:
        """Started or about to start, and its ``finished`` not delivered yet."""
        return not self.done

    def is_paused(self) -> bool:
        return not self.done and self.control.paused

    def _deliver(self, ev: Any) -> None:
        if isinstance(ev, Failed):
            self.error.emit(ev.message, ev.traceback)
        elif isinstance(ev, Finished):
            if not ev.cancelled:
                self.result.emit(ev.result)
        else:
            self.progress.emit(ev)

    def _finish(self, ev: Finished) -> None:
        self.done = True
        self.finished.emit(ev)


class EngineWorker(QObject):
    """Runs one engine job at a time on a background thread and re-emits its events as signals."""

    started = Signal(str)
    event = Signal(object)
    token = Signal(object)
    step = Signal(object)
    validation = Signal(object)
    checkpoint_saved = Signal(object)
    log = Signal(str)
    progress = Signal(object, object, str)  # Python ints: download bytes pass 2**31 (a Qt int would overflow)
    finished = Signal(object)
    failed = Signal(str, str)
    busy_changed = Signal(bool)

    _run_requested = Signal(object, object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread = QThread()
        self._thread.setObjectName("kala-engine-worker")
        self._runner = _JobRunner()
        self._runner.moveToThread(self._thread)
        self._run_requested.connect(self._runner.run)  # queued: runs in the worker thread
        self._thread.start()
        # the UI thread collects the job's events every POLL_MS while a job runs
        self._poll = QTimer(self)
        self._poll.setInterval(POLL_MS)
        self._poll.timeout.connect(self._drain)
        self._control: JobControl | None = None
        self._name = ""
        self._owner: Any = None
        self._pending: deque = deque()  # taken from the runner, not yet delivered
        self._finishing = False  # a job's ``finished`` is being delivered
        self._next: tuple | None = None  # (job, name, owner) started by a ``finished`` handler
        self._drain_scheduled = False
        self._handle: JobHandle | None = None  # the running job's
        shorten_switch_interval()  # see kala_app.workarounds
        self._shut_down = False

    # ------------------------------------------------------------ control from the UI

    def start(self, job: Any, name: str = "job", owner: Any = None) -> JobHandle:
        """Run ``job(emit, control)`` on the worker thread; returns the job's :class:`JobHandle`.

        Raises RuntimeError while busy.

        ``owner`` (usually the page that started the job) is kept in :attr:`owner` until the
        job's ``finished`` was delivered, so a page can tell its own job's events from others'.
        An owner whose ``handles_job_errors`` is true shows failures itself; otherwise the main
        window shows them.
        """
        if self._shut_down:
            raise RuntimeError("the engine worker was shut down")
        if self._next is not None:
            raise RuntimeError(f"'{self._next[1].name}' is about to start; cancel it or wait for it to finish")
        if self._control is not None:
            raise RuntimeError(f"'{self._name}' is still running; cancel it or wait for it to finish")
        handle = JobHandle(self, name)
        if self._finishing:  # started from a ``finished`` handler: after every handler saw it
            self._next = (job, handle, owner)
            return handle
        self._begin(job, handle, owner)
        return handle

    def _begin(self, job: Any, handle: JobHandle, owner: Any) -> None:
        self._handle = handle
        self._control = handle.control
        self._name = handle.name
        self._owner = owner
        self.busy_changed.emit(True)
        self.started.emit(handle.name)
        self._poll.start()
        self._run_requested.emit(job, self._control)

    def pause(self) -> None:
        if self._control is not None:
            self._control.pause()

    def resume(self) -> None:
        if self._control is not None:
            self._control.resume()

    def cancel(self) -> None:
        if self._control is not None:
            self._control.cancel()

    def is_busy(self) -> bool:
        """A job runs, or one was started from a ``finished`` handler and starts next."""
        return self._control is not None or self._next is not None

    def is_paused(self) -> bool:
        return self._control is not None and self._control.paused

    @property
    def owner(self) -> Any:
        """Whoever started the running job (None when idle or not given); still set while its
        ``finished`` signal is being delivered."""
        return self._owner

    @property
    def job_name(self) -> str:
        """Name of the running job ('' when idle)."""
        return self._name if self._control is not None else ""

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Process events until the running job's ``finished`` was delivered (for tests, shutdown)."""
        from PySide6.QtCore import QCoreApplication

        deadline = time.monotonic() + timeout_s
        while self._control is not None and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            self._drain()
            time.sleep(0.005)
        return self._control is None

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Cancel any job, wait for it, stop the thread. Returns False if the thread hung."""
        if self._shut_down:
            return True
        self.cancel()
        self.wait_idle(timeout_s)
        self._shut_down = True
        self._thread.quit()
        ok = self._thread.wait(int(timeout_s * 1000))
        return bool(ok)

    # ------------------------------------------------------------ delivery on the UI thread

    @Slot()
    def _drain(self) -> None:
        self._pending.extend(self._runner.take())
        t0 = time.perf_counter()
        while self._pending:
            self._deliver(self._pending.popleft())
            if time.perf_counter() - t0 > DRAIN_BUDGET_S and self._pending:
                if not self._drain_scheduled:
                    self._drain_scheduled = True
                    QTimer.singleShot(DRAIN_PAUSE_MS, self._scheduled_drain)  # paint and input first
                return

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self._drain()

    def _deliver(self, ev: Any) -> None:
        if ev is _STARTED:
            if self._handle is not None:
                self._handle.started.emit()
            return
        if self._handle is not None:
            self._handle._deliver(ev)
        self.event.emit(ev)
        if isinstance(ev, TokenEvent):
            self.token.emit(ev)
        elif isinstance(ev, TrainStep):
            self.step.emit(ev)
        elif isinstance(ev, Validation):
            self.validation.emit(ev)
        elif isinstance(ev, CheckpointSaved):
            self.checkpoint_saved.emit(ev)
        elif isinstance(ev, LogLine):
            self.log.emit(ev.message)
        elif isinstance(ev, Progress):
            self.progress.emit(int(ev.done), int(ev.total), ev.message)
        elif isinstance(ev, Failed):
            self.failed.emit(ev.message, ev.traceback)
            self._finish(Finished(result=None, cancelled=False))
        elif isinstance(ev, Finished):
            self._finish(ev)

    def _finish(self, ev: Finished) -> None:
        self._poll.stop()
        self._control = None  # idle for the handlers: one of them may start the next job
        self._finishing = True
        handle, self._handle = self._handle, None
        try:
            if handle is not None:
                handle._finish(ev)
            self.finished.emit(ev)  # owner and name are still the ended job's
        finally:
            self._finishing = False
            self._name = ""
            self._owner = None
        self.busy_changed.emit(False)
        nxt, self._next = self._next, None
        if nxt is not None and not self._shut_down:
            self._begin(*nxt)
