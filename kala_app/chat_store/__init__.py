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

Whatever the file looks like, opening never fails and never loses data:

* a file that is not SQLite, fails SQLite's ``integrity_check``, or is another program's SQLite
  database (another ``application_id``, or tables that are not ours) is **moved aside** to
  ``chats.corrupt-YYYYmmdd-HHMMSS.sqlite3`` / ``chats.foreign-….sqlite3`` (with its ``-wal``/``-shm``),
  never deleted and never written to, and a fresh store opens; ``notices`` says where it went;
* an older schema is migrated forward (a copy of the old file is kept first when it holds data);
* a *newer* schema (``user_version`` above :data:`SCHEMA_VERSION`, written by a newer KALA Studio) is
  opened **read-only**: the chats are shown, nothing is written (writes raise
  :class:`ChatStoreReadOnly`), and the file stays where the newer version expects it - moving it
  aside would hide that history from the newer version, writing to it could corrupt it;
* a damaged row (settings or scores that do not parse, values of the wrong type) is returned with
  safe defaults and marked ``damaged``, its raw value is copied to
  ``chats.sqlite3.damaged-rows.jsonl`` before anything could overwrite it, and a notice is given;
* when even a fresh file cannot be made (no space, no permission, the file is locked) the store
  runs in memory for this session and says so (``in_memory``).

This package has no Qt dependency: it is used on the UI thread of the app, and by plain scripts.
Its rooms: :mod:`.schema` (tables, migrations, row types), :mod:`.values` (encoding and checking
stored values), :mod:`.opening` (opening whatever file is there, recovery, damaged rows),
:mod:`.store` (the queries) and :mod:`.export` (JSON and Markdown).
"""

from __future__ import annotations

from .opening import StoreFile, inspect_database
from .schema import (
    APPLICATION_ID,
    BUSY_TIMEOUT_S,
    CANCELLED,
    COMPLETE,
    DB_NAME,
    DEFAULT_SETTINGS,
    ERROR,
    INTERRUPTED,
    MIGRATIONS,
    SCHEMA_VERSION,
    STOPPED,
    STREAMING,
    ChatStoreReadOnly,
    ChatSummary,
    DamagedRow,
    Message,
    StoredToken,
)
from .store import ChatStore
from .values import clean_settings

__all__ = [
    "APPLICATION_ID", "BUSY_TIMEOUT_S", "CANCELLED", "COMPLETE", "DB_NAME", "DEFAULT_SETTINGS", "ERROR",
    "INTERRUPTED", "MIGRATIONS", "SCHEMA_VERSION", "STOPPED", "STREAMING", "ChatStore", "ChatStoreReadOnly",
    "ChatSummary", "DamagedRow", "Message", "StoreFile", "StoredToken", "clean_settings", "inspect_database",
]
