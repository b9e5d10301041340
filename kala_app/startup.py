"""The app starts whatever its files look like: checks of its own folders and settings file.

Each check returns a notice for the user (or None) instead of raising; damaged things are
moved aside to a timestamped name beside them, never deleted (the chat database does the same
in :mod:`kala_app.chat_store`). The main window shows the notices in a banner.

* a folder the app needs (runs, datasets, chats, config) that exists as a *file* is moved aside
  and the folder is made;
* ``settings.ini`` that is not a text INI file (binary, not UTF-8, lines that are neither
  ``[section]`` nor ``key=value``) is moved aside before QSettings reads it - QSettings would
  silently rewrite such a file on its next save and the user's settings would be gone for good;
* a stored setting of the wrong kind (a word where a number belongs) reaches no page:
  :class:`AppSettings` hands out the page's default instead.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings


def aside_name(path: Path, label: str) -> Path:
    """``name.LABEL-YYYYmmdd-HHMMSS.suffix`` beside ``path``, not yet taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.stem}.{label}-{stamp}{path.suffix}")
    i = 2
    while target.exists():
        target = path.with_name(f"{path.stem}.{label}-{stamp}-{i}{path.suffix}")
        i += 1
    return target


def ensure_folder(path: Path) -> str | None:
    """Make the folder ``path``; a file in its place is moved aside first. Returns a notice or None."""
    notice = None
    if path.exists() and not path.is_dir():
        target = aside_name(path, "not-a-folder")
        os.replace(path, target)
        notice = f"{path} was a file where KALA Studio keeps a folder; the file was moved, not deleted, to {target}."
    path.mkdir(parents=True, exist_ok=True)
    return notice


def settings_file_problem(data: bytes) -> str | None:
    """Why ``data`` is not an INI file QSettings wrote (None when it looks like one)."""
    if b"\x00" in data:
        return "it holds binary data"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s[0] in ";#":
            continue
        if s.startswith("[") and s.endswith("]"):
            continue
        key, eq, _value = s.partition("=")
        if not eq or not key.strip():
            return f"line {n} is neither [section] nor key=value"
    return None


def check_settings_file(path: Path) -> str | None:
    """Move a damaged settings file aside before QSettings can overwrite it; returns a notice or None."""
    try:
        if not path.is_file():
            if path.exists():  # a folder or something else named settings.ini
                target = aside_name(path, "damaged")
                os.replace(path, target)
                return f"The settings {path} were not a file; moved, not deleted, to {target}. Defaults are used."
            return None
        data = path.read_bytes()
    except OSError as e:
        return f"The settings {path} cannot be read ({e.strerror or e}); defaults are used."
    problem = settings_file_problem(data)
    if problem is None:
        return None
    target = aside_name(path, "damaged")
    os.replace(path, target)
    return (f"The settings {path} were damaged ({problem}). They were moved, not deleted, to {target}; "
            f"KALA Studio starts with its default settings.")


def _as_kind(v: Any, default: Any) -> Any:
    """``v`` as the type of ``default``, or ``default`` when it is not one (None: pass through)."""
    if isinstance(default, bool):
        if v in (True, False):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
            return v.lower() in ("true", "1")
        return default
    if isinstance(default, (int, float)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return default
        if not math.isfinite(f) or (isinstance(default, int) and abs(f) > 2**53):
            return default
        return int(f) if isinstance(default, int) else f
    if isinstance(default, str):
        return v if isinstance(v, str) else default
    return v


class AppSettings(QSettings):
    """QSettings whose ``value(key, default)`` always has the default's type.

    The INI file stores text; a hand-edited or damaged value ("abc" for a count, a list for a
    path) would otherwise reach a page as it is and stop the app at ``int(...)``. With a default
    given, a value that does not convert to the default's type yields the default.
    """

    def value(self, key: str, defaultValue: Any = None, type: Any = None) -> Any:  # noqa: N803, A002 - Qt's names
        v = super().value(key, defaultValue) if type is None else super().value(key, defaultValue, type)
        if defaultValue is None or v is None:
            return v
        return _as_kind(v, defaultValue)
