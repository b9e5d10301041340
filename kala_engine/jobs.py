"""Engine jobs: plain callables that report progress as small frozen events.

A job is any callable ``job(emit, control) -> result``:

* ``emit(event)`` is called with the events below, from the job's own thread; the CLI prints
  them, the app's worker re-emits them as Qt signals. ``emit`` must be cheap.
* ``control`` is a :class:`JobControl`; the job calls ``control.checkpoint()`` at safe points
  (every training step, every generated token). It blocks while paused and raises
  :class:`Cancelled` once cancel was asked for.

:func:`run_job` wraps a job so that exactly one terminal event is always emitted:
:class:`Finished` (also for a cancelled job, with ``cancelled=True``) or :class:`Failed`.
The engine never imports Qt (checked by import-linter).
"""

from __future__ import annotations

import threading
import traceback as _tb
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Cancelled(Exception):
    """Raised inside a job by JobControl.checkpoint() after cancel() was called."""


class JobError(RuntimeError):
    """An error whose message is meant for the user as it is (no traceback needed)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class LogLine(Event):
    message: str
    level: str = "info"  # "info" | "warning" | "error"


@dataclass(frozen=True)
class Progress(Event):
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class TrainStep(Event):
    """One optimizer step; ``metrics`` is exactly the line written to metrics.jsonl."""

    step: int
    total_steps: int
    metrics: dict = field(hash=False)


@dataclass(frozen=True)
class Validation(Event):
    step: int
    metrics: dict = field(hash=False)


@dataclass(frozen=True)
class CheckpointSaved(Event):
    step: int
    path: str


@dataclass(frozen=True)
class TokenEvent(Event):
    """One generated token with its five law scores (and, on request, per-layer scores)."""

    index: int  # 0-based position in the reply
    token_id: int
    text: str  # the text this token adds to the reply
    law_scores: tuple[float, ...]
    layer_scores: tuple[tuple[float, ...], ...] | None = None  # (layers, 5)


@dataclass(frozen=True)
class Finished(Event):
    result: Any = None
    cancelled: bool = False


@dataclass(frozen=True)
class Failed(Event):
    message: str
    traceback: str = ""


Emit = Callable[[Event], None]


# ---------------------------------------------------------------- control


class JobControl:
    """Pause / resume / cancel token shared between a job and whoever started it."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()  # wake a paused job so it can see the cancel

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def checkpoint(self, on_pause: Callable[[], None] | None = None) -> None:
        """Call at a safe point: blocks while paused, raises Cancelled when cancelled."""
        if self._cancel.is_set():
            raise Cancelled()
        if not self._running.is_set():
            if on_pause is not None:
                on_pause()
            while not self._running.wait(0.05):
                pass
            if self._cancel.is_set():
                raise Cancelled()


class Job(Protocol):
    def __call__(self, emit: Emit, control: JobControl) -> Any: ...


def run_job(job: Job, emit: Emit, control: JobControl | None = None) -> Any:
    """Run ``job`` and always finish with exactly one Finished or Failed event."""
    control = control or JobControl()
    try:
        result = job(emit, control)
    except Cancelled:
        emit(Finished(result=None, cancelled=True))
        return None
    except JobError as e:
        emit(Failed(message=str(e), traceback=""))
        return None
    except Exception as e:  # noqa: BLE001 - reported to the user, never swallowed
        emit(Failed(message=f"{type(e).__name__}: {e}", traceback=_tb.format_exc()))
        return None
    emit(Finished(result=result, cancelled=control.cancelled))
    return result

