"""The chat database's schema, its migrations, the status of a message and the rows it returns."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

DB_NAME = "chats.sqlite3"
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a KALA chat database ("KALA" in ASCII): tells ours from other SQLite files
APPLICATION_ID = 0x4B414C41
#: how long opening waits for another process (a second KALA Studio) holding a write lock
BUSY_TIMEOUT_S = 5.0
_SQLITE_MAGIC = b"SQLite format 3\x00"

#: Default per-chat generation settings (the threshold applies to every law).
#: threshold None = the model's calibrated per-law thresholds (see kala_engine.train.calibration)
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
    created     REAL NOT NULL
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

def _statements(script: str) -> list[str]:
    """Split an SQL script into statements (sqlite3.complete_statement knows about comments and strings)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


#: Schema migrations: (version, statements) applied in order to a database below that version.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, _statements(_SCHEMA)),
    # 2: each message keeps the per-law thresholds it was judged with (NULL in older rows)
    (2, ["ALTER TABLE messages ADD COLUMN thresholds TEXT"]),
]

#: The columns each of our tables must have (a table without them is not ours).
_COLUMNS = {
    "chats": {"id", "title", "model", "settings", "created", "updated"},
    "messages": {"id", "chat_id", "role", "content", "status", "model", "assessment", "stop", "explanation",
                 "created"},  # + "thresholds" from schema 2 on (added by the migration)
    "tokens": {"message_id", "idx", "token_id", "text", "s0", "s1", "s2", "s3", "s4", "layers"},
}


class ChatStoreReadOnly(RuntimeError):
    """A write to a store opened read-only (a chat database from a newer KALA Studio)."""


@dataclass(frozen=True)
class DamagedRow:
    table: str
    row: Any  # the row's id (message id for a token row: "message_id/idx")
    column: str
    problem: str


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
    damaged: str = ""  # what of this message could not be read (skipped); "" when intact
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
    damaged: str = ""  # why this chat's stored settings were replaced by defaults ("" when intact)
