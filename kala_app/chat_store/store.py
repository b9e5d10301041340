"""The chat store's queries: chats, messages and their tokens."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kala_engine.constitution import NUM_LAWS

from . import export
from .opening import StoreFile
from .schema import (
    COMPLETE,
    DB_NAME,
    DEFAULT_SETTINGS,
    ERROR,
    STOPPED,
    STREAMING,
    ChatSummary,
    Message,
    StoredToken,
)
from .values import (
    JSON_CHECKS,
    clean_settings,
    dumps,
    dumps_thresholds,
    is_num,
    pack_layers,
    parse_json,
    text_of,
    unpack_layers,
)


class ChatStore(StoreFile):
    """One SQLite database of chats. Not thread-safe: use it from one thread (the UI thread)."""

    @classmethod
    def in_folder(cls, chats_dir: str | Path) -> ChatStore:
        """The store in the app's chats folder (``AppContext.chats_dir``)."""
        return cls(Path(chats_dir) / DB_NAME)

    # ------------------------------------------------------------ chats

    def create_chat(self, title: str = "New chat", model: str = "", settings: dict | None = None) -> int:
        now = time.time()
        s = dict(DEFAULT_SETTINGS)
        s.update(settings or {})
        self._begin()
        cur = self._db.execute(
            "INSERT INTO chats (title, model, settings, created, updated) VALUES (?, ?, ?, ?, ?)",
            (title.strip() or "New chat", model, json.dumps(s), now, now))
        self.commit()
        return int(cur.lastrowid)

    def list_chats(self) -> list[ChatSummary]:
        """All chats, the most recently updated first."""
        rows = self._db.execute(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.chat_id=c.id) AS n "
            "FROM chats c ORDER BY c.updated DESC, c.id DESC").fetchall()
        out = []
        for r in rows:
            settings, problem = clean_settings(r["settings"])
            if problem:
                self._damage("chats", r["id"], "settings", r["settings"], problem)
            out.append(ChatSummary(r["id"], text_of(r["title"]) or "Untitled", text_of(r["model"]), settings,
                                   float(r["created"]) if is_num(r["created"]) else 0.0,
                                   float(r["updated"]) if is_num(r["updated"]) else 0.0, r["n"], problem))
        return out

    def get_chat(self, chat_id: int) -> ChatSummary:
        for c in self.list_chats():
            if c.id == chat_id:
                return c
        raise KeyError(f"no chat with id {chat_id}")

    def rename_chat(self, chat_id: int, title: str) -> None:
        title = title.strip()
        if not title:
            raise ValueError("a chat title cannot be empty")
        self._begin()
        self._db.execute("UPDATE chats SET title=? WHERE id=?", (title, chat_id))
        self.commit()

    def delete_chat(self, chat_id: int) -> None:
        """Delete a chat with its messages and tokens."""
        self._begin()
        self._db.execute("DELETE FROM chats WHERE id=?", (chat_id,))
        self.commit()

    def update_chat(self, chat_id: int, *, model: str | None = None, settings: dict | None = None) -> None:
        self._begin()
        if model is not None:
            self._db.execute("UPDATE chats SET model=? WHERE id=?", (model, chat_id))
        if settings is not None:
            self._db.execute("UPDATE chats SET settings=? WHERE id=?", (json.dumps(settings), chat_id))
        self.commit()

    def _touch(self, chat_id: int) -> None:
        self._db.execute("UPDATE chats SET updated=? WHERE id=?", (time.time(), chat_id))

    # ------------------------------------------------------------ messages

    def add_user_message(self, chat_id: int, text: str, assessment: dict | None = None,
                         thresholds: Sequence[float] | None = None) -> int:
        """Save (and commit at once) the user's message; call before generation starts.
        ``thresholds``: per law, what its prompt assessment is judged against."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO messages (chat_id, role, content, status, assessment, created, thresholds) "
            "VALUES (?, 'user', ?, ?, ?, ?, ?)",
            (chat_id, text, COMPLETE, dumps(assessment), time.time(), dumps_thresholds(thresholds)))
        self._touch(chat_id)
        self.commit()
        return int(cur.lastrowid)

    def set_assessment(self, message_id: int, assessment: dict | None) -> None:
        self._begin()
        self._db.execute("UPDATE messages SET assessment=? WHERE id=?", (dumps(assessment), message_id))
        self.commit()

    def begin_reply(self, chat_id: int, model: str = "", thresholds: Sequence[float] | None = None) -> int:
        """Create (and commit) an empty assistant reply marked 'streaming', with the model and the
        per-law thresholds that write it."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO messages (chat_id, role, content, status, model, created, thresholds) "
            "VALUES (?, 'assistant', '', ?, ?, ?, ?)",
            (chat_id, STREAMING, model, time.time(), dumps_thresholds(thresholds)))
        self._touch(chat_id)
        self.commit()
        return int(cur.lastrowid)

    def set_thresholds(self, message_id: int, thresholds: Sequence[float] | None) -> None:
        """Record the per-law thresholds a message was judged with (those the engine reports)."""
        self._begin()
        self._db.execute("UPDATE messages SET thresholds=? WHERE id=?", (dumps_thresholds(thresholds), message_id))
        self.commit()

    def append_tokens(self, message_id: int, tokens: Iterable[Any]) -> int:
        """Add tokens (StoredToken or kala_engine TokenEvent) to a reply; commit() makes them durable."""
        rows = []
        for t in tokens:
            s = tuple(float(v) for v in t.law_scores)
            rows.append((message_id, int(t.index), int(t.token_id), str(t.text), *s,
                         pack_layers(getattr(t, "layer_scores", None))))
        if rows:
            self._begin()
            self._db.executemany(
                "INSERT OR REPLACE INTO tokens (message_id, idx, token_id, text, s0, s1, s2, s3, s4, layers) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def finish_reply(self, message_id: int, text: str | None = None, status: str = COMPLETE,
                     stop: dict | None = None, explanation: dict | None = None) -> None:
        """Close a reply: its full text (from the tokens when None), status and stop reason."""
        if text is None:
            text = "".join(r[0] for r in self._db.execute(
                "SELECT text FROM tokens WHERE message_id=? ORDER BY idx", (message_id,)))
        self._begin()
        self._db.execute(
            "UPDATE messages SET content=?, status=?, stop=?, explanation=? WHERE id=?",
            (text, status, dumps(stop), dumps(explanation), message_id))
        self.commit()

    def messages(self, chat_id: int, with_tokens: bool = True) -> list[Message]:
        rows = self._db.execute("SELECT * FROM messages WHERE chat_id=? ORDER BY id", (chat_id,)).fetchall()
        out = []
        for r in rows:
            parsed, problems = {}, []
            for col, ok in JSON_CHECKS.items():
                try:
                    v = None if r[col] is None else parse_json(r[col])
                    if v is not None and not ok(v):
                        raise ValueError("not the shape KALA writes")
                except ValueError as e:
                    self._damage("messages", r["id"], col, r[col], str(e)[:120])
                    problems.append(col)
                    v = None
                parsed[col] = v
            m = Message(r["id"], r["chat_id"], text_of(r["role"]), text_of(r["content"]), text_of(r["status"]),
                        text_of(r["model"]), float(r["created"]) if is_num(r["created"]) else 0.0,
                        parsed["assessment"], parsed["stop"], parsed["explanation"],
                        damaged=", ".join(problems), thresholds=parsed["thresholds"])
            if with_tokens and m.role == "assistant":
                m.tokens = self.tokens(m.id)
                if not m.content and m.tokens:
                    m.content = "".join(t.text for t in m.tokens)
            out.append(m)
        return out

    def tokens(self, message_id: int) -> list[StoredToken]:
        out = []
        for r in self._db.execute("SELECT * FROM tokens WHERE message_id=? ORDER BY idx", (message_id,)):
            scores = tuple(r[f"s{k}"] for k in range(NUM_LAWS))
            if not (all(is_num(v) for v in scores) and isinstance(r["idx"], int) and isinstance(r["token_id"], int)):
                self._damage("tokens", f"{message_id}/{r['idx']}", "scores", repr(tuple(r)), "not numbers")
                continue  # a token without usable scores is left out of the reply
            try:
                layers = unpack_layers(r["layers"])
            except (ValueError, struct.error) as e:
                self._damage("tokens", f"{message_id}/{r['idx']}", "layers", r["layers"], str(e))
                layers = None
            out.append(StoredToken(r["idx"], r["token_id"], text_of(r["text"]), tuple(float(v) for v in scores), layers))
        return out

    def history(self, chat_id: int) -> list[dict[str, str]]:
        """The conversation as ``[{"role", "content"}]`` for the chat template.

        Failed replies and replies stopped by the constitution are left out: the model should
        not read (and continue from) text its own ethics monitor cut off. The user's messages stay.
        """
        return [{"role": m.role, "content": m.content}
                for m in self.messages(chat_id, with_tokens=False)
                if m.status not in (ERROR, STOPPED) and (m.role == "user" or m.content)]

    # ------------------------------------------------------------ export (kala_app.chat_store.export)

    def export_json(self, chat_id: int) -> dict:
        """The whole chat with every token's five law scores (and per-layer scores when recorded)."""
        return export.export_json(self, chat_id)

    def export_markdown(self, chat_id: int) -> str:
        """A readable transcript; each reply is followed by a table of its tokens' law scores."""
        return export.export_markdown(self, chat_id)

    def save_export(self, chat_id: int, path: str | Path) -> Path:
        """Write the chat as Markdown (``.md``) or JSON (``.json``), chosen by the file suffix."""
        return export.save_export(self, chat_id, path)
