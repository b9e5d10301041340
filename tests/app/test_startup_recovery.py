"""The app starts whatever its files look like, keeps every damaged file aside and says where.

Before: a corrupt ``chats.sqlite3`` (or one chat row with bad settings JSON) ended the app at
start with a ``sqlite3.DatabaseError`` traceback (exit 134); a foreign SQLite file got our tables
added; a newer database had its ``user_version`` overwritten; ``--self-test`` never opened a store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kala_app.chat_store import APPLICATION_ID, DB_NAME, ChatStore, ChatStoreReadOnly
from kala_app.context import AppContext
from kala_app.main_window import MainWindow

ROOT = Path(__file__).resolve().parents[2]
GARBAGE = b"SQLite format 3\x00" + bytes(range(256)) * 20  # the right magic, then nothing SQLite can read


def chats_file(home: Path) -> Path:
    return home / "data" / "chats" / DB_NAME


@pytest.fixture
def open_window(qtbot, studio_home):
    made = []

    def open_():
        ctx = AppContext.create()
        w = MainWindow(ctx, show_quickstart=False)
        qtbot.addWidget(w)
        w.show()
        qtbot.waitExposed(w)
        made.append(w)
        return w

    yield open_
    for w in made:
        w.ctx.worker.shutdown(timeout_s=10)


def _db_with_chat(path: Path, title: str = "Kept") -> int:
    store = ChatStore(path)
    cid = store.create_chat(title, settings={"temperature": 0.3})
    store.add_user_message(cid, "hello")
    store.close()
    return cid


def test_corrupt_chat_database_app_opens_keeps_the_old_file_and_stores_a_new_chat(open_window, studio_home):
    db = chats_file(studio_home)
    db.parent.mkdir(parents=True)
    db.write_bytes(GARBAGE)

    w = open_window()

    kept = sorted(db.parent.glob("chats.corrupt-*.sqlite3"))
    assert len(kept) == 1 and kept[0].read_bytes() == GARBAGE  # beside the new one, byte for byte
    assert w.notice_banner.isVisible()
    text = w.notice_banner.label.text()
    assert str(kept[0]) in text and "not deleted" in text
    chat = w.show_page("chat")
    cid = chat.new_chat()
    chat.store.add_user_message(cid, "a new message after the repair")
    again = ChatStore(db)
    assert [c.id for c in again.list_chats()] == [cid]
    assert [m.content for m in again.messages(cid)] == ["a new message after the repair"]
    assert again.notices == [] and again.integrity_ok()
    again.close()


def test_the_real_entry_point_starts_on_a_corrupt_chat_database(tmp_path):
    """``kala-studio`` itself (main()): it used to exit 134 with a DatabaseError traceback."""
    home = tmp_path / "home"
    chats_file(home).parent.mkdir(parents=True)
    chats_file(home).write_bytes(GARBAGE)
    code = textwrap.dedent("""
        import sys
        import kala_app
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
        from kala_app import main
        app = QApplication(["kala-studio"])
        def done():
            w = next(x for x in app.topLevelWidgets() if type(x).__name__ == "MainWindow")
            print("BANNER:", w.notice_banner.isVisible(), flush=True)
            w.close()
            app.quit()
        QTimer.singleShot(1500, done)
        sys.exit(main.main([]))
    """)
    env = dict(os.environ, KALA_STUDIO_HOME=str(home), QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "BANNER: True" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    kept = list(chats_file(home).parent.glob("chats.corrupt-*.sqlite3"))
    assert len(kept) == 1 and kept[0].read_bytes() == GARBAGE


def test_a_chat_row_with_bad_settings_is_shown_as_damaged_and_skipped(open_window, studio_home):
    db = chats_file(studio_home)
    db.parent.mkdir(parents=True)
    good = _db_with_chat(db, "Good")
    bad = _db_with_chat(db, "Bad settings")
    con = sqlite3.connect(db)
    con.execute("UPDATE chats SET settings=? WHERE id=?", ('{"temperature": "hot", ', bad))
    con.execute("UPDATE messages SET assessment=? WHERE chat_id=?", ('{"law_scores": ["x"]}', good))
    con.commit()
    con.close()

    w = open_window()
    chat = w.show_page("chat")
    titles = [chat.chat_list.item(i).text() for i in range(chat.chat_list.count())]
    assert any("Good" in t for t in titles) and any("Bad settings" in t for t in titles)
    chat.open_chat(bad)  # defaults instead of the damaged settings
    assert chat.settings()["temperature"] == pytest.approx(0.7)
    chat.open_chat(good)  # its damaged assessment is skipped, the message is shown
    text = w.notice_banner.label.text()
    assert w.notice_banner.isVisible() and f"chat {bad}" in text and "damaged" in text
    kept = [json.loads(x) for x in chat.store.damaged_rows_path.read_text().splitlines()]
    assert {"table": "chats", "row": bad, "column": "settings", "raw": '{"temperature": "hot", '}.items() <= kept[0].items()
    assert any(k["column"] == "assessment" and k["raw"] == '{"law_scores": ["x"]}' for k in kept)
    # changing the damaged chat's settings overwrites the row - its old text stays in the kept file
    chat.open_chat(bad)
    chat.set_settings(temperature=0.5)
    assert ChatStore(db).get_chat(bad).settings["temperature"] == 0.5


def test_a_foreign_sqlite_file_gets_no_tables_and_is_moved_aside(studio_home):
    db = chats_file(studio_home)
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    con.execute("INSERT INTO photos (path) VALUES ('/home/me/cat.jpg')")
    con.commit()
    con.close()
    original = db.read_bytes()

    store = ChatStore(db)
    assert len(store.moved_aside) == 1 and store.moved_aside[0].read_bytes() == original
    assert "not a KALA chat database" in store.notices[0] and "photos" in store.notices[0]
    con = sqlite3.connect(store.moved_aside[0])
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["photos"]
    con.close()
    store.create_chat("mine")
    assert sqlite3.connect(db).execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_a_newer_schema_opens_read_only_and_is_never_written(open_window, studio_home):
    db = chats_file(studio_home)
    db.parent.mkdir(parents=True)
    cid = _db_with_chat(db, "From the future")
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version=9")
    con.commit()
    con.close()
    original = db.read_bytes()

    w = open_window()
    chat = w.show_page("chat")
    assert chat.store.read_only and chat.chat_id == cid  # the chats are shown
    assert "newer KALA Studio" in w.notice_banner.label.text() and "read-only" in w.notice_banner.label.text()
    with pytest.raises(ChatStoreReadOnly, match="newer KALA Studio"):
        chat.store.create_chat("x")
    # the page offers no write: Send / New / Rename / Delete are off, a setting change is not saved
    assert not chat.send_button.isEnabled() and not chat.new_button.isEnabled()
    assert not chat.send("hello") and "read-only" in chat.status.text()
    chat.set_settings(temperature=1.5)
    w.close()
    assert db.read_bytes() == original
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 9


def test_an_older_schema_is_migrated_forward_with_a_copy_kept(tmp_path, monkeypatch):
    import kala_app.chat_store.schema as cs  # the schema's owner (read by the opening code when it opens)

    db = tmp_path / DB_NAME
    cid = _db_with_chat(db)
    now = cs.SCHEMA_VERSION  # a database of today's schema meets the next version's migration
    monkeypatch.setattr(cs, "SCHEMA_VERSION", now + 1)
    monkeypatch.setattr(cs, "MIGRATIONS",
                        [*cs.MIGRATIONS, (now + 1, ["ALTER TABLE chats ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0"])])
    store = ChatStore(db)
    assert store.notices == [] and [c.id for c in store.list_chats()] == [cid]
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == now + 1
    assert con.execute("SELECT pinned FROM chats").fetchall() == [(0,)]
    backups = list(tmp_path.glob(f"chats.v{now}-backup-*.sqlite3"))
    assert len(backups) == 1
    assert sqlite3.connect(backups[0]).execute("SELECT title FROM chats").fetchall() == [("Kept",)]


def test_a_stray_log_without_its_database_is_kept_aside(tmp_path):
    db = tmp_path / DB_NAME
    (tmp_path / f"{DB_NAME}-wal").write_bytes(b"old log")
    store = ChatStore(db)
    assert store.moved_aside and Path(f"{store.moved_aside[0]}-wal").read_bytes() == b"old log"
    store.create_chat("fresh")
    assert [c.title for c in ChatStore(db).list_chats()] == ["fresh"]


def test_damaged_settings_file_and_wrong_values_start_with_defaults(open_window, studio_home):
    conf = studio_home / "config"
    conf.mkdir(parents=True)
    (conf / "settings.ini").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    w = open_window()
    kept = list(conf.glob("settings.damaged-*.ini"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"\x89PNG")
    assert str(kept[0]) in w.notice_banner.label.text()
    w.close()

    # a text file with values of the wrong kind: every page gets its default
    (conf / "settings.ini").write_text(
        "[window]\ngeometry=not a geometry\nstate=1, 2\npage=nowhere\n[train]\nsmoothing=abc\n"
        "learning_rate=lots\n[data]\ncount=1e999\nseed=[1]\ncurrent=a, b\n[quickstart]\noffered=maybe\n")
    w = open_window()
    assert w.current_page_key() == "data"
    assert w.pages["data"].count_spin.value() == 2000
    assert w.pages["train"].smooth_slider.value() == 60


def test_a_file_where_a_folder_belongs_is_moved_aside(open_window, studio_home):
    (studio_home / "data").mkdir(parents=True)
    (studio_home / "data" / "chats").write_text("not a folder")
    w = open_window()
    kept = list((studio_home / "data").glob("chats.not-a-folder-*"))
    assert len(kept) == 1 and kept[0].read_text() == "not a folder"
    assert (studio_home / "data" / "chats").is_dir() and str(kept[0]) in w.notice_banner.label.text()


def test_self_test_store_check_opens_the_real_stores(studio_home, capsys):
    from kala_app.main import check_stores

    chats_file(studio_home).parent.mkdir(parents=True)
    chats_file(studio_home).write_bytes(GARBAGE)
    lines = []
    assert check_stores(lines.append)
    out = "\n".join(lines)
    assert "moved, not deleted" in out and "chat history:" in out and "read-write" in out and "runs:" in out
    assert list(chats_file(studio_home).parent.glob("chats.corrupt-*.sqlite3"))


def test_self_test_store_check_fails_when_the_chat_history_cannot_be_opened(studio_home, monkeypatch):
    from kala_app.chat_store import opening
    from kala_app.main import check_stores

    def busy(path):
        return "busy", "database is locked"

    monkeypatch.setattr(opening, "inspect_database", busy)  # another program holds the file
    lines = []
    assert not check_stores(lines.append)
    assert any(x.startswith("FAILED: chat history") for x in lines), lines


def test_runs_list_shows_a_folder_another_process_trains_in_as_running(tmp_path):
    from kala_app.runs import list_runs
    from kala_engine.train.run_lock import RunLock

    run = tmp_path / "runs" / "r1"
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 4, "lm_loss": 3.0}\n')
    [info] = list_runs(tmp_path / "runs")
    assert info.status == "interrupted" and info.can_resume and info.owner == ""
    with RunLock(run, command="kala train --run-dir r1"):
        [info] = list_runs(tmp_path / "runs")
        assert info.status == "running" and not info.can_resume
        assert f"process {os.getpid()}" in info.owner and "kala train --run-dir r1" in info.owner
    [info] = list_runs(tmp_path / "runs")
    assert info.status == "interrupted"
