"""One owner per run folder: an OS file lock held for the whole training run.

Two processes training into one run folder destroy each other (``final/`` from one run,
``run.json`` from the other, ``metrics.jsonl`` interleaved). The training job therefore holds
``DIR/.lock`` for as long as it runs - the CLI and the app's worker run the same job, so both
are covered - and writes who it is to ``DIR/.owner.json`` (pid, host, start time, command).
A second starter is refused with one line::

    run folder runs/a is in use by process 4242 on host lab-1 (started 2026-11-30 01:40:12, kala train ...)

The lock is :class:`filelock.FileLock`: ``flock(2)`` on Unix, ``LockFileEx`` on Windows. The
operating system drops such a lock when its process dies, however it dies (kill -9 included),
so a stale lock needs no clean-up: the next starter simply gets it, overwrites the old owner
file and says whom it took over from. The lock file itself stays in place (deleting a lock file
that another process may be opening is the classic race); the owner file is removed on release.

No Qt, no torch: the app's run list uses :func:`owner_of` to show a run another process trains.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from kala_engine.jobs import JobError

LOCK_NAME = ".lock"
OWNER_NAME = ".owner.json"


@dataclass(frozen=True)
class Owner:
    """Who holds (or last held) a run folder."""

    pid: int
    host: str
    started: float  # time.time() when the lock was taken
    command: str

    def describe(self) -> str:
        if self.pid <= 0:
            return "another process"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "at an unknown time"
        host = f" on host {self.host}" if self.host and self.host != socket.gethostname() else ""
        cmd = f", {self.command}" if self.command else ""
        return f"process {self.pid}{host} (started {when}{cmd})"


def _read_owner(run_dir: Path) -> Owner | None:
    try:
        d = json.loads((run_dir / OWNER_NAME).read_text(encoding="utf-8"))
        return Owner(pid=int(d["pid"]), host=str(d.get("host", "")), started=float(d.get("started", 0.0)),
                     command=str(d.get("command", "")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing, half written or damaged: the lock, not this file, decides


def _command_line() -> str:
    if "kala_app.main_window" in sys.modules:  # the desktop app's worker (a look, not an import)
        return "KALA Studio"
    argv = [os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "main.py") and len(argv) > 1:
        argv[0] = "kala"
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


class RunLock:
    """Exclusive ownership of one run folder; use as a context manager or acquire()/release().

    ``acquire()`` never waits: if another process (or another job in this process) holds the
    folder it raises :class:`JobError` with the holder's pid and start time.
    """

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.command = _command_line() if command is None else command
        # a short wait: a probe by owner_of() (the app's run list) holds the lock for a moment
        self._lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=1.0)
        #: the previous owner whose lock the OS released (it died or ended without cleaning up)
        self.took_over_from: Owner | None = None

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> RunLock:
        if not self.run_dir.is_dir():
            raise JobError(f"run folder {self.run_dir} does not exist (or is not a folder)")
        try:
            self._lock.acquire()
        except Timeout:
            owner = _read_owner(self.run_dir)
            who = owner.describe() if owner else "another process"
            raise JobError(f"run folder {self.run_dir} is in use by {who}; wait for that run to end or stop it, "
                           f"or choose another run folder") from None
        except OSError as e:
            raise JobError(f"run folder {self.run_dir}: cannot create its lock file ({e.strerror or e}); "
                           f"check that the folder is writable") from None
        previous = _read_owner(self.run_dir)
        if previous is not None and previous.pid != os.getpid():
            self.took_over_from = previous
        me = Owner(pid=os.getpid(), host=socket.gethostname(), started=time.time(), command=self.command)
        tmp = self.run_dir / f"{OWNER_NAME}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(asdict(me)), encoding="utf-8")
            os.replace(tmp, self.run_dir / OWNER_NAME)
        except OSError:
            self._lock.release()
            raise
        return self

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        owner = _read_owner(self.run_dir)
        if owner is not None and owner.pid == os.getpid():
            try:
                (self.run_dir / OWNER_NAME).unlink()
            except OSError:
                pass  # a stale owner file is harmless: the lock decides
        self._lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def owner_of(run_dir: str | Path) -> Owner | None:
    """The process that holds ``run_dir`` now, or None when nobody does.

    Creates nothing: a folder without a lock file has never been locked by a running job.
    """
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_NAME).is_file():
        return None
    probe = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return _read_owner(run_dir) or Owner(pid=0, host="", started=0.0, command="")
    except OSError:
        return None  # cannot tell (read-only folder): nobody we could see
    probe.release()
    return None
