"""Opening a chat database whatever is there: inspecting the file, moving a damaged or foreign one
aside, migrating an older schema, read-only for a newer one, memory when nothing else works, and
keeping damaged rows' raw values (see the package docstring)."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import schema as tables  # looked up when used: tests and migrations may change them
from .schema import (
    _COLUMNS,
    _SQLITE_MAGIC,
    APPLICATION_ID,
    BUSY_TIMEOUT_S,
    DB_NAME,
    INTERRUPTED,
    STREAMING,
    ChatStoreReadOnly,
    DamagedRow,
)
from .values import text_factory

#: per schema version, the CREATE statements of a fresh database (what ours must match)
_EXPECTED: dict[int, dict[str, str]] = {}


def _expected_schema(version: int) -> dict[str, str]:
    """name -> CREATE statement of our tables and indexes at ``version`` (as SQLite stores them)."""
    if version not in _EXPECTED:
        con = sqlite3.connect(":memory:")
        try:
            for v, statements in tables.MIGRATIONS:
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
    ``SCHEMA_VERSION``), ``newer`` (ours, from a newer version), ``corrupt``, ``foreign`` (SQLite but
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
        con.text_factory = text_factory
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
    if user_version > tables.SCHEMA_VERSION and (app_id == APPLICATION_ID or set(names) & set(_COLUMNS)):
        return "newer", f"it was written by a newer KALA Studio (chat schema {user_version}; this version knows {tables.SCHEMA_VERSION})"
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


class StoreFile:
    """The open database file of a :class:`~kala_app.chat_store.store.ChatStore`: opening, recovery,
    damaged values, transactions. Not thread-safe: use it from one thread (the UI thread)."""


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
            con.text_factory = text_factory
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
        self._db.text_factory = text_factory
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
        if version >= tables.SCHEMA_VERSION:
            if int(self._db.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID:
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")  # a v1 file from before the stamp
            return
        if version >= 1 and not self.in_memory:
            self._backup(f"v{version}-backup")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for v, statements in tables.MIGRATIONS:
                if v > version:
                    for sql in statements:
                        self._db.execute(sql)
            self._db.execute(f"PRAGMA user_version={tables.SCHEMA_VERSION}")
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
