"""What every page gets: the engine worker, settings, per-user folders and the constitution.

Folders come from :mod:`platformdirs` (nothing is written beside the installed program). The
environment variable ``KALA_STUDIO_HOME`` puts both the data and the config folder under one
directory instead (used by tests, the self-test and the screenshot script).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSettings

from kala_engine.constitution import Constitution, load_constitution
from kala_engine.paths import APP_AUTHOR, APP_NAME, user_dirs  # noqa: F401 - re-exported

from .startup import AppSettings, check_settings_file, ensure_folder
from .worker import EngineWorker


def default_dirs() -> tuple[Path, Path]:
    """(data dir, config dir) for this user - the engine's folders (kala_engine.paths)."""
    return user_dirs()


@dataclass
class AppContext:
    """Shared state handed to every page as ``Page(ctx)``."""

    worker: EngineWorker
    settings: QSettings
    data_dir: Path
    config_dir: Path
    constitution: Constitution
    #: Pages register themselves here by name ("data", "train", ...) so they can reach each other
    #: (e.g. the quickstart hands the generated dataset to the Train page).
    pages: dict = field(default_factory=dict)
    #: what start-up had to repair (a damaged file moved aside ...); the main window shows them
    notices: list[str] = field(default_factory=list)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def chats_dir(self) -> Path:
        return self.data_dir / "chats"

    @classmethod
    def create(
        cls,
        data_dir: str | Path | None = None,
        config_dir: str | Path | None = None,
        worker: EngineWorker | None = None,
    ) -> AppContext:
        """Make the folders, open the settings file (INI in the config folder) and a worker."""
        d_data, d_conf = default_dirs()
        data = Path(data_dir) if data_dir is not None else d_data
        conf = Path(config_dir) if config_dir is not None else d_conf
        notices = []
        for p in (data, data / "runs", data / "datasets", data / "chats", conf):
            notices.append(ensure_folder(p))  # a file where a folder belongs is moved aside
        notices.append(check_settings_file(conf / "settings.ini"))  # a damaged one is moved aside
        settings = AppSettings(str(conf / "settings.ini"), QSettings.Format.IniFormat)
        return cls(
            worker=worker or EngineWorker(),
            settings=settings,
            data_dir=data,
            config_dir=conf,
            constitution=load_constitution(),
            notices=[n for n in notices if n],
        )
