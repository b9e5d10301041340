"""The main window: a side list of pages, a stack of page widgets, and a status bar.

Pages: Data, Models, Train, Chat, Evaluate, Runs (one module each under ``kala_app.pages``). The status
bar shows the compute device and the running job. Window geometry is saved in QSettings and
restored. On first start a banner offers the quickstart (the demo flow: generate a small data
set, train ``kala-tiny`` on it, then chat with the result).

Closing the window while a job runs asks first; if the user agrees the job is cancelled (the
training job writes a checkpoint when it is cancelled, so the run can be resumed), the worker
thread is stopped and joined, and only then does the window close.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QByteArray, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from . import engine_api
from .context import AppContext
from .error_dialog import show_error
from .notice_banner import NoticeBanner
from .pages.chat import ChatPage
from .pages.data import DataPage
from .pages.evaluate import EvaluatePage
from .pages.models import ModelsPage
from .pages.runs import RunsPage
from .pages.train import TrainPage

#: (key, title, page class) of every page, in side-list order.
PAGES = [
    ("data", "Data", DataPage),
    ("models", "Models", ModelsPage),
    ("train", "Train", TrainPage),
    ("chat", "Chat", ChatPage),
    ("evaluate", "Evaluate", EvaluatePage),
    ("runs", "Runs", RunsPage),
]

PAGE_ICONS = {
    "data": QStyle.StandardPixmap.SP_DirIcon,
    "models": QStyle.StandardPixmap.SP_DriveHDIcon,
    "train": QStyle.StandardPixmap.SP_MediaPlay,
    "chat": QStyle.StandardPixmap.SP_MessageBoxQuestion,
    "evaluate": QStyle.StandardPixmap.SP_DialogApplyButton,
    "runs": QStyle.StandardPixmap.SP_FileDialogDetailedView,
}


class _DeviceProbe(QObject):
    """Finds the compute device off the UI thread (importing torch takes a second or two).

    The probe thread only stores its answer; a QTimer on the UI thread picks it up and emits
    ``found`` there. No Qt signal is emitted from the probe thread (the cross-thread emit that
    crashed PySide6 now and then, see ``worker.py``).
    """

    found = Signal(str)
    POLL_MS = 50

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._result: str | None = None
        self._poll = QTimer(self)
        self._poll.setInterval(self.POLL_MS)
        self._poll.timeout.connect(self._collect)

    def start(self) -> None:
        self._poll.start()
        threading.Thread(target=self._run, name="kala-device-probe", daemon=True).start()

    def _run(self) -> None:
        try:
            text = engine_api.device_summary()
        except Exception as e:  # noqa: BLE001 - shown in the status bar, not fatal
            text = f"device unknown ({type(e).__name__})"
        self._result = text  # a single attribute store: atomic under the GIL

    def _collect(self) -> None:
        if self._result is None:
            return
        self._poll.stop()
        self.found.emit(self._result)


class QuickstartBanner(QFrame):
    """A dismissable banner offering the demo flow on first start."""

    run_clicked = Signal()
    dismissed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("quickstartBanner")
        self.setStyleSheet(
            "#quickstartBanner { background: #e8f0fe; border: 1px solid #aac4f0; border-radius: 6px; }"
        )
        lay = QHBoxLayout(self)
        text = QLabel(
            "<b>New here?</b> The quickstart generates a small constitutional data set, trains "
            "the tiny KALA model on it (a few minutes on a CPU) and opens a chat with it."
        )
        text.setWordWrap(True)
        lay.addWidget(text, 1)
        self.run_button = QPushButton("Run the quickstart")
        self.run_button.clicked.connect(self.run_clicked)
        close = QPushButton("Not now")
        close.clicked.connect(self.dismissed)
        lay.addWidget(self.run_button)
        lay.addWidget(close)


class MainWindow(QMainWindow):
    """KALA Studio's main window."""

    def __init__(self, ctx: AppContext | None = None, *, show_quickstart: bool | None = None):
        super().__init__()
        self.ctx = ctx or AppContext.create()
        self.setWindowTitle("KALA Studio")
        self.setMinimumSize(960, 640)
        self._closing = False

        self.nav = QListWidget()
        self.nav.setObjectName("pageList")
        self.nav.setFixedWidth(150)
        self.nav.setIconSize(self.nav.iconSize() * 1.2)
        self.nav.setStyleSheet("QListWidget#pageList::item { padding: 10px 6px; }")
        self.stack = QStackedWidget()
        self.pages: dict[str, QWidget] = {}
        for key, title, cls in PAGES:
            page = cls(self.ctx)
            page.setObjectName(f"{key}Page")
            self.pages[key] = page
            self.ctx.pages[key] = page
            self.stack.addWidget(page)
            item = QListWidgetItem(self.style().standardIcon(PAGE_ICONS[key]), title)
            item.setData(Qt.ItemDataRole.UserRole, key)
            self.nav.addItem(item)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)

        self.banner = QuickstartBanner()
        self.banner.run_clicked.connect(self.run_quickstart)
        self.banner.dismissed.connect(self._dismiss_quickstart)
        if show_quickstart is None:
            show_quickstart = not self._bool_setting("quickstart/offered", False)
        self.banner.setVisible(show_quickstart)

        # what start-up repaired (a damaged file moved aside, a read-only chat history): never blocking
        self.notice_banner = NoticeBanner()
        for notice in self.ctx.notices:
            self.notice_banner.add(notice)
        store = self.pages["chat"].store
        for notice in store.notices:
            self.notice_banner.add(notice)
        store.on_notice = self.notice_banner.add  # damaged rows found later (opening a chat)

        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        # banners under the pages: when one goes (dismissed, or the quickstart starts) nothing on a page moves
        right.addWidget(self.stack, 1)
        right.addWidget(self.notice_banner)
        right.addWidget(self.banner)
        central = QWidget()
        lay = QHBoxLayout(central)
        lay.setContentsMargins(6, 6, 6, 0)
        lay.addWidget(self.nav)
        lay.addLayout(right, 1)
        self.setCentralWidget(central)

        # status bar: device (left), running job (right)
        self.device_label = QLabel("device: probing…")
        self.job_label = QLabel("idle")
        self.job_label.setObjectName("jobLabel")
        self.statusBar().addWidget(self.device_label, 1)
        self.statusBar().addPermanentWidget(self.job_label)
        w = self.ctx.worker
        w.started.connect(lambda name: self.job_label.setText(f"running: {name}"))
        w.busy_changed.connect(self._on_busy)
        w.progress.connect(self._on_progress)
        w.failed.connect(self._on_failed)
        self._probe = _DeviceProbe(self)
        self._probe.found.connect(self._on_device)
        QTimer.singleShot(0, self._probe.start)

        self._install_shortcuts()
        self._restore_geometry()
        self.show_page(str(self.ctx.settings.value("window/page", "data")))

    # ------------------------------------------------------------ navigation

    def _install_shortcuts(self) -> None:
        """Ctrl+Q quits (through closeEvent, so a running job is asked about); Ctrl+1…6 pick a page
        (in the side list's order)."""
        self.quit_shortcut = QShortcut(QKeySequence("Ctrl+Q"), self)
        self.quit_shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        # queued: the key release reaches the window before it closes (no modifier is left "held")
        self.quit_shortcut.activated.connect(self.close, Qt.ConnectionType.QueuedConnection)
        self.page_shortcuts: list[QShortcut] = []
        for i, (key, title, _cls) in enumerate(PAGES, start=1):
            sc = QShortcut(QKeySequence(f"Ctrl+{i}"), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)  # a second window would make it ambiguous
            sc.activated.connect(lambda k=key: self.show_page(k))
            self.page_shortcuts.append(sc)
            self.nav.item(i - 1).setToolTip(f"{title} (Ctrl+{i})")

    def show_page(self, key: str) -> QWidget:
        keys = [p[0] for p in PAGES]
        if key not in keys:
            key = "data"
        self.nav.setCurrentRow(keys.index(key))
        return self.pages[key]

    def current_page_key(self) -> str:
        return PAGES[self.stack.currentIndex()][0]

    # ------------------------------------------------------------ status bar

    def _on_device(self, text: str) -> None:
        self.device_label.setText(f"device: {text}")

    def _on_busy(self, busy: bool) -> None:
        if not busy:
            self.job_label.setText("idle")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        name = self.ctx.worker.job_name
        if name:
            pct = f" {100 * done // total}%" if total > 0 else ""
            self.job_label.setText(f"running: {name}{pct}")

    def _on_failed(self, message: str, traceback: str) -> None:
        # The page that started the job may show the failure itself; report the ones nobody claims.
        if getattr(self.ctx.worker.owner, "handles_job_errors", False):
            return
        show_error(self, "The job failed", message, traceback)

    # ------------------------------------------------------------ quickstart

    def _bool_setting(self, key: str, default: bool) -> bool:
        v = self.ctx.settings.value(key, default)
        return v in (True, "true", "1", 1)

    def _dismiss_quickstart(self) -> None:
        self.banner.hide()
        self.ctx.settings.setValue("quickstart/offered", True)

    def run_quickstart(self) -> None:
        """The demo flow: the Data page generates, the Train page trains kala-tiny on it (live
        plots, Pause/Cancel), then the Chat page opens a new chat with the new model.

        The sizes come from the settings ``quickstart/count`` and ``quickstart/steps`` when set
        (tests use a tiny run), else ``engine_api.QUICKSTART_COUNT`` / ``QUICKSTART_STEPS``; any
        other ``quickstart/<hyperparameter>`` setting overrides that Train page field.
        """
        self._dismiss_quickstart()
        data = self.pages["data"]
        train = self.pages["train"]
        s = self.ctx.settings
        s.beginGroup("quickstart")
        given = {k: s.value(k) for k in s.childKeys() if k != "offered"}
        s.endGroup()
        count = int(given.pop("count", engine_api.QUICKSTART_COUNT))
        steps = int(given.pop("steps", engine_api.QUICKSTART_STEPS))
        self.show_page("data")

        def after_train(run_dir):
            self.pages["chat"].open_model(Path(run_dir) / "final")
            self.show_page("chat")

        def after_generate(path):
            self.show_page("train")
            train.start_quickstart(path, then=after_train, steps=steps, overrides=given)

        data.generate(count=count, seed=0, then=after_generate)

    # ------------------------------------------------------------ geometry and closing

    def _restore_geometry(self) -> None:
        geo = self.ctx.settings.value("window/geometry")
        if not isinstance(geo, (QByteArray, bytes)) or not self.restoreGeometry(geo):  # absent or damaged
            self.resize(1280, 800)
        state = self.ctx.settings.value("window/state")
        if isinstance(state, (QByteArray, bytes)):
            self.restoreState(state)

    def save_settings(self) -> None:
        s = self.ctx.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/state", self.saveState())
        s.setValue("window/page", self.current_page_key())
        for page in self.pages.values():
            if hasattr(page, "save_settings"):
                page.save_settings()
        s.sync()

    def ask_to_stop_job(self) -> bool:
        """Ask whether to stop the running job; separate so tests can replace it."""
        name = self.ctx.worker.job_name
        answer = QMessageBox.question(
            self,
            "A job is running",
            f"'{name}' is still running. Stop it and quit?\n\n"
            "A training run saves a checkpoint first and can be resumed from the Train page.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        worker = self.ctx.worker
        if worker.is_busy() and not self.ask_to_stop_job():
            event.ignore()
            return
        self.job_label.setText("stopping…")
        self.save_settings()
        for page in self.pages.values():
            if hasattr(page, "shutdown"):
                page.shutdown()
        worker.shutdown(timeout_s=60.0)
        event.accept()
