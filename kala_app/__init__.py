"""KALA Studio, the desktop app (PySide6 + pyqtgraph). Imports torch only through kala_engine.

Importing this package applies :func:`_guard_singleton_refcounts` (see there) before any Qt call.
"""

from __future__ import annotations

import sys


def _guard_singleton_refcounts() -> None:
    """Work around a PySide6 6.12 reference-count bug on Python < 3.12.

    shiboken6 6.12 returns ``None`` from every void method, and ``True``/``False`` from
    ``Signal.emit``, without taking a new reference (as if they were immortal, which they are
    only from Python 3.12 on). On Python 3.11 each such call therefore lowers the singleton's
    reference count by one, and after a few thousand calls (``label.setText``,
    ``processEvents``, ``signal.emit``...) the interpreter aborts with "Fatal Python error:
    none_dealloc". Giving the three singletons a very large reference count makes them
    effectively immortal, exactly what Python 3.12 does. They are never freed anyway.
    """
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return
    import ctypes

    for obj in (None, True, False):
        refcnt = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is the first field
        if refcnt.value < (1 << 40):
            refcnt.value += 1 << 40


_guard_singleton_refcounts()
