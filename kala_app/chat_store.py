"""Chat history in SQLite: chats, their messages and every generated token with its law scores.

The database lives in the user's data folder (``<data>/chats/chats.sqlite3``) and runs in WAL
mode, so a reader never blocks the writer and a commit is one append to the log. Durability
rules that the Chat page follows:

* the user's message is written and committed **before** generation starts;
* the reply row is created (status ``streaming``) before its first token, and tokens are
  appended in small batches, each batch committed at once (the page commits every ~50 ms), so a
  crash or a kill loses at most the last moment of the reply;
* on the next open, replies still marked ``streaming`` become ``interrupted`` and keep every
  token that reached the disk.

This module has no Qt dependency: it is used on the UI thread of the app, and by plain scripts.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kala_engine.constitution import load_constitution

DB_NAME = "chats.sqlite3"
SCHEMA_VERSION = 1

#: Default per-chat generation settings (the threshold applies to every law).
#: threshold None = the model's calibrated per-law thresholds (see kala_engine.calibration)
DEFAULT_SETTINGS: dict[str, Any] = {"threshold": None, "temperature": 0.7, "top_p": 0.9, "max_tokens": 200}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id        INTEGER PRIMARY KEY,
    title     TEXT NOT NULL,
    model     TEXT NOT NULL DEFAULT '',
    settings  TEXT NOT NULL DEFAULT '{}',
    created   REAL NOT NULL,
    updated   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    chat_id     INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content     TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'complete',
    model       TEXT NOT NULL DEFAULT '',
    assessment  TEXT,            -- JSON: {"law_scores": [5], "layer_scores": [[5], ...]}
    stop        TEXT,            -- JSON: stop reason of a reply
    explanation TEXT,            -- JSON: violated laws and first layers under the threshold
    created     REAL NOT NULL,
    thresholds  TEXT             -- JSON: the per-law thresholds it was judged with (NULL in old rows)
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages(chat_id, id);
CREATE TABLE IF NOT EXISTS tokens (
    message_id  INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    token_id    INTEGER NOT NULL,
    text        TEXT NOT NULL,
    s0 REAL NOT NULL, s1 REAL NOT NULL, s2 REAL NOT NULL, s3 REAL NOT NULL, s4 REAL NOT NULL,
    layers      BLOB,            -- float32 (layers, 5), row-major; NULL when not recorded
    PRIMARY KEY (message_id, idx)
) WITHOUT ROWID;
"""

#: Message status values.
COMPLETE, STREAMING, STOPPED, INTERRUPTED, CANCELLED, ERROR = (
    "complete", "streaming", "stopped", "interrupted", "cancelled", "error")


@dataclass(frozen=True)
class StoredToken:
    index: int
    token_id: int
    text: str
    law_scores: tuple[float, ...]
    layer_scores: tuple[tuple[float, ...], ...] | None = None

    @property
    def min_score(self) -> float:
        return min(self.law_scores)


@dataclass
class Message:
    id: int
    chat_id: int
    role: str
    content: str
    status: str
    model: str
    created: float
    assessment: dict | None = None
    stop: dict | None = None
    explanation: dict | None = None
    tokens: list[StoredToken] = field(default_factory=list)
    #: the per-law thresholds the message was judged with when it was written (None: not recorded,
    #: a row from before this field: the chat's model and settings decide, as they used to)
    thresholds: list[float] | None = None


@dataclass(frozen=True)
class ChatSummary:
    id: int
    title: str
    model: str
    settings: dict
    created: float
    updated: float
    message_count: int


def _pack_layers(layers: Sequence[Sequence[float]] | None) -> bytes | None:
    if layers is None:
        return None
    flat = [float(v) for row in layers for v in row]
    return struct.pack(f"<{len(flat)}f", *flat)


def _unpack_layers(blob: bytes | None, n_laws: int = 5) -> tuple[tuple[float, ...], ...] | None:
    if blob is None:
        return None
    flat = struct.unpack(f"<{len(blob) // 4}f", blob)
    return tuple(tuple(flat[i:i + n_laws]) for i in range(0, len(flat), n_laws))


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps_thresholds(thresholds: Sequence[float] | None) -> str | None:
    return None if thresholds is None else json.dumps([float(t) for t in thresholds])


def _loads_thresholds(text: str | None) -> list[float] | None:
    """A stored threshold list, or None when absent or not a list of numbers in [0, 1]."""
    try:
        v = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(v, list) or not v:
        return None
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0 for t in v):
        return None
    return [float(t) for t in v]


class ChatStore:
    """One SQLite database of chats. Not thread-safe: use it from one thread (the UI thread)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / DB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: we open transactions ourselves (BEGIN ... COMMIT) in batches.
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OSError(f"{path}: could not switch the chat database to WAL mode (got {mode!r})")
        # NORMAL in WAL mode: a commit survives a crash or kill of this process; only a power
        # loss can lose the last few commits. Each token batch is therefore one cheap append.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._in_tx = False
        self.recovered = self._recover()

    def _add_missing_columns(self) -> None:
        """A database written before ``messages.thresholds`` existed gets the column (NULL in its rows)."""
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(messages)")}
        if "thresholds" not in cols:
            self._db.execute("ALTER TABLE messages ADD COLUMN thresholds TEXT")

    @classmethod
    def in_folder(cls, chats_dir: str | Path) -> ChatStore:
        """The store in the app's chats folder (``AppContext.chats_dir``)."""
        return cls(Path(chats_dir) / DB_NAME)

    # ------------------------------------------------------------ transactions

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        """Commit the pending batch (tokens appended since the last commit)."""
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        if self._db is not None:
            self.commit()
            self._db.close()
            self._db = None  # type: ignore[assignment]

    def _recover(self) -> int:
        """Mark replies left 'streaming' by a crash as 'interrupted'; returns how many."""
        cur = self._db.execute(
            "UPDATE messages SET status=? WHERE status=?", (INTERRUPTED, STREAMING))
        n = cur.rowcount
        if n:
            # fill in the text of interrupted replies from their tokens
            for row in self._db.execute("SELECT id FROM messages WHERE status=? AND content=''", (INTERRUPTED,)):
                text = "".join(r[0] for r in self._db.execute(
                    "SELECT text FROM tokens WHERE message_id=? ORDER BY idx", (row[0],)))
                self._db.execute("UPDATE messages SET content=? WHERE id=?", (text, row[0]))
        return n

    def integrity_ok(self) -> bool:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

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
        return [ChatSummary(r["id"], r["title"], r["model"], json.loads(r["settings"]), r["created"],
                            r["updated"], r["n"]) for r in rows]

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
            (chat_id, text, COMPLETE, _dumps(assessment), time.time(), _dumps_thresholds(thresholds)))
        self._touch(chat_id)
        self.commit()
        return int(cur.lastrowid)

    def set_assessment(self, message_id: int, assessment: dict | None) -> None:
        self._begin()
        self._db.execute("UPDATE messages SET assessment=? WHERE id=?", (_dumps(assessment), message_id))
        self.commit()

    def begin_reply(self, chat_id: int, model: str = "", thresholds: Sequence[float] | None = None) -> int:
        """Create (and commit) an empty assistant reply marked 'streaming', with the model and the
        per-law thresholds that write it."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO messages (chat_id, role, content, status, model, created, thresholds) "
            "VALUES (?, 'assistant', '', ?, ?, ?, ?)",
            (chat_id, STREAMING, model, time.time(), _dumps_thresholds(thresholds)))
        self._touch(chat_id)
        self.commit()
        return int(cur.lastrowid)

    def set_thresholds(self, message_id: int, thresholds: Sequence[float] | None) -> None:
        """Record the per-law thresholds a message was judged with (those the engine reports)."""
        self._begin()
        self._db.execute("UPDATE messages SET thresholds=? WHERE id=?", (_dumps_thresholds(thresholds), message_id))
        self.commit()

    def append_tokens(self, message_id: int, tokens: Iterable[Any]) -> int:
        """Add tokens (StoredToken or kala_engine TokenEvent) to a reply; commit() makes them durable."""
        rows = []
        for t in tokens:
            s = tuple(float(v) for v in t.law_scores)
            rows.append((message_id, int(t.index), int(t.token_id), str(t.text), *s,
                         _pack_layers(getattr(t, "layer_scores", None))))
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
            (text, status, _dumps(stop), _dumps(explanation), message_id))
        self.commit()

    def messages(self, chat_id: int, with_tokens: bool = True) -> list[Message]:
        rows = self._db.execute("SELECT * FROM messages WHERE chat_id=? ORDER BY id", (chat_id,)).fetchall()
        out = []
        for r in rows:
            m = Message(r["id"], r["chat_id"], r["role"], r["content"], r["status"], r["model"], r["created"],
                        _loads(r["assessment"]), _loads(r["stop"]), _loads(r["explanation"]),
                        thresholds=_loads_thresholds(r["thresholds"]))
            if with_tokens and m.role == "assistant":
                m.tokens = self.tokens(m.id)
                if not m.content and m.tokens:
                    m.content = "".join(t.text for t in m.tokens)
            out.append(m)
        return out

    def tokens(self, message_id: int) -> list[StoredToken]:
        return [
            StoredToken(r["idx"], r["token_id"], r["text"], (r["s0"], r["s1"], r["s2"], r["s3"], r["s4"]),
                        _unpack_layers(r["layers"]))
            for r in self._db.execute("SELECT * FROM tokens WHERE message_id=? ORDER BY idx", (message_id,))
        ]

    def history(self, chat_id: int) -> list[dict[str, str]]:
        """The conversation as ``[{"role", "content"}]`` for the chat template.

        Failed replies and replies stopped by the constitution are left out: the model should
        not read (and continue from) text its own ethics monitor cut off. The user's messages stay.
        """
        return [{"role": m.role, "content": m.content}
                for m in self.messages(chat_id, with_tokens=False)
                if m.status not in (ERROR, STOPPED) and (m.role == "user" or m.content)]

    # ------------------------------------------------------------ export

    def export_json(self, chat_id: int) -> dict:
        """The whole chat with every token's five law scores (and per-layer scores when recorded)."""
        chat = self.get_chat(chat_id)
        laws = [{"index": law.index, "key": law.key, "title": law.title} for law in load_constitution()]
        msgs = []
        for m in self.messages(chat_id):
            d: dict[str, Any] = {"role": m.role, "content": m.content, "status": m.status, "created": m.created}
            if m.model:
                d["model"] = m.model
            if m.assessment is not None:
                d["assessment"] = m.assessment
            if m.stop is not None:
                d["stop"] = m.stop
            if m.explanation is not None:
                d["explanation"] = m.explanation
            if m.thresholds is not None:
                d["thresholds"] = m.thresholds
            if m.role == "assistant":
                d["tokens"] = [
                    {"index": t.index, "token_id": t.token_id, "text": t.text, "law_scores": list(t.law_scores),
                     **({"layer_scores": [list(r) for r in t.layer_scores]} if t.layer_scores else {})}
                    for t in m.tokens
                ]
            msgs.append(d)
        return {"format": "kala-chat", "version": 1, "title": chat.title, "model": chat.model,
                "settings": chat.settings, "created": chat.created, "laws": laws, "messages": msgs}

    def export_markdown(self, chat_id: int) -> str:
        """A readable transcript; each reply is followed by a table of its tokens' law scores."""
        chat = self.get_chat(chat_id)
        con = load_constitution()
        lines = [f"# {chat.title}", ""]
        if chat.model:
            lines.append(f"- Model: `{chat.model}`")
        s = chat.settings
        lines.append("- Settings: " + ", ".join(f"{k} = {v}" for k, v in s.items()))
        lines += ["- Laws: " + "; ".join(f"L{law.index} = {law.title}" for law in con), ""]
        for m in self.messages(chat_id):
            who = {"user": "User", "assistant": "KALA", "system": "System"}[m.role]
            lines += [f"## {who}", "", m.content or "_(empty)_", ""]
            if m.assessment and m.assessment.get("law_scores"):
                sc = m.assessment["law_scores"]
                lines += ["Prompt assessment: " + ", ".join(f"L{i} {v:.2f}" for i, v in enumerate(sc)), ""]
            if m.role == "assistant":
                if m.status != COMPLETE:
                    lines += [f"_Status: {m.status}_", ""]
                if m.stop and m.stop.get("message"):
                    lines += [f"> **Stopped:** {m.stop['message']}", ""]
                if m.tokens:
                    lines += ["<details><summary>Token law scores</summary>", "",
                              "| # | token | " + " | ".join(f"L{law.index}" for law in con) + " | min |",
                              "|---:|---|" + "---:|" * (len(con) + 1)]
                    for t in m.tokens:
                        tok = t.text.replace("|", "\\|").replace("\n", "\\n").replace("`", "'")
                        lines.append(f"| {t.index} | `{tok}` | " + " | ".join(f"{v:.3f}" for v in t.law_scores)
                                     + f" | {t.min_score:.3f} |")
                    lines += ["", "</details>", ""]
        return "\n".join(lines).rstrip() + "\n"

    def save_export(self, chat_id: int, path: str | Path) -> Path:
        """Write the chat as Markdown (``.md``) or JSON (``.json``), chosen by the file suffix."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            text = json.dumps(self.export_json(chat_id), ensure_ascii=False, indent=1)
        elif path.suffix.lower() in (".md", ".markdown"):
            text = self.export_markdown(chat_id)
        else:
            raise ValueError(f"{path}: export as .md (Markdown) or .json (with every token's scores)")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path
