"""Per-user folders (platformdirs): runs, datasets and chats in the data folder, settings in
the config folder. Nothing is ever written beside the installed program.

``KALA_STUDIO_HOME`` moves both under one folder (tests, portable installs).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "KALA Studio"
APP_AUTHOR = "KALA"


def user_dirs() -> tuple[Path, Path]:
    """(data dir, config dir) for this user."""
    if home := os.environ.get("KALA_STUDIO_HOME"):
        base = Path(home)
        return base / "data", base / "config"
    return (Path(platformdirs.user_data_dir(APP_NAME, APP_AUTHOR)),
            Path(platformdirs.user_config_dir(APP_NAME, APP_AUTHOR)))


def user_data_dir() -> Path:
    return user_dirs()[0]


def user_config_dir() -> Path:
    return user_dirs()[1]
