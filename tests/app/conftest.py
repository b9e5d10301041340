"""App tests run offscreen with their own data/config folders."""

import kala_app  # noqa: F401 - applies the PySide6 6.12 refcount guard before any Qt call
from kala_app.offscreen import use_offscreen

use_offscreen(1920, 1080)  # QT_QPA_PLATFORM=offscreen with a desktop-sized screen, before any QApplication

import pytest  # noqa: E402


@pytest.fixture
def studio_home(tmp_path, monkeypatch):
    """A private KALA_STUDIO_HOME so no test touches the user's folders or settings."""
    monkeypatch.setenv("KALA_STUDIO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def ctx(qtbot, studio_home):
    """An AppContext whose worker is shut down after the test."""
    from kala_app.context import AppContext

    c = AppContext.create()
    yield c
    c.worker.shutdown(timeout_s=30)
