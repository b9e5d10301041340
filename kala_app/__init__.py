"""KALA Studio, the desktop app (PySide6 + pyqtgraph). Imports torch only through kala_engine.

Importing this package applies :func:`kala_app.workarounds.guard_singleton_refcounts` (see
there) before any Qt call; every process-wide workaround lives in :mod:`kala_app.workarounds`.
"""

from __future__ import annotations

from .workarounds import guard_singleton_refcounts

guard_singleton_refcounts()
