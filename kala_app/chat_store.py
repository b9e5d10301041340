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

This module has no Qt dependency: it is used on the UI thread of the app, and by plain scripts.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kala_engine.constitution import NUM_LAWS, load_constitution

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


def _pack_layers(layers: Sequence[Sequence[float]] | None) -> bytes | None:
    if layers is None:
        return None
    flat = [float(v) for row in layers for v in row]
    return struct.pack(f"<{len(flat)}f", *flat)


def _unpack_layers(blob: bytes | None, n_laws: int = 5) -> tuple[tuple[float, ...], ...] | None:
    if blob is None:
        return None
    if not isinstance(blob, bytes) or len(blob) % (4 * n_laws):
        raise ValueError(f"per-layer scores are not float32 rows of {n_laws}")
    flat = struct.unpack(f"<{len(blob) // 4}f", blob)
    return tuple(tuple(flat[i:i + n_laws]) for i in range(0, len(flat), n_laws))


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps_thresholds(thresholds: Sequence[float] | None) -> str | None:
    return None if thresholds is None else json.dumps([float(t) for t in thresholds])


def _check_thresholds(v: Any) -> bool:
    return isinstance(v, list) and len(v) == NUM_LAWS and all(_is_num(t) and 0.0 <= t <= 1.0 for t in v)


# ---------------------------------------------------------------- checking what was read


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_law(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < NUM_LAWS


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return "" if v is None else str(v)


def _parse_json(raw: Any) -> Any:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not isinstance(raw, str):
        raise ValueError(f"a {type(raw).__name__} where JSON text belongs")
    return json.loads(raw)


#: Per-chat settings the store knows, with the check each value must pass.
_SETTING_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "threshold": (lambda v: v is None or (_is_num(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
    "temperature": (lambda v: _is_num(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "max_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096,
                   "a whole number in [1, 4096]"),
    "seed": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "null or a whole number"),
}


def clean_settings(raw: Any) -> tuple[dict[str, Any], str]:
    """(settings, problem): the stored settings merged over the defaults; a bad value falls back
    to its default and ``problem`` says what was wrong ("" when nothing was)."""
    out = dict(DEFAULT_SETTINGS)
    try:
        d = _parse_json(raw)
    except ValueError as e:
        return out, f"settings are not JSON ({str(e)[:80]})"
    if not isinstance(d, dict):
        return out, f"settings are a JSON {type(d).__name__}, not an object"
    problems = []
    for k, v in d.items():
        check = _SETTING_CHECKS.get(k)
        if check is None:
            problems.append(f"unknown setting {k!r}")
        elif not check[0](v):
            problems.append(f"{k} must be {check[1]}, got {json.dumps(v)[:40]}")
        else:
            out[k] = v
    return out, "; ".join(problems)


def _scores(v: Any) -> bool:
    return isinstance(v, list) and len(v) == NUM_LAWS and all(_is_num(x) for x in v)


def _check_assessment(d: Any) -> bool:
    return isinstance(d, dict) and (d.get("law_scores") is None or _scores(d["law_scores"])) and (
        d.get("layer_scores") is None
        or (isinstance(d["layer_scores"], list) and all(_scores(r) for r in d["layer_scores"])))


def _check_stop(d: Any) -> bool:
    return isinstance(d, dict) and all(
        d.get(k) is None or isinstance(d[k], str) for k in ("kind", "message")) and (
        d.get("law") is None or _is_law(d["law"])) and all(
        d.get(k) is None or _is_num(d[k]) for k in ("score", "threshold"))


def _check_explanation(d: Any) -> bool:
    if not isinstance(d, dict) or not (d.get("text") is None or isinstance(d["text"], str)):
        return False
    violated = d.get("violated", [])
    return isinstance(violated, list) and all(
        isinstance(v, dict) and _is_law(v.get("law")) and (v.get("score") is None or _is_num(v["score"]))
        and (v.get("first_layer") is None or (isinstance(v["first_layer"], int)
                                              and not isinstance(v["first_layer"], bool)))
        for v in violated)


_JSON_CHECKS = {"assessment": _check_assessment, "stop": _check_stop, "explanation": _check_explanation,
                "thresholds": _check_thresholds}


# ---------------------------------------------------------------- looking at a file before using it


def _text_factory(b: bytes) -> str:
    """TEXT as str; bytes that are not UTF-8 (a damaged file) are shown with U+FFFD, never raise."""
    return b.decode("utf-8", errors="replace")


_EXPECTED: dict[int, dict[str, str]] = {}


def _expected_schema(version: int) -> dict[str, str]:
    """name -> CREATE statement of our tables and indexes at ``version`` (as SQLite stores them)."""
    if version not in _EXPECTED:
        con = sqlite3.connect(":memory:")
        try:
            for v, statements in MIGRATIONS:
                if v <= version:
                    for sql in statements:
                        con.execute(sql)
            _EXPECTED[version] = {n: sql for n, sql in con.execute(
                "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")}
        finally:
            con.close()
    return _EXPECTED[version]


def _sqlite_error_kind(e: sqlite3.Error) -> str:
    """'corrupt' when the file itself is bad; 'busy' / 'io' when it may be fine but cannot be used now."""
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e).lower()
    if (name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "not a database" in text or "malformed" in text
            or "unsupported file format" in text):  # e.g. a flipped schema-format byte in the header
        return "corrupt"
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in text or "busy" in text:
        return "busy"
    return "io"


def inspect_database(path: Path) -> tuple[str, str]:
    """What ``path`` is, without writing to it: (verdict, detail).

    verdict: ``missing`` (no file or an empty one), ``ours`` (a KALA chat database at or below
    SCHEMA_VERSION), ``newer`` (ours, from a newer version), ``corrupt``, ``foreign`` (SQLite but
    not ours), ``busy`` or ``io`` (cannot be read now: locked or an OS error; not touched).
    """
    if not path.exists():
        return "missing", ""  # a stray -wal/-shm without it is kept aside by ChatStore, never replayed
    if path.is_dir():
        return "foreign", "it is a folder"
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as e:
        return "io", f"cannot read it ({e.strerror or e})"
    if head and (len(head) < 100 or not head.startswith(_SQLITE_MAGIC)):
        return "corrupt", "it is not an SQLite database"
    if head and head[18] > 2 and head[19] <= 2:  # SQLite's own rule: a newer write format is read-only
        return "newer", f"it was written in a newer SQLite file format (write version {head[18]})"
    try:
        con = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_S)
        con.text_factory = _text_factory
    except sqlite3.Error as e:
        return _sqlite_error_kind(e), f"SQLite cannot open it ({e})"
    try:
        user_version = int(con.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(con.execute("PRAGMA application_id").fetchone()[0])
        names = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        schema = {n: sql for n, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")}
        columns = {n: {r[1] for r in con.execute(f'PRAGMA table_info("{n}")')} for n in names if n in _COLUMNS}
        # integrity_check, not quick_check: it also finds an index that disagrees with its table
        # (quick_check passes such a file and the first query then fails); 0.1 s for 60 MB of chats
        check = [r[0] for r in con.execute("PRAGMA integrity_check(5)")]
    except sqlite3.Error as e:
        kind = _sqlite_error_kind(e)
        return kind, f"SQLite cannot read it ({e})"
    except UnicodeDecodeError:  # SQLite's error message quotes schema text that is not UTF-8
        return "corrupt", "SQLite cannot read its table definitions"
    finally:
        con.close()
    if check != ["ok"]:
        return "corrupt", f"SQLite's integrity check failed: {'; '.join(map(str, check))[:200]}"
    if app_id not in (0, APPLICATION_ID):
        return "foreign", f"it is another program's SQLite database (application id {app_id:#x})"
    if user_version > SCHEMA_VERSION and (app_id == APPLICATION_ID or set(names) & set(_COLUMNS)):
        return "newer", f"it was written by a newer KALA Studio (chat schema {user_version}; this version knows {SCHEMA_VERSION})"
    if not names:
        return ("missing", "") if app_id in (0, APPLICATION_ID) else ("foreign", "")
    others = sorted(set(names) - set(_COLUMNS))
    if app_id != APPLICATION_ID and (others or not set(names) & set(_COLUMNS)):
        return "foreign", f"it is another program's SQLite database (tables: {', '.join(sorted(names))[:120]})"
    for n, cols in columns.items():
        if not _COLUMNS[n] <= cols:
            return "foreign", f"its table {n} lacks the column(s) {', '.join(sorted(_COLUMNS[n] - cols))}"
    expected = _expected_schema(max(1, user_version))
    changed = sorted(n for n, sql in expected.items() if n in schema and schema[n] != sql)
    if changed:  # a flipped byte in a definition: constraints we rely on may be gone
        return "corrupt", f"the definition of {', '.join(changed)} is not the one KALA Studio wrote"
    return "ours", ""


class ChatStore:
    """One SQLite database of chats. Not thread-safe: use it from one thread (the UI thread)."""

    def __init__(self, path: str | Path, *, recover: bool = True) -> None:
        """Open (or create) the store at ``path``; see the module docstring for damaged files.

        ``recover=False`` raises :class:`OSError` instead of moving a damaged file aside or
        falling back to memory (for tools that must not change anything).
        """
        path = Path(path)
        if path.is_dir() and path.suffix != ".sqlite3":
            path = path / DB_NAME
        self.path = path
        #: what the user should be told about this store (moved-aside files, read-only, damaged rows)
        self.notices: list[str] = []
        #: called with each notice given after opening (the main window shows them)
        self.on_notice: Callable[[str], None] | None = None
        self.moved_aside: list[Path] = []  # where damaged or foreign files went
        self.damaged: list[DamagedRow] = []
        self.read_only = False  # a newer version's database: shown, never written
        self.in_memory = False  # nothing could be opened on disk: this session's chats are not saved
        self._damage_keys: set | None = None  # values already in the damaged-rows file
        self._seen: set = set()  # damaged values noted in this session
        self._in_tx = False
        self._db: sqlite3.Connection = None  # type: ignore[assignment]
        self._open(recover)
        try:
            self.recovered = 0 if self.read_only else self._recover()
        except sqlite3.Error as e:  # e.g. the disk is full: the replies stay marked 'streaming' for now
            self.recovered = 0
            self.notices.append(f"Interrupted replies in {self.path} could not be marked as such ({e}).")

    @property
    def damaged_rows_path(self) -> Path:
        """Where the raw value of every damaged row is copied (JSON lines)."""
        return self.path.with_name(self.path.name + ".damaged-rows.jsonl")

    # ------------------------------------------------------------ opening whatever is there

    def _open_read_only(self, detail: str) -> bool:
        """Open a database from a newer KALA Studio (or SQLite) read-only; False when SQLite cannot
        read it at all (then it is damaged, not newer)."""
        con = None
        try:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0,
                                  isolation_level=None)
            con.row_factory = sqlite3.Row
            con.text_factory = _text_factory
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            if con is not None:
                con.close()
            return False
        self._db = con
        self.read_only = True
        self.notices.append(f"The chat history {self.path} {detail.removeprefix('it ')}. It is open read-only: "
                            f"your chats are shown, but nothing new is saved. Update KALA Studio to keep "
                            f"chatting with your history.")
        return True

    def _open(self, recover: bool) -> None:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._fallback(recover, f"the folder {path.parent} cannot be made ({e.strerror or e})")
        verdict, detail = inspect_database(path)
        if verdict == "newer" and self._open_read_only(detail):
            return None
        if verdict == "newer":  # not even readable as a newer file: it is damaged, keep it aside
            verdict, detail = "corrupt", f"{detail}, but SQLite cannot read it"
        if verdict in ("corrupt", "foreign"):
            if not recover:
                raise OSError(f"{path}: {detail}")
            try:
                self._move_aside(verdict, detail)
            except OSError as e:
                return self._fallback(recover, f"{path} is unusable ({detail}) and cannot be moved aside "
                                               f"({e.strerror or e})")
        elif verdict == "missing" and not path.exists():
            stray = [Path(f"{path}{x}") for x in ("-wal", "-shm", "-journal") if Path(f"{path}{x}").exists()]
            if any(p.name.endswith(("-wal", "-journal")) for p in stray):
                # a log without its database: keep it aside, never replay it into a new file
                target = self._aside_name("orphan")
                for src in stray:
                    try:
                        os.replace(src, Path(f"{target}{str(src)[len(str(path)):]}"))
                    except OSError as e:
                        return self._fallback(recover, f"{src} cannot be moved aside ({e.strerror or e})")
                self.moved_aside.append(target)
                self.notices.append(f"The chat history {path} was missing but its log files were there; they were "
                                    f"moved, not deleted, beside it as {target.name}-*; a new, empty chat history "
                                    f"was started.")
        elif verdict in ("busy", "io"):
            return self._fallback(recover, f"{path} cannot be used now ({detail})")
        for attempt in (1, 2):
            try:
                self._connect(path)
                return None
            except sqlite3.Error as e:
                if self._db is not None:
                    self._db.close()
                    self._db = None  # type: ignore[assignment]
                kind = _sqlite_error_kind(e)
                if kind == "corrupt" and recover and attempt == 1:
                    try:
                        self._move_aside("corrupt", f"SQLite cannot use it ({e})")
                        continue
                    except OSError:
                        pass
                if not recover:
                    raise OSError(f"{path}: {e}") from None
                return self._fallback(recover, f"{path} cannot be opened ({e})")
        return None

    def _connect(self, path: Path | str) -> None:
        # isolation_level=None: we open transactions ourselves (BEGIN ... COMMIT) in batches.
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        self._db.text_factory = _text_factory
        if str(path) != ":memory:":
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"could not switch the chat database to WAL mode (got {mode!r})")
        # NORMAL in WAL mode: a commit survives a crash or kill of this process; only a power
        # loss can lose the last few commits. Each token batch is therefore one cheap append.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        """Bring the schema forward from its user_version, in one transaction."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            if int(self._db.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID:
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")  # a v1 file from before the stamp
            return
        if version >= 1 and not self.in_memory:
            self._backup(f"v{version}-backup")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for v, statements in MIGRATIONS:
                if v > version:
                    for sql in statements:
                        self._db.execute(sql)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _aside_name(self, label: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stem, suffix = self.path.stem, self.path.suffix or ".sqlite3"
        target = self.path.with_name(f"{stem}.{label}-{stamp}{suffix}")
        i = 2
        while any(Path(f"{target}{x}").exists() for x in ("", "-wal", "-shm", "-journal")):
            target = self.path.with_name(f"{stem}.{label}-{stamp}-{i}{suffix}")
            i += 1
        return target

    def _backup(self, label: str) -> Path:
        """A consistent copy of the open database beside it (before a migration)."""
        target = self._aside_name(label)
        dest = sqlite3.connect(str(target))
        try:
            self._db.backup(dest)
        finally:
            dest.close()
        return target

    def _move_aside(self, label: str, detail: str) -> Path:
        """Rename the file (with its -wal/-shm/-journal) to a timestamped name beside it; never delete."""
        target = self._aside_name(label)
        for x in ("", "-wal", "-shm", "-journal"):
            src = Path(f"{self.path}{x}")
            if src.exists():
                os.replace(src, Path(f"{target}{x}"))
        self.moved_aside.append(target)
        what = "is not a KALA chat database" if label == "foreign" else "is damaged"
        self.notices.append(f"The chat history {self.path} {what}: {detail}. It was moved, not deleted, to "
                            f"{target}; a new, empty chat history was started.")
        return target

    def _fallback(self, recover: bool, why: str) -> None:
        if not recover:
            raise OSError(why)
        self.in_memory = True
        self._connect(":memory:")
        self.notices.append(f"Chats are not saved in this session: {why}.")

    def _notify(self, message: str) -> None:
        self.notices.append(message)
        if self.on_notice is not None:
            self.on_notice(message)

    def _damage(self, table: str, row: Any, column: str, raw: Any, problem: str) -> None:
        """Note a damaged value: keep its raw form in the damaged-rows file (once) and tell the user."""
        kept: dict[str, Any] = ({"raw_base64": base64.b64encode(raw).decode("ascii")} if isinstance(raw, bytes)
                                else {"raw": raw if raw is None or isinstance(raw, str) else repr(raw)})
        key = (table, str(row), column, kept.get("raw"), kept.get("raw_base64"))
        if key in self._seen:
            return  # said once per session
        self._seen.add(key)
        self.damaged.append(DamagedRow(table, row, column, problem))
        where = ""
        if not self.in_memory:
            where = f"; the stored value is kept in {self.damaged_rows_path}"
            if key not in self._kept_keys():
                line = {"table": table, "row": row, "column": column, "problem": problem, "found": time.time(),
                        **kept}
                try:
                    with open(self.damaged_rows_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(line) + "\n")  # ASCII: no character in it can end a line
                        f.flush()
                        os.fsync(f.fileno())
                    self._kept_keys().add(key)
                except OSError:
                    where = "; the stored value stays in the database"
        what = {"chats": f"chat {row}", "messages": f"message {row}", "tokens": f"token {row}"}.get(table, table)
        self._notify(f"Chat history: {what} has a damaged {column} ({problem}); it was skipped{where}.")

    def _kept_keys(self) -> set:
        """The values already in the damaged-rows file (read once)."""
        if self._damage_keys is None:
            self._damage_keys = set()
            try:
                for line in self.damaged_rows_path.read_text(encoding="utf-8").split("\n"):
                    try:
                        d = json.loads(line)
                        self._damage_keys.add((d["table"], str(d["row"]), d["column"], d.get("raw"),
                                               d.get("raw_base64")))
                    except (ValueError, KeyError, TypeError):
                        continue
            except (OSError, UnicodeDecodeError):
                pass
        return self._damage_keys

    @classmethod
    def in_folder(cls, chats_dir: str | Path) -> ChatStore:
        """The store in the app's chats folder (``AppContext.chats_dir``)."""
        return cls(Path(chats_dir) / DB_NAME)

    # ------------------------------------------------------------ transactions

    def _begin(self) -> None:
        if self.read_only:
            raise ChatStoreReadOnly(f"{self.path} was written by a newer KALA Studio and is open read-only; "
                                    f"nothing is saved (update KALA Studio to keep chatting with your history)")
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
            if not self.read_only:
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
        out = []
        for r in rows:
            settings, problem = clean_settings(r["settings"])
            if problem:
                self._damage("chats", r["id"], "settings", r["settings"], problem)
            out.append(ChatSummary(r["id"], _text(r["title"]) or "Untitled", _text(r["model"]), settings,
                                   float(r["created"]) if _is_num(r["created"]) else 0.0,
                                   float(r["updated"]) if _is_num(r["updated"]) else 0.0, r["n"], problem))
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
            parsed, problems = {}, []
            for col, ok in _JSON_CHECKS.items():
                try:
                    v = None if r[col] is None else _parse_json(r[col])
                    if v is not None and not ok(v):
                        raise ValueError("not the shape KALA writes")
                except ValueError as e:
                    self._damage("messages", r["id"], col, r[col], str(e)[:120])
                    problems.append(col)
                    v = None
                parsed[col] = v
            m = Message(r["id"], r["chat_id"], _text(r["role"]), _text(r["content"]), _text(r["status"]),
                        _text(r["model"]), float(r["created"]) if _is_num(r["created"]) else 0.0,
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
            if not (all(_is_num(v) for v in scores) and isinstance(r["idx"], int) and isinstance(r["token_id"], int)):
                self._damage("tokens", f"{message_id}/{r['idx']}", "scores", repr(tuple(r)), "not numbers")
                continue  # a token without usable scores is left out of the reply
            try:
                layers = _unpack_layers(r["layers"])
            except (ValueError, struct.error) as e:
                self._damage("tokens", f"{message_id}/{r['idx']}", "layers", r["layers"], str(e))
                layers = None
            out.append(StoredToken(r["idx"], r["token_id"], _text(r["text"]), tuple(float(v) for v in scores), layers))
        return out

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
            who = {"user": "User", "assistant": "KALA", "system": "System"}.get(m.role, m.role)
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
