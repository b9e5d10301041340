"""The Chat page: talk to a trained KALA model and see how every token scores against the Five Laws.

The page composes four widgets and owns the data flow between them and the chat store:

* the history list (:class:`~kala_app.widgets.chat_history.ChatHistoryList`): new / rename /
  delete / export;
* the transcript (:class:`~kala_app.widgets.chat_view.ChatView`) under the model picker
  (:class:`~kala_app.widgets.model_picker.ModelPicker`);
* the composer (:class:`~kala_app.widgets.chat_composer.ChatComposer`): per-chat settings, the
  message box, Send and Stop;
* the inspector (:class:`~kala_app.widgets.chat_inspector.ChatInspector`): the five-bar gauge
  and the decision path of the selected token. While a reply streams it follows the newest
  token; hovering a token shows it; clicking pins it.

Data flow. ``send()`` saves the user's message (committed) and an empty reply row before the
job starts, then runs the engine's generation job through this page's
:class:`~kala_app.page_job.PageJob` (the job's own signals, no filtering by owner). Token events
are only buffered by the signal handler; a 30 ms timer moves them into the view and the chat
store (one batch, one commit) within a time budget, so the UI thread stays responsive even when
a job produces tokens faster than they can be drawn. The job's typed result
(:func:`~kala_app.pages.chat_outcome.read_outcome`: stop reason, prompt assessment,
explanation) closes the reply.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QMessageBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from kala_engine.constitution import thresholds_in_force
from kala_engine.jobs import TokenEvent

from ..chat_store import CANCELLED, COMPLETE, DEFAULT_SETTINGS, ERROR, STOPPED, ChatStore
from ..page_job import PageJob
from ..widgets.chat_composer import ChatComposer
from ..widgets.chat_history import ChatHistoryList
from ..widgets.chat_inspector import ChatInspector
from ..widgets.chat_view import ChatView, ReplyWidget, TokenInfo, UserMessageWidget
from ..widgets.model_picker import ModelPicker, add_model_item, find_models, model_label
from ..workarounds import freeze_gc
from .chat_outcome import Outcome, complete_explanation, generation_job, read_outcome

#: How often buffered tokens are moved into the view and the store (ms).
FLUSH_MS = 30
#: At most about this long per flush on the UI thread (s); the rest waits for the next tick.
FLUSH_BUDGET_S = 0.005
#: Tokens handed to the view and the store at a time within one flush.
FLUSH_CHUNK = 32
#: The live gauge, heatmap and sparkline follow a streaming reply at this interval (s): each
#: repaint is a Python call that must take the GIL from the generating thread.
DECOR_S = 0.1


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
        self.job = PageJob(ctx.worker, self)
        self.chat_id: int | None = None
        self._active = False  # a reply is being written (until its last token is drawn)
        self._buffer: list[TokenEvent] = []
        self._reply: ReplyWidget | None = None
        self._user_widget: UserMessageWidget | None = None
        self._reply_id: int | None = None
        self._user_id: int | None = None
        self._finish_event: Any = None  # Finished that arrived while tokens were still buffered
        self._last_decor = 0.0  # when the inspector last followed the stream
        self._send_thresholds: list[float] = list(self.constitution.thresholds)
        self._reply_thresholds: list[float] = list(self.constitution.thresholds)
        self._pinned: TokenInfo | None = None
        self._last: Any = None  # newest token of the streaming reply
        self._started_at = 0.0
        self._loading = True  # no settings are saved while the widgets are built
        self._build()
        self._loading = False
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)
        ctx.worker.busy_changed.connect(self._update_buttons)  # another page's job holds the engine

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

        self.history = ChatHistoryList()
        self.history.new_requested.connect(lambda: self.new_chat())
        self.history.chat_chosen.connect(lambda cid: self.open_chat(cid) if cid != self.chat_id else None)
        self.history.rename_requested.connect(self._ask_rename)
        self.history.delete_requested.connect(self._ask_delete)
        self.history.export_requested.connect(self._ask_export)
        split.addWidget(self.history)

        center = QWidget()
        cl = QVBoxLayout(center)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        self.model_picker = ModelPicker(self.ctx.runs_dir)
        self.model_picker.changed.connect(self._on_model_changed)
        cl.addWidget(self.model_picker)
        self.view = ChatView(self.constitution)
        self.view.show_hint(model_chosen=False)
        self.view.token_hovered.connect(self._on_hover)
        self.view.token_selected.connect(self._on_selected)
        cl.addWidget(self.view, 1)
        self.composer = ChatComposer(self.constitution.thresholds[0])
        self.composer.send_requested.connect(lambda: self.send())
        self.composer.stop_requested.connect(self.stop)
        self.composer.settings_changed.connect(self._on_settings_changed)
        cl.addWidget(self.composer)
        split.addWidget(center)

        self.inspector = ChatInspector(self.constitution)
        split.addWidget(self.inspector)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([200, 640, 330])
        # the parts tests and the screenshot script reach for, by their old names
        self.chat_list, self.new_button = self.history.list, self.history.new_button
        self.rename_button, self.delete_button = self.history.rename_button, self.history.delete_button
        self.export_button, self.model_combo = self.history.export_button, self.model_picker.combo
        c = self.composer
        self.input, self.send_button, self.stop_button, self.status = c.input, c.send_button, c.stop_button, c.status
        self.threshold_spin, self.calibrated_check = c.threshold_spin, c.calibrated_check
        self.temperature_spin, self.top_p_spin, self.max_tokens_spin = c.temperature_spin, c.top_p_spin, c.max_tokens_spin
        self.gauge, self.heatmap, self.gauge_mode = self.inspector.gauge, self.inspector.heatmap, self.inspector.mode

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

    # ------------------------------------------------------------------ models and settings

    def refresh_models(self) -> None:
        """List the models of the runs folder (keeping the current choice)."""
        self.model_picker.refresh()
        if not self._active and not self._loading:  # the markers follow the (new) choice
            self._thresholds_changed()
        self._update_buttons()

    def model_path(self) -> str:
        return self.model_picker.path()

    def set_model(self, path: str | Path) -> None:
        """Choose a model folder (added to the list if it is not a run of the runs folder)."""
        self.model_picker.set_path(path)

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

    def _on_model_changed(self) -> None:
        if self.chat_id is not None and not self._loading and not self._read_only():
            self.store.update_chat(self.chat_id, model=self.model_path())
        if not self._active:  # the markers follow the chosen model's calibrated thresholds
            self._thresholds_changed()
        self._update_buttons()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._active:
            self.refresh_models()

    def settings(self) -> dict[str, Any]:
        """The per-chat settings; ``threshold`` None = the model's calibrated thresholds."""
        return self.composer.settings()

    def _apply_settings(self, s: dict[str, Any]) -> None:
        self.composer.apply_settings(s)
        self._thresholds_changed()

    def set_settings(self, **kw: Any) -> None:
        """Change per-chat settings (threshold: a value or None for the model's; temperature, top_p, max_tokens)."""
        self._apply_settings({**self.settings(), **kw})
        self._on_settings_changed()

    def _on_settings_changed(self) -> None:
        if self._loading:
            return
        self._thresholds_changed()
        if self.chat_id is not None and not self._read_only():
            self.store.update_chat(self.chat_id, settings=self.settings())

    def thresholds(self, reply: bool = False) -> list[float]:
        """Per law, the thresholds in force for the current settings and model: those that flag a
        prompt, or with ``reply`` those that stop a reply (a model calibrates them apart)."""
        return list(thresholds_in_force(self.settings()["threshold"], self.model_path(), reply=reply))

    def _thresholds_changed(self, thresholds: Sequence[float] | None = None) -> None:
        t = list(thresholds) if thresholds is not None else self.thresholds(reply=True)
        self.inspector.set_thresholds(t)
        self.view.set_thresholds(t)

    def _read_only(self) -> bool:
        return bool(getattr(self.store, "read_only", False))  # a newer version's history: never written

    # ------------------------------------------------------------------ chats

    def _reload_chat_list(self) -> None:
        self.history.show_chats(self.store.list_chats(), self.chat_id)

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
        fallback = {reply: list(thresholds_in_force(chat.settings.get("threshold"), chat.model or self.model_path(),
                                                    reply=reply)) for reply in (False, True)}
        for m in self.store.messages(chat_id):
            thresholds = m.thresholds if m.thresholds and len(m.thresholds) == len(self.constitution) \
                else fallback[m.role == "assistant"]
            self.view.set_thresholds(thresholds)  # each message drawn against its own
            if m.role == "user":
                scores = (m.assessment or {}).get("law_scores")
                user = self.view.add_user_message(m.content, scores)
                if scores is None:
                    user.set_assessment(None)
            elif m.role == "assistant":
                reply = self.view.begin_reply(self._reply_title(m.model))
                reply.message_id = m.id
                reply.append_tokens(m.tokens)
                if not m.tokens and m.content:
                    reply.text_view.setPlainText(m.content)
                reply.show_outcome(m.status, m.stop, m.explanation, len(m.tokens))
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

    def _why_not_send(self) -> str:
        """Why a message cannot be sent now ('' when it can)."""
        if self._active:
            return "A reply is still being written; press Stop first."
        if self._read_only():
            return "The chat history is read-only (written by a newer KALA Studio); nothing is saved."
        if self.job.busy_reason():
            return self.job.busy_reason()
        if not self.model_path():
            return "Choose a model first: train one on the Train page, or Browse… for a model folder."
        return ""

    def send(self, text: str | None = None) -> bool:
        """Send ``text`` (or the composer's text); returns False (with the reason shown) if it cannot."""
        text = (self.input.toPlainText() if text is None else text).strip()
        if not text:
            return False
        why = self._why_not_send()
        if why:
            self.status.setText(why)
            return False
        model, settings = self.model_path(), self.settings()
        if self.chat_id is None:
            self.chat_id = self.store.create_chat("New chat", model=model, settings=settings)
        chat = self.store.get_chat(self.chat_id)
        if chat.title == "New chat" and chat.message_count == 0:
            self.store.rename_chat(self.chat_id, text.splitlines()[0][:48])
        # what this exchange is judged against (a calibrated model has a prompt set and a reply set),
        # stored with each message: switching the model or the threshold later never re-judges them
        send_thresholds = list(thresholds_in_force(settings.get("threshold"), model))
        reply_thresholds = list(thresholds_in_force(settings.get("threshold"), model, reply=True))
        # the user's message reaches the disk before anything else happens
        user_id = self.store.add_user_message(self.chat_id, text, thresholds=send_thresholds)
        try:
            job = self.job_factory(model, self.store.history(self.chat_id), settings)
        except Exception as e:  # noqa: BLE001 - shown to the user, the message stays saved
            self.view.add_user_message(text).set_assessment(None)
            self.view.begin_reply(self._reply_title(model)).set_status(f"Could not start: {e}")
            self.status.setText(str(e))
            self._reload_chat_list()
            return False
        self._begin_reply(text, model, user_id, send_thresholds, reply_thresholds)
        freeze_gc(self, True)  # see kala_app.workarounds
        self.job.start(job, "chat", progress=self._on_event, error=self._on_failed, finished=self._on_finished)
        self._flush_timer.start()
        self._update_buttons()
        self.status.setText("")
        self.status.setToolTip("")
        return True

    def _begin_reply(self, text: str, model: str, user_id: int, send_thresholds: list[float],
                     reply_thresholds: list[float]) -> None:
        self._user_id = user_id
        self._reply_id = self.store.begin_reply(self.chat_id, model=model, thresholds=reply_thresholds)
        self.input.clear()
        self.view.set_thresholds(send_thresholds)  # the prompt's assessment is flagged against these
        self._user_widget = self.view.add_user_message(text)
        self.view.set_thresholds(reply_thresholds)  # the reply's tokens stop against these
        self._reply = self.view.begin_reply(self._reply_title(model))
        self._reply.message_id = self._reply_id
        self._reply.set_status("writing…")
        self._pinned = None
        self._last = None
        self._buffer.clear()
        self._send_thresholds, self._reply_thresholds = send_thresholds, reply_thresholds
        self._thresholds_changed(reply_thresholds)
        self._active = True
        self._started_at = time.perf_counter()
        self.inspector.wait_for_tokens()
        self._reload_chat_list()

    def stop(self) -> None:
        """Stop the reply being written (the tokens so far are kept)."""
        if self._active:
            self.job.cancel()
            self.status.setText("Stopping…")

    def is_generating(self) -> bool:
        return self._active

    def current_reply(self) -> ReplyWidget | None:
        return self._reply

    # ------------------------------------------------------------------ streaming

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, TokenEvent):
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
            self.inspector.show_token(reply.token(reply.token_count() - 1), "Newest token")
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

    def _end_reply(self, ev: Any) -> None:
        """The job ended and every token is drawn and stored: close the reply."""
        freeze_gc(self, False)
        self._flush_timer.stop()
        self._finish_event = None
        self._active = False
        reply, rid = self._reply, self._reply_id
        out = read_outcome(ev.result)
        thresholds = self._store_thresholds(out)
        if ev.cancelled:
            out.stop_kind, out.stop_message = "cancelled", "stopped by the user"
            status = CANCELLED
        else:
            status = STOPPED if out.stop_kind == "ethics" else COMPLETE
        complete_explanation(out, self._last, thresholds)
        if out.assessment is not None and self._user_id is not None:
            self.store.set_assessment(self._user_id, out.assessment_dict())
        if rid is not None:
            self.store.finish_reply(rid, text=out.text, status=status, stop=out.stop_dict(),
                                    explanation=out.explanation_dict())
        if self._user_widget is not None:
            if out.assessment is not None:
                self._user_widget.set_assessment(out.assessment)
            elif self._user_widget.mini.scores() is None:
                self._user_widget.set_assessment(None)
        if reply is not None:
            reply.sparkline.update()
            reply.show_outcome(status, out.stop_dict(), out.explanation_dict(), reply.token_count(),
                               elapsed=time.perf_counter() - self._started_at)
            if self._pinned is None and reply.token_count():
                self.inspector.show_token(reply.token(reply.token_count() - 1), "Last token")
        self.status.setText("")
        self._reload_chat_list()
        self._update_buttons()
        self.reply_finished.emit(out)

    def _store_thresholds(self, out: Outcome) -> list[float]:
        """What the engine actually used for the prompt wins over what the page expected (stored
        with the user's message); returns the reply's thresholds (stored with the reply)."""
        if out.thresholds is not None and out.thresholds != self._send_thresholds:
            self._send_thresholds = out.thresholds
            if self._user_id is not None:
                self.store.set_thresholds(self._user_id, out.thresholds)
        return self._reply_thresholds

    def _on_failed(self, message: str, traceback: str) -> None:
        if not self._active:
            return
        freeze_gc(self, False)
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

    # ------------------------------------------------------------------ inspector

    def _on_hover(self, info: TokenInfo | None) -> None:
        if info is not None:
            self.inspector.show_token(info, "Hover")
        elif self._pinned is not None:
            self.inspector.show_token(self._pinned, "Selected")
        elif self._active and self._reply is not None and self._reply.token_count():
            self.inspector.show_token(self._reply.token(self._reply.token_count() - 1), "Newest token")

    def _on_selected(self, info: TokenInfo) -> None:
        self._pinned = info
        self.inspector.show_token(info, "Selected")

    def _clear_inspector(self) -> None:
        self._pinned = None
        self.inspector.clear()

    def _update_buttons(self, *_a: Any) -> None:
        self.view.show_hint(model_chosen=bool(self.model_path()))
        busy_other = self.job.busy_other() and not self._active
        self.send_button.setEnabled(not self._active and not busy_other and bool(self.model_path()))
        self.send_button.setToolTip("Engine busy with another job" if busy_other else "Send (Ctrl+Enter)")
        self.stop_button.setEnabled(self._active)
        self.history.set_state(self.chat_id is not None, self._read_only())
        if self._read_only():
            self.send_button.setEnabled(False)
            self.send_button.setToolTip("The chat history is read-only: it was written by a newer KALA Studio")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.store.commit()
        super().closeEvent(event)


__all__ = ["ChatPage", "Outcome", "add_model_item", "find_models", "generation_job", "read_outcome"]
