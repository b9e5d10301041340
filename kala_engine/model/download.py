"""Resumable downloads into the Hugging Face cache (huggingface_hub's own layout: blobs, snapshots,
refs): file metadata, a disk-room check, one blob at a time through ``.incomplete`` with a Range
request, sha256-checked, with progress events and cancellation."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kala_engine.jobs import Cancelled, Emit, JobControl, JobError, LogLine, Progress

# Downloads only fetch files; nothing here imports or runs them. Every load of what was fetched
# goes through kala_engine.model.loading (auto_map refused, trust_remote_code=False, safetensors only).

#: Pythia lives here; a bare preset name means EleutherAI/<name>

DISK_MARGIN = 200 * 1024**2


class BaseError(JobError, ValueError):
    """A base that cannot be resolved or downloaded; the message is one line saying what to do."""


@dataclass(frozen=True)
class DownloadProgress(Progress):
    """Bytes of a download: ``done``/``total`` in bytes, ``rate`` in bytes/s, ``eta`` in seconds."""

    rate: float = 0.0
    eta: float | None = None
    filename: str = ""


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def format_gb(n: int | float) -> str:
    for unit, div in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= div:
            return f"{n / div:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{int(n)} B"


class _Tracker:
    """Counts bytes across the files of one download and emits throttled DownloadProgress events."""

    def __init__(self, total: int, done: int, emit: Emit, control: JobControl, label: str):
        self.total, self.done, self.emit, self.control, self.label = total, done, emit, control, label
        self.t0 = time.monotonic()
        self.session = 0  # bytes received by this run (the rate ignores what was already there)
        self.filename = ""
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        self.session += n
        self.control.checkpoint()  # raises Cancelled; the partial file stays for the next run
        now = time.monotonic()
        if now - self._last >= 0.2:
            self.report(now)

    def report(self, now: float | None = None) -> None:
        now = now or time.monotonic()
        self._last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = self.session / elapsed
        left = max(self.total - self.done, 0)
        eta = left / rate if rate > 0 else None
        done = min(self.done, self.total)  # a server that ignores Range sends a partial file again
        self.emit(DownloadProgress(done=done, total=self.total, rate=rate, eta=eta, filename=self.filename,
                                   message=f"{self.label}: {self.filename} {format_gb(done)} / {format_gb(self.total)}"))

    def bar_class(self) -> type:
        tracker = self

        class _Bar:  # what huggingface_hub's http_get needs from a progress bar (a non-tqdm class)
            def __init__(self, *args, **kwargs):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, n=1):
                tracker.add(int(n or 0))

            def close(self):
                pass

        return _Bar


def hub_errors():
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx2.TransportError, httpx2.HTTPError, OSError)


def unreachable_error(label: str, e: Exception) -> BaseError:
    from huggingface_hub import constants

    return BaseError(f"{label}: cannot reach the hub at {constants.ENDPOINT} ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else 'no answer'}) and it is not in the cache; connect "
                     f"to the network and run the same command again, or pass a local model folder")


def _file_metadata(repo_id, commit, wanted, label, repo_type) -> dict:
    """The hub's metadata (ETag, size, location) of every wanted file; refused without a usable ETag."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        metas = {f: get_hf_file_metadata(hf_hub_url(repo_id, f, repo_type=repo_type, revision=commit))
                 for f in wanted}
    except hub_errors() as e:
        raise unreachable_error(label, e) from None
    for f, m in metas.items():
        if not m.etag or "/" in m.etag or m.etag.startswith("."):
            raise BaseError(f"{label}: the hub sent no usable ETag for {f}; cannot cache it safely")
    return metas


def _check_room(metas: dict, sizes: dict, storage: Path, label: str) -> tuple[int, int]:
    """(total bytes, bytes already in the cache); refused when the disk cannot hold the rest."""
    blobs = storage / "blobs"
    total = sum(m.size or sizes.get(f, 0) for f, m in metas.items())
    have = 0
    for m in metas.values():
        blob = blobs / m.etag
        if blob.is_file():
            have += m.size or 0
        elif blob.with_name(m.etag + ".incomplete").is_file():
            have += blob.with_name(m.etag + ".incomplete").stat().st_size
    need = total - have
    free = _free_bytes(storage)
    if need + DISK_MARGIN + need // 50 > free:
        raise BaseError(f"{label}: needs {format_gb(need)} more in {storage.parent} but only {format_gb(free)} is free; free "
                        f"some space or point HF_HOME at a bigger disk")
    return total, have


def _download_blob(f: str, m, blob: Path, url: str, label: str, tracker) -> None:
    """One file into ``blob`` through ``blob.incomplete`` (resumed with a Range request), sha256-checked."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    partial = blob.with_name(m.etag + ".incomplete")
    size = m.size
    resume = partial.stat().st_size if partial.is_file() else 0
    if size is not None and resume > size:
        partial.unlink()
        resume = 0
    headers = build_hf_headers()
    if m.location != url:
        headers.pop("authorization", None)  # a CDN redirect must not see the token (as huggingface_hub does)
    try:
        with open(partial, "ab") as fh:
            http_get(m.location, fh, resume_size=resume, headers=headers, expected_size=size,
                     displayed_filename=f, tqdm_class=tracker.bar_class())
    except (Cancelled, KeyboardInterrupt):
        tracker.report()
        raise
    except hub_errors() as e:
        tracker.report()
        raise BaseError(f"{label}: the download of {f} stopped ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); run the same command again to resume "
                        f"({format_gb(partial.stat().st_size)} kept)") from None
    if re.fullmatch(r"[0-9a-f]{64}", m.etag or ""):  # LFS files: the etag is the content's sha256
        h = hashlib.sha256()
        with open(partial, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != m.etag:
            partial.unlink()
            raise BaseError(f"{label}: {f} arrived corrupt (sha256 mismatch); it was deleted - run the same "
                            f"command again")
    os.replace(partial, blob)


def fetch_files(repo_id, revision, commit, wanted, sizes, storage, label, emit, control, cache_dir,
           repo_type: str = "model") -> Path:
    """Resumable download of ``wanted`` (at ``commit``) into the cache; the snapshot folder."""
    from huggingface_hub import hf_hub_url, snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    blobs = storage / "blobs"
    metas = _file_metadata(repo_id, commit, wanted, label, repo_type)
    total, have = _check_room(metas, sizes, storage, label)
    kept = have - sum(m.size or 0 for f, m in metas.items() if f == "config.json")
    emit(LogLine(f"downloading {label} ({format_gb(total)}{f', {format_gb(kept)} already here' if kept > 0 else ''}) into "
                 f"{storage.parent}"))
    tracker = _Tracker(total, have, emit, control, label)
    blobs.mkdir(parents=True, exist_ok=True)
    for f in wanted:
        blob = blobs / metas[f].etag
        if blob.is_file():
            continue
        tracker.filename = f
        _download_blob(f, metas[f], blob, hf_hub_url(repo_id, f, repo_type=repo_type, revision=commit), label,
                       tracker)
        tracker.report()
    if tracker.session == 0:
        tracker.report()  # everything was already there: one event saying so
    # huggingface_hub writes the snapshot links, refs and file list itself (every blob is there now)
    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        folder = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir,
                                        allow_patterns=wanted))
    except hub_errors() as e:
        raise unreachable_error(label, e) from None
    finally:
        if not quiet:
            enable_progress_bars()
    return folder
