"""A headless Qt platform with a desktop-sized screen (tests, self-test, screenshots).

Qt's ``offscreen`` platform pretends to have an 800x800 screen, which clamps restored window
geometry and 1280x800 screenshots. Its ``configfile`` option describes a bigger screen.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def use_offscreen(width: int = 1920, height: int = 1080, force: bool = True) -> str:
    """Select the offscreen platform with a ``width`` x ``height`` screen (before QApplication)."""
    cfg = Path(tempfile.gettempdir()) / f"kala-offscreen-{width}x{height}.json"
    if not cfg.exists():
        cfg.write_text(json.dumps({
            "synchronousWindowSystemEvents": False,
            "windowFrameMargins": False,
            "screens": [{"name": "KalaOffscreen", "x": 0, "y": 0, "width": width, "height": height,
                         "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}],
        }), encoding="utf-8")
    platform = f"offscreen:configfile={cfg}"
    if force or "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = platform
    return platform
