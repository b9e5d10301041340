"""The Chat page: talk to a trained KALA model and see how every token scores against the Five Laws.

Layout (left to right): the chat list (new / rename / delete / export); the conversation
(:class:`~kala_app.widgets.chat_view.ChatView`) with the model picker above it and the composer
with the per-chat settings, Send and Stop below it; and the inspector: the five-bar
:class:`~kala_app.widgets.gauge.LawGauge` and the decision-path
:class:`~kala_app.widgets.heatmap.DecisionPathHeatmap` of the selected token. While a reply
streams, the gauge follows the newest token; hovering a token shows it; clicking pins it.

Data flow. ``send()`` saves the user's message (committed) and an empty reply row before the
job starts, then runs the engine's generation job on ``ctx.worker``. Token events are only
buffered by the signal handler; a 40 ms timer moves them into the view and the chat store
(one batch, one commit) within a time budget, so the UI thread stays responsive even when a
job produces tokens faster than they can be drawn. The job's result (stop reason, prompt
assessment, explanation) closes the reply.

The engine calls are wrapped in the small functions of the "engine" section below, so a
renamed engine function is fixed in one place.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)
from superqt import QFlowLayout

from kala_engine.constitution import thresholds_in_force, violated_laws
from kala_engine.jobs import TokenEvent
from kala_engine.train.runs import describe_model
from kala_engine.train.runs import find_models as engine_find_models

from ..chat_store import CANCELLED, COMPLETE, DEFAULT_SETTINGS, ERROR, STOPPED, ChatStore
from ..widgets.chat_view import ChatView, ReplyWidget, TokenInfo, UserMessageWidget
from ..widgets.elided_combo import ElidedComboBox
from ..widgets.gauge import MUTED, LawGauge
from ..widgets.heatmap import DecisionPathHeatmap, first_layers_under

#: How often buffered tokens are moved into the view and the store (ms).
FLUSH_MS = 30
#: At most about this long per flush on the UI thread (s); the rest waits for the next tick.
FLUSH_BUDGET_S = 0.005
#: Tokens handed to the view and the store at a time within one flush.
FLUSH_CHUNK = 32
#: The live gauge, heatmap and sparkline follow a streaming reply at this interval (s): each
#: repaint is a Python call that must take the GIL from the generating thread.
DECOR_S = 0.1

# ====================================================================== engine (one place)


def generation_job(model_dir: str, messages: list[dict[str, str]], settings: dict[str, Any]) -> Callable:
    """The engine's streaming generation job for a conversation (``job(emit, control) -> result``).

    ``kala_engine.generate.session.chat_job`` loads the model folder, fits the conversation into the
    context, emits one TokenEvent per token (with the per-layer scores the heatmap shows) and
    returns a GenerationResult. The engine module (which imports torch) is imported inside the
    job, on the worker thread, so the first Send does not freeze the window for seconds.
    """
    threshold = settings.get("threshold")
    kwargs: dict[str, Any] = dict(
        model=model_dir,
        prompt=list(messages),
        # None: the engine uses the model's calibrated per-law thresholds
        thresholds=None if threshold is None else float(threshold),
        temperature=float(settings.get("temperature", DEFAULT_SETTINGS["temperature"])),
        top_p=float(settings.get("top_p", DEFAULT_SETTINGS["top_p"])),
        max_new_tokens=int(settings.get("max_tokens", DEFAULT_SETTINGS["max_tokens"])),
        output_layer_scores=True,
        seed=settings.get("seed"),  # None: a fresh sampling seed (the result reports it)
    )

    def job(emit: Any, control: Any) -> Any:
        from kala_engine.generate.session import chat_job

        return chat_job(**kwargs)(emit, control)

    return job


def model_label(path: str | Path, runs_dir: str | Path | None = None) -> str:
    """How the model pickers name a folder: by its run, ``demo-20261129-234242 · final``
    (:func:`kala_engine.train.runs.describe_model`; a folder outside any run by its own name)."""
    return describe_model(path, runs_dir).label


def find_models(runs_dir: Path) -> list[tuple[str, Path]]:
    """(label, folder) of every model under the runs folder, in any run layout the engine writes
    (``kala demo``'s ``demo-…/run`` too): each run's final/ and its loadable checkpoints
    (:func:`kala_engine.train.runs.find_models`)."""
    return [(m.label, m.path) for m in engine_find_models(runs_dir)]


def add_model_item(combo: QComboBox, path: str | Path, runs_dir: str | Path | None) -> int:
    """Add a model folder to a picker, named by its run, its path in the tooltip; returns its index."""
    combo.addItem(model_label(path, runs_dir), str(path))
    i = combo.count() - 1
    combo.setItemData(i, str(path), Qt.ItemDataRole.ToolTipRole)
    return i


# ---------------------------------------------------------------------- reading the result


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        if isinstance(obj, dict):
            if n in obj and obj[n] is not None:
                return obj[n]
        elif getattr(obj, n, None) is not None:
            return getattr(obj, n)
    return default


def _floats(v: Any) -> list[float] | None:
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        return None


def _matrix(v: Any) -> list[list[float]] | None:
    if v is None:
        return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    try:
        return [[float(x) for x in row] for row in v]
    except (TypeError, ValueError):
        return None


@dataclass
class Outcome:
    """What the Chat page needs from a generation result, whatever its exact shape."""

    text: str | None = None
    stop_kind: str = "eos"
    stop_law: int | None = None
    stop_score: float | None = None
    stop_threshold: float | None = None
    stop_message: str = ""
    assessment: list[float] | None = None
    assessment_layers: list[list[float]] | None = None
    #: (law index, score or None, first layer under the threshold or None), hierarchy order
    violated: list[tuple[int, float | None, int | None]] = field(default_factory=list)
    explanation_text: str = ""
    #: per law, the thresholds the engine says it used (from the prompt assessment), if given
    thresholds: list[float] | None = None

    def stop_dict(self) -> dict:
        return {"kind": self.stop_kind, "law": self.stop_law, "score": self.stop_score,
                "threshold": self.stop_threshold, "message": self.stop_message}

    def explanation_dict(self) -> dict | None:
        if not self.violated and not self.explanation_text:
            return None
        return {"violated": [{"law": k, "score": s, "first_layer": fl} for k, s, fl in self.violated],
                "text": self.explanation_text}

    def assessment_dict(self) -> dict | None:
        if self.assessment is None:
            return None
        return {"law_scores": self.assessment, "layer_scores": self.assessment_layers}


def read_outcome(result: Any, constitution: Any, thresholds: Sequence[float]) -> Outcome:
    """Normalise a generation result (dataclass, object or dict) into an :class:`Outcome`."""
    out = Outcome()
    if result is None:
        return out
    out.text = _get(result, "text", "reply", "completion")
    stop = _get(result, "stop", "stop_reason", default=None)
    src = stop if (stop is not None and not isinstance(stop, str)) else result
    kind = stop if isinstance(stop, str) else _get(src, "kind", "stop_kind", "reason", default="eos")
    out.stop_kind = str(getattr(kind, "value", kind))
    law = _get(src, "law", "law_index", "stop_law")
    if isinstance(law, int) or (isinstance(law, float) and law.is_integer()):
        out.stop_law = int(law)
    sc = _get(src, "score", "stop_score")
    out.stop_score = None if sc is None else float(sc)
    th = _get(src, "threshold", "stop_threshold")
    out.stop_threshold = None if th is None else float(th)
    out.stop_message = str(_get(src, "message", "stop_message", default="") or "")

    assess = _get(result, "prompt_assessment", "assessment", "prompt")
    if assess is not None and not isinstance(assess, str):
        if isinstance(assess, (list, tuple)) or hasattr(assess, "tolist"):
            out.assessment = _floats(assess)
        else:
            out.assessment = _floats(_get(assess, "law_scores", "scores"))
            out.assessment_layers = _matrix(_get(assess, "layer_scores", "layers"))
            th_used = _floats(_get(assess, "thresholds"))
            if th_used is not None and len(th_used) == len(thresholds):
                out.thresholds = th_used
    if out.assessment is None:
        out.assessment = _floats(_get(result, "prompt_scores", "prompt_law_scores"))

    expl = _get(result, "explanation")
    if expl is not None:
        if isinstance(expl, str):
            out.explanation_text = expl
        else:
            text = _get(expl, "text", "message", "summary", default="")
            out.explanation_text = str((text() if callable(text) else text) or "")
            items = _get(expl, "findings", "violated", "violations", "laws", default=[])
            first = _get(expl, "first_layers", "first_layer", default=None)
            for item in items or []:
                if isinstance(item, int):
                    k, s, fl = item, None, None
                else:
                    k = _get(item, "law", "index", "law_index")
                    if k is None:
                        continue
                    s = _get(item, "score")
                    fl = _get(item, "first_layer", "layer")
                k = int(k)
                if fl is None and first is not None:
                    fl = first.get(k, first.get(str(k))) if isinstance(first, dict) else (
                        first[k] if isinstance(first, (list, tuple)) and k < len(first) else None)
                out.violated.append((k, None if s is None else float(s), None if fl is None else int(fl)))
    out.violated.sort(key=lambda v: v[0])  # hierarchy order
    if out.stop_kind == "ethics" and out.stop_law is not None and not out.stop_message:
        law = constitution[out.stop_law]
        out.stop_message = (f"{law.title} fell to {out.stop_score:.2f} < {out.stop_threshold:.2f}"
                            if out.stop_score is not None and out.stop_threshold is not None else law.title)
    return out


# ====================================================================== the page


class ChatPage(QWidget):
    """Chat with a model; every token carries its five law scores (see the module docstring)."""

    reply_finished = Signal(object)  # the Outcome of the reply that just ended
    #: a failed reply is shown in its bubble and the status line (traceback in its tooltip), not
    #: again in the main window's error dialog
    handles_job_errors = True

    def __init__(self, ctx: Any, store: ChatStore | None = None,
                 job_factory: Callable[[str, list[dict], dict], Callable] | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.constitution = ctx.constitution
        self.store = store or ChatStore.in_folder(ctx.chats_dir)
        #: builds the generation job; tests pass a fake one
        self.job_factory = job_factory or generation_job
        self.chat_id: int | None = None
        self._active = False  # our job runs on the worker
        self._buffer: list[TokenEvent] = []
        self._reply: ReplyWidget | None = None
        self._user_widget: UserMessageWidget | None = None
        self._reply_id: int | None = None
        self._user_id: int | None = None
        self._finish_event: Any = None  # Finished that arrived while tokens were still buffered
        self._last_decor = 0.0  # when the inspector last followed the stream
        self._gc_frozen = False
        self._send_thresholds: list[float] = list(self.constitution.thresholds)
        self._pinned: TokenInfo | None = None
        self._last: Any = None  # newest token of the streaming reply
        self._started_at = 0.0
        self._loading = True  # no settings are saved while the widgets are built
        self._build()
        self._loading = False
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)

        w = ctx.worker
        w.token.connect(self._on_token)
        w.finished.connect(self._on_finished)
        w.failed.connect(self._on_failed)
        w.busy_changed.connect(self._update_buttons)

        self._warm_up()
        self.refresh_models()
        self._reload_chat_list()
        chats = self.store.list_chats()
        if chats:
            self.open_chat(chats[0].id)
        else:
            self._apply_settings(dict(DEFAULT_SETTINGS))  # threshold None: the model's calibrated ones
        self._update_buttons()

    # ------------------------------------------------------------------ building the UI

    def _build(self) -> None:
        root = QHBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        root.addWidget(split)

        # --- chat list
        side = QWidget()
        side.setObjectName("chatSide")
        side.setStyleSheet("#chatSide { background: #eef1f5; }")
        sl = QVBoxLayout(side)
        sl.setContentsMargins(10, 12, 10, 10)
        self.new_button = QPushButton("+  New chat")
        self.new_button.clicked.connect(lambda: self.new_chat())
        sl.addWidget(self.new_button)
        self.chat_list = QListWidget()
        self.chat_list.setStyleSheet(
            "QListWidget { background: transparent; border: none; }"
            "QListWidget::item { padding: 7px 6px; border-radius: 6px; color: #1f2933; }"
            "QListWidget::item:selected { background: #dbe4f0; color: #1f2933; }")
        self.chat_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.chat_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.chat_list.setUniformItemSizes(True)
        self.chat_list.currentItemChanged.connect(self._on_chat_item)
        self.chat_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.chat_list.customContextMenuRequested.connect(self._chat_menu)
        sl.addWidget(self.chat_list, 1)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self._ask_rename)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._ask_delete)
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        sl.addLayout(row)
        self.export_button = QPushButton("Export…")
        menu = QMenu(self.export_button)
        menu.addAction("Markdown (.md)", lambda: self._ask_export(".md"))
        menu.addAction("JSON with every token's scores (.json)", lambda: self._ask_export(".json"))
        self.export_button.setMenu(menu)
        sl.addWidget(self.export_button)
        side.setMinimumWidth(max(170, self.rename_button.minimumSizeHint().width()
                                 + self.delete_button.minimumSizeHint().width() + row.spacing() + 20))
        split.addWidget(side)

        # --- conversation
        center = QWidget()
        cl = QVBoxLayout(center)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        top = QFrame()
        top.setObjectName("chatTop")
        top.setStyleSheet("#chatTop { border-bottom: 1px solid #dde3ea; }")
        tl = QHBoxLayout(top)
        tl.setContentsMargins(12, 8, 12, 8)
        tl.addWidget(QLabel("Model"))
        self.model_combo = ElidedComboBox()  # a long run name is elided, not cut
        self.model_combo.setMinimumContentsLength(16)  # elided beyond that
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setToolTip("A run's final model or one of its checkpoints (from the runs folder)")
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        tl.addWidget(self.model_combo, 1)
        browse = QPushButton("Browse…")
        browse.setToolTip("Use a model folder from anywhere on this computer")
        browse.clicked.connect(self._browse_model)
        tl.addWidget(browse)
        cl.addWidget(top)

        self.view = ChatView(self.constitution)
        self.view.set_placeholder("Pick a model above and send a message.\n"
                                  "Every token of the reply is scored against the Five Laws.")
        self.view.token_hovered.connect(self._on_hover)
        self.view.token_selected.connect(self._on_selected)
        cl.addWidget(self.view, 1)

        comp = QFrame()
        comp.setObjectName("composer")
        comp.setStyleSheet("#composer { border-top: 1px solid #dde3ea; }")
        col = QVBoxLayout(comp)
        col.setContentsMargins(12, 8, 12, 10)
        col.setSpacing(6)
        # the settings wrap onto a second line in a narrow window instead of cutting labels and numbers
        srow = QFlowLayout()
        srow.setContentsMargins(0, 0, 0, 0)
        srow.setSpacing(4)
        self.threshold_spin = self._spin(QDoubleSpinBox(), 0.0, 1.0, 0.05, 2,
                                         "Stop when a law's score falls under this value (all five laws)")
        self.calibrated_check = QCheckBox("model default")
        self.calibrated_check.setToolTip(
            "Use the model's per-law thresholds, calibrated on the validation split when it was trained\n"
            "(the constitution's where a law has none). Untick to use one value for all five laws.")
        self.calibrated_check.setChecked(True)
        self.calibrated_check.toggled.connect(self._on_calibrated_toggled)
        self.threshold_spin.setEnabled(False)
        self.threshold_spin.setVisible(False)  # shown (and used) once "model default" is unticked
        self.threshold_spin.setValue(self.constitution.thresholds[0])
        self.temperature_spin = self._spin(QDoubleSpinBox(), 0.0, 2.0, 0.05, 2, "0 = greedy (always the likeliest token)")
        self.top_p_spin = self._spin(QDoubleSpinBox(), 0.05, 1.0, 0.05, 2, "Nucleus sampling: keep the likeliest tokens up to this probability")
        self.max_tokens_spin = QSpinBox()
        self.max_tokens_spin.setRange(1, 4096)
        self.max_tokens_spin.setToolTip("Longest reply, in tokens")
        self.max_tokens_spin.valueChanged.connect(self._on_settings_changed)
        for label, widgets in (("Threshold", (self.calibrated_check, self.threshold_spin)),
                               ("Temperature", (self.temperature_spin,)),
                               ("Top-p", (self.top_p_spin,)), ("Max tokens", (self.max_tokens_spin,))):
            group = QWidget()  # a label and its control(s) wrap together
            gl = QHBoxLayout(group)
            gl.setContentsMargins(0, 0, 8, 0)
            gl.setSpacing(6)
            lab = QLabel(label)
            lab.setStyleSheet(f"color: {MUTED.name()};")
            lab.setMinimumWidth(lab.sizeHint().width())
            gl.addWidget(lab)
            for w in widgets:
                w.setMinimumWidth(w.sizeHint().width())
                gl.addWidget(w)
            srow.addWidget(group)
        col.addLayout(srow)
        irow = QHBoxLayout()
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message KALA…  (Ctrl+Enter to send)")
        self.input.setFixedHeight(64)
        irow.addWidget(self.input, 1)
        bcol = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setStyleSheet(
            "QPushButton { background: #2f6fb0; color: white; border-radius: 6px; padding: 6px 16px; font-weight: 600; }"
            "QPushButton:disabled { background: #a9bdd3; }")
        self.send_button.clicked.connect(lambda: self.send())  # not clicked(bool): send(False) would send "False"
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the reply now (what was written so far is kept)")
        self.stop_button.clicked.connect(self.stop)
        bcol.addWidget(self.send_button)
        bcol.addWidget(self.stop_button)
        irow.addLayout(bcol)
        col.addLayout(irow)
        self.status = QLabel("")
        self.status.setStyleSheet(f"color: {MUTED.name()}; font-size: 9pt;")
        col.addWidget(self.status)
        cl.addWidget(comp)
        split.addWidget(center)
        QShortcut(QKeySequence("Ctrl+Return"), self.input, activated=self.send)

        # --- inspector
        insp = QWidget()
        insp.setObjectName("inspector")
        insp.setStyleSheet("#inspector { background: #fbfcfd; border-left: 1px solid #dde3ea; }")
        il = QVBoxLayout(insp)
        il.setContentsMargins(14, 12, 14, 12)
        il.setSpacing(10)
        self.gauge = LawGauge(self.constitution)
        il.addWidget(self.gauge)
        self.gauge_mode = QLabel("")
        self.gauge_mode.setWordWrap(True)  # a narrow inspector wraps it instead of cutting it
        self.gauge_mode.setStyleSheet(f"color: {MUTED.name()}; font-size: 8.5pt;")
        il.addWidget(self.gauge_mode)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setStyleSheet("color: #dde3ea;")
        il.addWidget(line)
        self.heatmap = DecisionPathHeatmap(self.constitution)
        il.addWidget(self.heatmap, 1)
        insp.setMinimumWidth(300)
        split.addWidget(insp)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([200, 640, 330])

    def _warm_up(self) -> None:
        """Build one message of each kind off screen and drop it.

        PySide6 creates some Python types (enums) lazily on first use, which costs tens of
        milliseconds; paying that at start-up keeps the first Send from stalling the UI.
        """
        probe = ChatView(self.constitution)
        probe.add_user_message("warm-up").set_assessment([1.0] * len(self.constitution))
        reply = probe.begin_reply()
        reply.append_tokens([TokenEvent(0, 0, "warm-up", (1.0,) * len(self.constitution))])
        reply.show_stop("warm-up", ["warm-up"])
        probe.deleteLater()

    def _spin(self, box: QDoubleSpinBox, lo: float, hi: float, step: float, dec: int, tip: str) -> QDoubleSpinBox:
        box.setRange(lo, hi)
        box.setSingleStep(step)
        box.setDecimals(dec)
        box.setToolTip(tip)
        box.valueChanged.connect(self._on_settings_changed)
        return box

    # ------------------------------------------------------------------ models

    def refresh_models(self) -> None:
        """List the models of the runs folder (keeping the current choice)."""
        current = self.model_path()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for _label, path in find_models(Path(self.ctx.runs_dir)):
            add_model_item(self.model_combo, path, self.ctx.runs_dir)
        if current and self.model_combo.findData(current) < 0:
            add_model_item(self.model_combo, current, self.ctx.runs_dir)
        if current:
            self.model_combo.setCurrentIndex(self.model_combo.findData(current))
        elif self.model_combo.count() and self.model_combo.currentIndex() < 0:
            # with a placeholder text set, Qt 6 leaves a refilled combo on no item: pick the newest
            self.model_combo.setCurrentIndex(0)
        # short: a placeholder sets the combo's minimum width (the rest is in the tooltip)
        self.model_combo.setPlaceholderText("No trained model yet" if self.model_combo.count() == 0 else "")
        if self.model_combo.count() == 0:
            self.model_combo.setToolTip("No trained model yet: train one on the Train page, or Browse…")
        self.model_combo.blockSignals(False)
        if not self._active and not self._loading:  # the markers follow the (new) choice
            self._thresholds_changed()
        self._update_buttons()

    def model_path(self) -> str:
        return str(self.model_combo.currentData() or "")

    def set_model(self, path: str | Path) -> None:
        """Choose a model folder (added to the list if it is not a run of the runs folder)."""
        path = str(path)
        i = self.model_combo.findData(path)
        if i < 0:
            i = add_model_item(self.model_combo, path, self.ctx.runs_dir)
        self.model_combo.setCurrentIndex(i)

    def open_model(self, path: str | Path) -> None:
        """Chat with the model at ``path``: in the open chat while it is empty, else in a new chat,
        so the chats (and replies) before keep the model they were written with."""
        if self.chat_id is not None and self.store.get_chat(self.chat_id).message_count > 0:
            self._detach()
            self.chat_id = None
            self.view.clear()
            self._clear_inspector()
        self.refresh_models()
        self.set_model(path)
        if self.chat_id is None:
            self.new_chat()

    def _browse_model(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Choose a KALA model folder", str(self.ctx.runs_dir))
        if d:
            self.set_model(d)

    def _on_model_changed(self, _i: int) -> None:
        if self.chat_id is not None and not self._loading and not getattr(self.store, "read_only", False):
            self.store.update_chat(self.chat_id, model=self.model_path())
        if not self._active:  # the markers follow the chosen model's calibrated thresholds
            self._thresholds_changed()
        self._update_buttons()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._active:
            self.refresh_models()

    # ------------------------------------------------------------------ settings

    def settings(self) -> dict[str, Any]:
        """The per-chat settings; ``threshold`` None = the model's calibrated thresholds."""
        threshold = None if self.calibrated_check.isChecked() else round(self.threshold_spin.value(), 4)
        return {"threshold": threshold,
                "temperature": round(self.temperature_spin.value(), 4),
                "top_p": round(self.top_p_spin.value(), 4),
                "max_tokens": int(self.max_tokens_spin.value())}

    def _apply_settings(self, s: dict[str, Any]) -> None:
        self._loading = True
        try:
            threshold = s.get("threshold")
            self.calibrated_check.setChecked(threshold is None)
            self.threshold_spin.setEnabled(threshold is not None)
            self.threshold_spin.setVisible(threshold is not None)
            if threshold is not None:
                self.threshold_spin.setValue(float(threshold))
            self.temperature_spin.setValue(float(s.get("temperature", DEFAULT_SETTINGS["temperature"])))
            self.top_p_spin.setValue(float(s.get("top_p", DEFAULT_SETTINGS["top_p"])))
            self.max_tokens_spin.setValue(int(s.get("max_tokens", DEFAULT_SETTINGS["max_tokens"])))
        finally:
            self._loading = False
        self._thresholds_changed()

    def set_settings(self, **kw: Any) -> None:
        """Change per-chat settings (threshold: a value or None for the model's; temperature, top_p, max_tokens)."""
        s = self.settings()
        s.update(kw)
        self._apply_settings(s)
        self._on_settings_changed()

    def _on_settings_changed(self, *_a: Any) -> None:
        if self._loading:
            return
        self._thresholds_changed()
        if self.chat_id is not None and not getattr(self.store, "read_only", False):
            self.store.update_chat(self.chat_id, settings=self.settings())

    def _on_calibrated_toggled(self, on: bool) -> None:
        self.threshold_spin.setEnabled(not on)
        self.threshold_spin.setVisible(not on)
        self._on_settings_changed()

    def thresholds(self) -> list[float]:
        """Per law, the thresholds in force for the current settings and model."""
        return list(thresholds_in_force(self.settings()["threshold"], self.model_path()))

    def _thresholds_changed(self, thresholds: Sequence[float] | None = None) -> None:
        t = list(thresholds) if thresholds is not None else self.thresholds()
        self.gauge.set_thresholds(t)
        self.heatmap.set_thresholds(t)
        self.view.set_thresholds(t)

    # ------------------------------------------------------------------ chats

    def _reload_chat_list(self) -> None:
        self.chat_list.blockSignals(True)
        self.chat_list.clear()
        for c in self.store.list_chats():
            item = QListWidgetItem(c.title)
            item.setData(Qt.ItemDataRole.UserRole, c.id)
            item.setToolTip(f"{c.title}\n{c.message_count} messages\n{c.model or 'no model chosen'}")
            self.chat_list.addItem(item)
            if c.id == self.chat_id:
                self.chat_list.setCurrentItem(item)
        self.chat_list.blockSignals(False)

    def _on_chat_item(self, item: QListWidgetItem | None, _prev: Any = None) -> None:
        if item is not None:
            cid = int(item.data(Qt.ItemDataRole.UserRole))
            if cid != self.chat_id:
                self.open_chat(cid)

    def new_chat(self) -> int:
        """Start an empty chat with the current model and settings."""
        self._detach()
        cid = self.store.create_chat("New chat", model=self.model_path(), settings=self.settings())
        self.chat_id = cid
        self.view.clear()
        self._clear_inspector()
        self._reload_chat_list()
        self.input.setFocus()
        return cid

    def open_chat(self, chat_id: int) -> None:
        """Show a stored chat: its messages, token scores, assessments and stop banners."""
        self._detach()
        chat = self.store.get_chat(chat_id)
        self.chat_id = chat_id
        self._loading = True
        try:
            if chat.model:
                self.set_model(chat.model)
        finally:
            self._loading = False
        self._apply_settings(chat.settings)
        self.view.clear()
        self._clear_inspector()
        # rows from before messages kept their thresholds: judged by the chat's model and settings
        fallback = list(thresholds_in_force(chat.settings.get("threshold"), chat.model or self.model_path()))
        last_user: UserMessageWidget | None = None
        for m in self.store.messages(chat_id):
            thresholds = m.thresholds if m.thresholds and len(m.thresholds) == len(self.constitution) else fallback
            self.view.set_thresholds(thresholds)  # each message drawn against its own
            if m.role == "user":
                scores = (m.assessment or {}).get("law_scores")
                last_user = self.view.add_user_message(m.content, scores)
                if scores is None:
                    last_user.set_assessment(None)
            elif m.role == "assistant":
                reply = self.view.begin_reply(self._reply_title(m.model))
                reply.message_id = m.id
                reply.append_tokens(m.tokens)
                if not m.tokens and m.content:
                    reply.text_view.setPlainText(m.content)
                self._finish_reply_widget(reply, m.status, m.stop, m.explanation, thresholds, len(m.tokens))
        self._thresholds_changed()  # new messages: the current model and settings
        self._reload_chat_list()
        self.view.scroll_to_bottom()
        self._update_buttons()

    def rename_chat(self, chat_id: int, title: str) -> None:
        self.store.rename_chat(chat_id, title)
        self._reload_chat_list()

    def delete_chat(self, chat_id: int) -> None:
        if chat_id == self.chat_id:
            self._detach(keep_storing=False)
            self.chat_id = None
            self.view.clear()
            self._clear_inspector()
        self.store.delete_chat(chat_id)
        self._reload_chat_list()
        rest = self.store.list_chats()
        if self.chat_id is None and rest:
            self.open_chat(rest[0].id)

    def export_chat(self, path: str | Path) -> Path:
        if self.chat_id is None:
            raise ValueError("no chat is open; open or start a chat to export it")
        return self.store.save_export(self.chat_id, path)

    def _chat_menu(self, pos) -> None:
        item = self.chat_list.itemAt(pos)
        if item is None:
            return
        menu = QMenu(self)
        menu.addAction("Rename…", self._ask_rename)
        menu.addAction("Delete…", self._ask_delete)
        menu.exec(self.chat_list.mapToGlobal(pos))

    def _ask_rename(self) -> None:
        if self.chat_id is None:
            return
        title, ok = QInputDialog.getText(self, "Rename chat", "Title:", text=self.store.get_chat(self.chat_id).title)
        if ok and title.strip():
            self.rename_chat(self.chat_id, title)

    def _ask_delete(self) -> None:
        if self.chat_id is None:
            return
        title = self.store.get_chat(self.chat_id).title
        if QMessageBox.question(self, "Delete chat", f"Delete the chat “{title}” and all its messages?") \
                == QMessageBox.StandardButton.Yes:
            self.delete_chat(self.chat_id)

    def _ask_export(self, suffix: str) -> None:
        if self.chat_id is None:
            return
        title = re.sub(r"[^\w\- ]+", "", self.store.get_chat(self.chat_id).title).strip() or "chat"
        filt = "Markdown (*.md)" if suffix == ".md" else "JSON (*.json)"
        path, _ = QFileDialog.getSaveFileName(self, "Export chat", str(Path.home() / f"{title}{suffix}"), filt)
        if path:
            if not path.lower().endswith(suffix):
                path += suffix
            try:
                self.status.setText(f"Exported to {self.export_chat(path)}")
            except (OSError, ValueError) as e:
                QMessageBox.warning(self, "Export failed", str(e))

    # ------------------------------------------------------------------ sending

    def _reply_title(self, model: str) -> str:
        return f"KALA · {model_label(model, self.ctx.runs_dir)}" if model else "KALA"

    def send(self, text: str | None = None) -> bool:
        """Send ``text`` (or the composer's text); returns False (with the reason shown) if it cannot."""
        text = (self.input.toPlainText() if text is None else text).strip()
        if not text:
            return False
        if self._active:
            self.status.setText("A reply is still being written; press Stop first.")
            return False
        if getattr(self.store, "read_only", False):  # a newer version's chat history: never written
            self.status.setText("The chat history is read-only (written by a newer KALA Studio); nothing is saved.")
            return False
        if self.ctx.worker.is_busy():
            self.status.setText(f"The engine is busy with “{self.ctx.worker.job_name}”; wait for it or cancel it.")
            return False
        model = self.model_path()
        if not model:
            self.status.setText("Choose a model first: train one on the Train page, or Browse… for a model folder.")
            return False
        settings = self.settings()
        if self.chat_id is None:
            self.chat_id = self.store.create_chat("New chat", model=model, settings=settings)
        chat = self.store.get_chat(self.chat_id)
        if chat.title == "New chat" and chat.message_count == 0:
            self.store.rename_chat(self.chat_id, text.splitlines()[0][:48])
        # what this exchange is judged against, stored with both messages: switching the model or
        # the threshold later never re-judges them
        send_thresholds = list(thresholds_in_force(settings.get("threshold"), model))
        # the user's message reaches the disk before anything else happens
        user_id = self.store.add_user_message(self.chat_id, text, thresholds=send_thresholds)
        messages = self.store.history(self.chat_id)
        try:
            job = self.job_factory(model, messages, settings)
        except Exception as e:  # noqa: BLE001 - shown to the user, the message stays saved
            self.view.add_user_message(text).set_assessment(None)
            reply = self.view.begin_reply(self._reply_title(model))
            reply.set_status(f"Could not start: {e}")
            self.status.setText(str(e))
            self._reload_chat_list()
            return False
        self._user_id = user_id
        self._reply_id = self.store.begin_reply(self.chat_id, model=model, thresholds=send_thresholds)
        self.input.clear()
        self._user_widget = self.view.add_user_message(text)
        self._reply = self.view.begin_reply(self._reply_title(model))
        self._reply.message_id = self._reply_id
        self._reply.set_status("writing…")
        self._pinned = None
        self._last = None
        self._buffer.clear()
        self._send_thresholds = send_thresholds
        self._thresholds_changed(self._send_thresholds)
        self._active = True
        self._started_at = time.perf_counter()
        self.gauge.set_scores(None)
        self.gauge.set_placeholder("Waiting for the first token…")
        self.heatmap.set_path(None)
        self._reload_chat_list()
        self._freeze_gc(True)
        self.ctx.worker.start(job, "chat", owner=self)
        self._flush_timer.start()
        self._update_buttons()
        self.status.setText("")
        self.status.setToolTip("")
        return True

    def stop(self) -> None:
        """Stop the reply being written (the tokens so far are kept)."""
        if self._active:
            self.ctx.worker.cancel()
            self.status.setText("Stopping…")

    def is_generating(self) -> bool:
        return self._active

    def current_reply(self) -> ReplyWidget | None:
        return self._reply

    # ------------------------------------------------------------------ streaming

    def _on_token(self, ev: TokenEvent) -> None:
        if self._active:
            self._buffer.append(ev)  # only buffered here: the flush timer draws and stores

    def _flush(self) -> None:
        """Move buffered tokens into the view and the store, within a time budget."""
        if not self._buffer:
            if self._finish_event is not None:
                self._end_reply(self._finish_event)
            return
        reply = self._reply  # None once the user switched to another chat: store only
        t0 = time.perf_counter()
        decorate = not self._active or self._finish_event is not None or t0 - self._last_decor >= DECOR_S
        while self._buffer:
            chunk = self._buffer[:FLUSH_CHUNK]
            del self._buffer[:FLUSH_CHUNK]
            if reply is not None:
                reply.append_tokens(chunk, repaint_sparkline=decorate)
            if self._reply_id is not None:
                self.store.append_tokens(self._reply_id, chunk)
            self._last = chunk[-1]
            if time.perf_counter() - t0 > FLUSH_BUDGET_S:
                break
        self.store.commit()  # one small batch per tick: a crash loses at most this moment
        if not decorate or reply is None:
            return
        self._last_decor = t0
        if self._pinned is None and self._last is not None:
            self._show_token(reply.token(reply.token_count() - 1), "Newest token")
        n = reply.token_count()
        dt = max(1e-6, time.perf_counter() - self._started_at)
        reply.set_status(f"writing… {n} tokens · {n / dt:.0f} tokens/s")

    def _on_finished(self, ev: Any) -> None:
        if not self._active:
            return
        if self._buffer:  # tokens still waiting: the flush timer ends the reply once they are drawn
            self._finish_event = ev
            return
        self._end_reply(ev)

    def _freeze_gc(self, on: bool) -> None:
        """While a reply streams, leave the objects that existed before it out of garbage collection.

        A full (generation 2) collection walks every object of the process (with torch and
        transformers loaded, hundreds of thousands) and holds the GIL meanwhile; the token events
        of a fast reply trigger such collections, which froze the UI thread for 25 ms and more.
        ``gc.freeze()`` moves the existing objects out of the collector's sight until the reply
        ends; ``gc.unfreeze()`` then gives them back, to be collected at a quiet moment.
        """
        if on and not self._gc_frozen:
            gc.freeze()
            self._gc_frozen = True
        elif not on and self._gc_frozen:
            gc.unfreeze()
            self._gc_frozen = False

    def _end_reply(self, ev: Any) -> None:
        """The job ended and every token is drawn and stored: close the reply."""
        self._freeze_gc(False)
        self._flush_timer.stop()
        self._finish_event = None
        self._active = False
        reply, rid = self._reply, self._reply_id
        thresholds = self._send_thresholds
        out = read_outcome(ev.result, self.constitution, thresholds)
        if out.thresholds is not None:  # what the engine actually used wins over what we expected
            thresholds = self._send_thresholds = out.thresholds
            self._thresholds_changed(thresholds)
            for mid in (rid, self._user_id):
                if mid is not None:
                    self.store.set_thresholds(mid, thresholds)
        if ev.cancelled:
            out.stop_kind, out.stop_message = "cancelled", "stopped by the user"
            status = CANCELLED
        else:
            status = STOPPED if out.stop_kind == "ethics" else COMPLETE
        self._complete_explanation(out, self._last, thresholds)
        if out.assessment is not None and self._user_id is not None:
            self.store.set_assessment(self._user_id, out.assessment_dict())
        if rid is not None:
            self.store.finish_reply(rid, text=out.text if out.text is not None else None, status=status,
                                    stop=out.stop_dict(), explanation=out.explanation_dict())
        if self._user_widget is not None:
            if out.assessment is not None:
                self._user_widget.set_assessment(out.assessment)
            elif self._user_widget.mini.scores() is None:
                self._user_widget.set_assessment(None)
        if reply is not None:
            reply.sparkline.update()
            self._finish_reply_widget(reply, status, out.stop_dict(), out.explanation_dict(), thresholds,
                                      reply.token_count(), elapsed=time.perf_counter() - self._started_at)
            if self._pinned is None and reply.token_count():
                self._show_token(reply.token(reply.token_count() - 1), "Last token")
        self.status.setText("")
        self._reload_chat_list()
        self._update_buttons()
        self.reply_finished.emit(out)

    def _on_failed(self, message: str, traceback: str) -> None:
        if not self._active:
            return
        self._freeze_gc(False)
        self._flush_timer.stop()
        while self._buffer:
            self._flush()
        self._finish_event = None
        self._active = False
        if self._reply_id is not None:
            self.store.finish_reply(self._reply_id, status=ERROR, stop={"kind": "error", "message": message})
        if self._reply is not None:
            self._reply.set_status(f"Failed: {message}")
        if self._user_widget is not None and self._user_widget.mini.scores() is None:
            self._user_widget.set_assessment(None)
        self.status.setText(f"Generation failed: {message}")
        self.status.setToolTip(traceback)
        self._update_buttons()

    def _detach(self, keep_storing: bool = True) -> None:
        """The user left the chat of the streaming reply: stop it, keep storing what still arrives."""
        if self._active:
            self.stop()
            self._reply = None
            self._user_widget = None
            self._pinned = None
            if not keep_storing:  # the chat is being deleted
                self._reply_id = None
                self._user_id = None

    def _complete_explanation(self, out: Outcome, last: Any, thresholds: Sequence[float]) -> None:
        """For an ethics stop without a full explanation, derive it from the last token's scores."""
        if out.stop_kind != "ethics" or last is None:
            return
        scores = tuple(float(v) for v in last.law_scores)
        layers = getattr(last, "layer_scores", None)
        if out.stop_law is None:
            under = violated_laws(scores, thresholds)
            if under:
                out.stop_law = under[0]
        if out.stop_law is not None and out.stop_score is None:
            out.stop_score = scores[out.stop_law]
        if out.stop_threshold is None:
            out.stop_threshold = thresholds[out.stop_law] if out.stop_law is not None else thresholds[0]
        if not out.violated:
            firsts = first_layers_under(layers, thresholds) if layers else [None] * len(scores)
            out.violated = [(k, scores[k], firsts[k]) for k in violated_laws(scores, thresholds)]

    def _finish_reply_widget(self, reply: ReplyWidget, status: str, stop: dict | None, expl: dict | None,
                             thresholds: Sequence[float], n: int, elapsed: float | None = None) -> None:
        stop = stop or {}
        kind = stop.get("kind") or ("ethics" if status == STOPPED else "eos")
        words = {"eos": "finished", "length": "reached the token limit", "cancelled": "stopped by you",
                 "ethics": "stopped by the constitution", "error": "failed"}
        parts = [f"{n} tokens", words.get(kind, kind)]
        if status == "interrupted":
            parts[1] = "interrupted (the app closed while it was being written)"
        if elapsed:
            parts.append(f"{elapsed:.1f} s")
        reply.set_status(" · ".join(parts))
        if kind == "ethics":
            law_i = stop.get("law")
            law = self.constitution[int(law_i)] if law_i is not None else None
            score, th = stop.get("score"), stop.get("threshold")
            if law is not None and score is not None and th is not None:
                title = f"Stopped: {law.title} fell to {float(score):.2f} < {float(th):.2f}"
            elif law is not None:
                title = f"Stopped: {law.title}"
            else:
                title = "Stopped by the constitution"
            lines = []
            if law is not None:
                lines.append(f"“{law.short}”: {law.text.split('.')[0]}.")
            for v in (expl or {}).get("violated", []):
                lv = self.constitution[int(v["law"])]
                bits = [lv.title]
                if v.get("score") is not None:
                    bits.append(f"score {float(v['score']):.2f}")
                if v.get("first_layer") is not None:
                    bits.append(f"first under the threshold at layer {int(v['first_layer'])}")
                lines.append("• " + ", ".join(bits))
            text = (expl or {}).get("text") or ""
            if text and not (expl or {}).get("violated"):
                lines.append(text)
            elif stop.get("message") and stop.get("message") not in title:
                lines.append(str(stop["message"]))
            reply.show_stop(title, lines)

    # ------------------------------------------------------------------ inspector

    def _show_token(self, info: TokenInfo, mode: str) -> None:
        text = info.text.replace("\n", "⏎")
        caption = f"{mode}: “{text.strip() or text}”  (#{info.index})"
        th = info.reply.thresholds()  # the token is judged against its reply's thresholds
        self.gauge.set_thresholds(th)
        self.heatmap.set_thresholds(th)
        self.gauge.set_scores(info.law_scores, caption)
        self.heatmap.set_path(info.layer_scores, info.law_scores,
                              f"Decision path of #{info.index} “{text.strip() or text}” per layer")
        self.gauge_mode.setText({"Newest token": "Following the newest token. Click a token to pin it.",
                                 "Last token": "Last token of the reply. Click any token to inspect it.",
                                 "Selected": "Pinned. Click another token to inspect it.",
                                 "Hover": "Hovering."}.get(mode, ""))

    def _on_hover(self, info: TokenInfo | None) -> None:
        if info is not None:
            self._show_token(info, "Hover")
        elif self._pinned is not None:
            self._show_token(self._pinned, "Selected")
        elif self._active and self._reply is not None and self._reply.token_count():
            self._show_token(self._reply.token(self._reply.token_count() - 1), "Newest token")

    def _on_selected(self, info: TokenInfo) -> None:
        self._pinned = info
        self._show_token(info, "Selected")

    def _clear_inspector(self) -> None:
        self._pinned = None
        self.gauge.set_placeholder("Hover or click a token to see its law scores")
        self.gauge.set_scores(None)
        self.heatmap.set_path(None)
        self.gauge_mode.setText("")

    def _update_buttons(self, *_a: Any) -> None:
        busy_other = self.ctx.worker.is_busy() and not self._active
        self.send_button.setEnabled(not self._active and not busy_other and bool(self.model_path()))
        self.send_button.setToolTip("Engine busy with another job" if busy_other else "Send (Ctrl+Enter)")
        self.stop_button.setEnabled(self._active)
        has_chat = self.chat_id is not None
        for b in (self.rename_button, self.delete_button, self.export_button):
            b.setEnabled(has_chat)
        if getattr(self.store, "read_only", False):  # shown, never written (see chat_store)
            for b in (self.send_button, self.new_button, self.rename_button, self.delete_button):
                b.setEnabled(False)
                b.setToolTip("The chat history is read-only: it was written by a newer KALA Studio")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.store.commit()
        super().closeEvent(event)


__all__ = ["ChatPage", "Outcome", "add_model_item", "find_models", "generation_job", "read_outcome"]
