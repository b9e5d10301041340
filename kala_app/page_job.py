"""One page's job on the shared engine worker: the lifecycle Chat, Evaluate, Models, Data and Train share.

A page starts its job through :meth:`PageJob.start` and gets the job's own
:class:`~kala_app.worker.JobHandle`; its callbacks are connected to that handle's signals only,
so a page never sees another page's events and never filters the worker's stream by owner.
The engine runs one job at a time: :meth:`PageJob.busy_reason` says why a page cannot start now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .workarounds import freeze_gc
from .worker import EngineWorker, JobHandle


class PageJob:
    """The job a page runs (at most one), started on the app's one :class:`EngineWorker`."""

    def __init__(self, worker: EngineWorker, owner: Any) -> None:
        self.worker = worker
        #: the page: the main window asks it ``handles_job_errors`` (see MainWindow)
        self.owner = owner
        self.handle: JobHandle | None = None

    def running(self) -> bool:
        """This page's job runs (its ``finished`` not delivered yet)."""
        return self.handle is not None and self.handle.is_running()

    def busy_other(self) -> bool:
        """Another page's job holds the engine."""
        return self.worker.is_busy() and not self.running()

    def busy_reason(self) -> str:
        """Why a job cannot start now ('' when it can)."""
        if not self.worker.is_busy():
            return ""
        name = self.worker.job_name or "another job"
        return f"The engine is busy with “{name}”; wait for it or cancel it."

    def start(self, job: Any, name: str, *, progress: Callable | None = None, result: Callable | None = None,
              error: Callable | None = None, finished: Callable | None = None) -> JobHandle:
        """Run ``job(emit, control)``; the callbacks get this job's signals (see JobHandle).
        Raises RuntimeError while the engine is busy."""
        handle = self.worker.start(job, name, owner=self.owner)
        # no full collection on the job's thread while it runs: one there once collected Qt
        # wrappers of the UI thread and crashed (Evaluate page, a garbage collection in the
        # worker); see kala_app.workarounds.freeze_gc
        freeze_gc(handle, True)
        handle.finished.connect(lambda *_: freeze_gc(handle, False))
        for signal, slot in ((handle.progress, progress), (handle.result, result),
                             (handle.error, error), (handle.finished, finished)):
            if slot is not None:
                signal.connect(slot)
        self.handle = handle
        return handle

    def cancel(self) -> None:
        if self.running():
            self.handle.cancel()

    def pause(self) -> None:
        if self.running():
            self.handle.pause()

    def resume(self) -> None:
        if self.handle is not None:
            self.handle.resume()

    def is_paused(self) -> bool:
        return self.running() and self.handle.is_paused()


__all__ = ["PageJob"]
