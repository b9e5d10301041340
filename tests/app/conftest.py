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


@pytest.fixture
def make_page(qtbot, ctx):
    """Build any page of the app on the test's context: ``make_page(ChatPage, job_factory=f)``.

    The page is added to qtbot, resized (``size=None`` keeps its own size), shown and exposed;
    after the test a running job is cancelled and a page's chat store is closed. The one page
    factory of the app tests (each page's test module used to carry its own copy).
    """
    made = []

    def make(cls, *args, size=(1100, 760), **kwargs):
        page = cls(ctx, *args, **kwargs)
        qtbot.addWidget(page)
        if size is not None:
            page.resize(*size)
        page.show()
        qtbot.waitExposed(page)
        made.append(page)
        return page

    yield make
    ctx.worker.cancel()
    ctx.worker.wait_idle(10)
    for page in made:
        store = getattr(page, "store", None)
        if store is not None:
            store.close()
