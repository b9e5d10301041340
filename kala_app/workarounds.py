"""Every process-wide Qt/Python workaround of the app, in one place, each with its reason.

1. :func:`guard_singleton_refcounts` - PySide6 6.12 on Python < 3.12 leaks references to
   ``None``/``True``/``False`` (applied when ``kala_app`` is imported, before any Qt call).
2. :func:`shorten_switch_interval` - a busy engine thread must not make the UI thread wait 5 ms
   for the GIL at every Qt call (applied when the engine worker is created).
3. :func:`freeze_gc` - a streaming reply must not trigger full garbage collections over the
   hundreds of thousands of objects torch and transformers leave in the process (the Chat page
   holds it while a reply streams).
"""

from __future__ import annotations

import gc
import sys

#: The interpreter's GIL switch interval while the app runs (seconds).
GIL_SWITCH_INTERVAL_S = 0.001


def guard_singleton_refcounts() -> None:
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


def shorten_switch_interval(seconds: float = GIL_SWITCH_INTERVAL_S) -> None:
    """Let the UI thread take the GIL back within ``seconds`` of a busy job thread holding it.

    Qt calls release and re-take the GIL; with Python's default 5 ms, a busy job thread makes
    the UI thread wait up to 5 ms for *each* of them. 1 ms keeps the UI responsive at a
    negligible cost to the job. Never lengthens an interval that is already shorter.
    """
    if sys.getswitchinterval() > seconds:
        sys.setswitchinterval(seconds)


_gc_holders: set[int] = set()


def freeze_gc(holder: object, on: bool) -> None:
    """While ``holder`` asks for it, leave the objects that existed before out of garbage collection.

    A full (generation 2) collection walks every object of the process (with torch and
    transformers loaded, hundreds of thousands) and holds the GIL meanwhile; the token events
    of a fast reply trigger such collections, which froze the UI thread for 25 ms and more.
    ``gc.freeze()`` moves the existing objects out of the collector's sight; once the last
    holder lets go, ``gc.unfreeze()`` gives them back, to be collected at a quiet moment.
    """
    key = id(holder)
    if on and key not in _gc_holders:
        if not _gc_holders:
            gc.freeze()
        _gc_holders.add(key)
    elif not on and key in _gc_holders:
        _gc_holders.discard(key)
        if not _gc_holders:
            gc.unfreeze()


def gc_frozen() -> bool:
    """Whether some holder keeps the garbage collector frozen now."""
    return bool(_gc_holders)
