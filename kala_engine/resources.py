"""Where the shipped resources (constitution, prompt banks, evaluation suite) live.

Looked up, in order: the ``KALA_RESOURCES`` environment variable, a PyInstaller bundle
(``sys._MEIPASS/resources``), the source checkout (``<repo>/resources``) and the data files of
an installed wheel (``<prefix>/share/kala-studio/resources``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class ResourceError(FileNotFoundError):
    """A shipped resource file is missing."""


def resources_dir() -> Path:
    candidates: list[Path] = []
    if env := os.environ.get("KALA_RESOURCES"):
        candidates.append(Path(env))
    if meipass := getattr(sys, "_MEIPASS", None):
        candidates.append(Path(meipass) / "resources")
    candidates.append(Path(__file__).resolve().parent.parent / "resources")
    candidates.append(Path(sys.prefix) / "share" / "kala-studio" / "resources")
    for c in candidates:
        if (c / "constitution.toml").is_file():
            return c
    raise ResourceError(
        "KALA resources not found (looked in: " + ", ".join(str(c) for c in candidates) + "). "
        "Reinstall KALA Studio or set KALA_RESOURCES to the folder holding constitution.toml."
    )


def resource_path(*parts: str) -> Path:
    """Path of a shipped resource; raises ResourceError naming it when it is missing."""
    p = resources_dir().joinpath(*parts)
    if not p.exists():
        raise ResourceError(f"missing resource {p}: reinstall KALA Studio or check KALA_RESOURCES")
    return p
