"""Chat history in SQLite: survives restarts and kills, exports every token's scores."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kala_app.chat_store import COMPLETE, INTERRUPTED, MIGRATIONS, ChatStore, StoredToken
from kala_engine.constitution import load_constitution


def _tok(i: int, text: str, low: float = 0.9, layers: int | None = 2) -> StoredToken:
    scores = (0.95, low, 0.9, 0.97, 0.99)
    lay = None if layers is None else tuple(tuple(s - 0.01 * j for s in scores) for j in range(layers))
    return StoredToken(i, 100 + i, text, scores, lay)


def test_chat_survives_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    store = ChatStore(tmp_path / "chats.sqlite3")
    cid = store.create_chat("First", model="/runs/a/final", settings={"threshold": 0.6})
    store.add_user_message(cid, "Hello there", assessment={"law_scores": [0.9, 0.8, 0.9, 0.9, 0.9]})
    rid = store.begin_reply(cid, model="/runs/a/final")
    store.append_tokens(rid, [_tok(0, "Hi"), _tok(1, " you", low=0.3)])
    store.commit()
    store.finish_reply(rid, status=COMPLETE, stop={"kind": "eos", "message": "end of text"})
    store.rename_chat(cid, "Greeting")
    store.close()

    again = ChatStore(tmp_path / "chats.sqlite3")
    chats = again.list_chats()
    assert [c.title for c in chats] == ["Greeting"]
    assert chats[0].settings["threshold"] == 0.6 and chats[0].message_count == 2
    msgs = again.messages(cid)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[0].content == "Hello there"
    assert msgs[0].assessment["law_scores"][1] == pytest.approx(0.8)
    assert msgs[1].content == "Hi you" and msgs[1].status == COMPLETE
    assert msgs[1].tokens[1].law_scores[1] == pytest.approx(0.3)
    assert msgs[1].tokens[1].layer_scores[1][1] == pytest.approx(0.29, abs=1e-6)
    assert again.history(cid) == [{"role": "user", "content": "Hello there"},
                                  {"role": "assistant", "content": "Hi you"}]
    again.delete_chat(cid)
    assert again.list_chats() == []
    # deleting the chat removed its tokens too (foreign keys with cascade)
    assert again._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 0
    assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rename_to_empty_is_refused(tmp_path: Path) -> None:
    store = ChatStore(tmp_path)
    cid = store.create_chat()
    with pytest.raises(ValueError, match="empty"):
        store.rename_chat(cid, "   ")


def test_exports_hold_every_token_score(tmp_path: Path) -> None:
    store = ChatStore(tmp_path)
    cid = store.create_chat("Export me")
    store.add_user_message(cid, "Question | with pipe")
    rid = store.begin_reply(cid)
    store.append_tokens(rid, [_tok(i, f" t{i}", low=0.1 * i) for i in range(5)])
    store.finish_reply(rid, status="stopped",
                       stop={"kind": "ethics", "law": 1, "message": "Law 1 fell to 0.20 < 0.50"})
    # the stopped reply is not fed back to the model; the user's message is
    assert store.history(cid) == [{"role": "user", "content": "Question | with pipe"}]
    data = json.loads(json.dumps(store.export_json(cid)))
    reply = data["messages"][1]
    assert len(reply["tokens"]) == 5
    assert reply["tokens"][3]["law_scores"][1] == pytest.approx(0.3)
    assert len(reply["tokens"][3]["layer_scores"]) == 2
    assert [law["title"] for law in data["laws"]] == [law.title for law in load_constitution()]
    md = store.export_markdown(cid)
    assert "Law 1 fell to 0.20" in md
    assert md.count("| `") == 5  # one table row per token
    assert "0.300" in md
    out = store.save_export(cid, tmp_path / "chat.md")
    assert out.read_text(encoding="utf-8") == md
    with pytest.raises(ValueError, match=r"\.md"):
        store.save_export(cid, tmp_path / "chat.txt")


WRITER = textwrap.dedent(
    """
    import sys, time
    from kala_app.chat_store import ChatStore, StoredToken
    store = ChatStore(sys.argv[1])
    cid = store.create_chat("Crash test")
    store.add_user_message(cid, "Tell me about rivers")
    rid = store.begin_reply(cid)
    i = 0
    while True:
        store.append_tokens(rid, [StoredToken(i, i, f" w{i}", (0.9, 0.9, 0.9, 0.9, 0.9))])
        i += 1
        if i % 8 == 0:
            store.commit()
            if i == 64:
                print("STREAMING", flush=True)
        time.sleep(0.001)
    """
)


def test_kill_mid_reply_leaves_a_readable_database_with_the_user_message(tmp_path: Path) -> None:
    db = tmp_path / "chats.sqlite3"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STREAMING", line
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # a plain sqlite3 reader sees a consistent database
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()

    store = ChatStore(db)
    assert store.recovered == 1
    (chat,) = store.list_chats()
    user, reply = store.messages(chat.id)
    assert user.role == "user" and user.content == "Tell me about rivers"
    assert reply.status == INTERRUPTED
    assert len(reply.tokens) >= 64  # everything committed before the kill is there
    assert len(reply.tokens) % 8 == 0  # whole batches only
    assert reply.content.startswith(" w0 w1 w2")


APP_WRITER = textwrap.dedent(
    """
    import os, sys, time
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["KALA_STUDIO_HOME"] = sys.argv[1]
    import kala_app
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    from kala_app.context import AppContext
    from kala_app.pages.chat import ChatPage
    from kala_engine.jobs import TokenEvent

    def factory(model, messages, settings):
        def job(emit, control):
            i = 0
            while True:  # a reply that never ends: the process is killed while it streams
                control.checkpoint()
                emit(TokenEvent(i, i, f" w{i}", (0.9, 0.8, 0.9, 0.9, 0.9)))
                i += 1
                time.sleep(0.003)
        return job

    app = QApplication([])
    ctx = AppContext.create()
    (ctx.runs_dir / "r" / "final").mkdir(parents=True, exist_ok=True)
    page = ChatPage(ctx, job_factory=factory)
    page.show()
    page.send("Tell me about rivers")
    def check():
        if page.current_reply().token_count() >= 50:
            print("STREAMING", flush=True)
            probe.stop()
    probe = QTimer()
    probe.timeout.connect(check)
    probe.start(10)
    app.exec()
    """
)


def test_app_killed_mid_reply_keeps_the_user_message_and_the_shown_tokens(tmp_path: Path) -> None:
    """The real Chat page streams a reply in a subprocess that is SIGKILLed mid-reply."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", APP_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STREAMING", line
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    store = ChatStore.in_folder(tmp_path / "data" / "chats")
    assert store.integrity_ok()
    (chat,) = store.list_chats()
    user, reply = store.messages(chat.id)
    assert user.content == "Tell me about rivers"
    assert reply.status == INTERRUPTED
    assert len(reply.tokens) >= 50  # every token that was on screen had been committed
    assert [t.index for t in reply.tokens] == list(range(len(reply.tokens)))


def test_messages_keep_their_thresholds_and_old_databases_gain_the_column(tmp_path: Path) -> None:
    """A database from before messages kept their thresholds opens, its rows read back with
    thresholds None (the page then falls back to the chat's model), and new rows keep theirs."""
    path = tmp_path / "chats.sqlite3"
    db = sqlite3.connect(str(path))
    for sql in dict(MIGRATIONS)[1]:  # the schema-1 database every earlier KALA Studio wrote
        db.execute(sql)
    db.executescript("""
        PRAGMA user_version=1;
        INSERT INTO chats VALUES (1, 'old', '/m', '{}', 0, 0);
        INSERT INTO messages (chat_id, role, content, model, created) VALUES (1, 'assistant', 'hi', '/m', 0);
    """)
    db.commit()
    db.close()
    store = ChatStore(path)
    [old] = store.messages(1)
    assert old.content == "hi" and old.thresholds is None
    assert list(tmp_path.glob("chats.v1-backup-*.sqlite3")), "the schema-1 file is copied before the migration"
    uid = store.add_user_message(1, "q", thresholds=[0.9, 0.8, 0.7, 0.6, 0.5])
    rid = store.begin_reply(1, model="/m2", thresholds=[0.3] * 5)
    store.set_thresholds(rid, [0.4] * 5)  # what the engine reported it used
    store.close()
    msgs = {m.id: m for m in ChatStore(path).messages(1)}
    assert msgs[uid].thresholds == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert msgs[rid].thresholds == [0.4] * 5 and msgs[rid].model == "/m2"
