"""Random bytes as the chat database and random JSON in its rows: no exception, nothing lost.

Every example opens a ChatStore on what hypothesis made, reads everything back the way the app
does (list, messages, history, both exports), writes a new chat, and reopens. The original is
then looked for: a file moved aside holds the very same bytes; a file that was kept in use still
holds every original row; a damaged value is in the damaged-rows file, byte for byte.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kala_app.chat_store import DB_NAME, ChatStore, StoredToken

#: KALA_FUZZ_EXAMPLES=2000 for a longer hunt (120 keeps the suite quick on two cores)
EXAMPLES = settings(max_examples=int(os.environ.get("KALA_FUZZ_EXAMPLES", "120")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _make_reference_db(path: Path) -> None:
    store = ChatStore(path)
    for n in range(3):
        cid = store.create_chat(f"chat {n}", model=f"/runs/r{n}/final", settings={"temperature": 0.1 * n})
        store.add_user_message(cid, f"question {n} " * 5, assessment={"law_scores": [0.9, 0.8, 0.7, 0.6, 0.5]})
        rid = store.begin_reply(cid, model="/runs/x/final")
        store.append_tokens(rid, [StoredToken(i, 100 + i, f" t{i}", (0.9, 0.8, 0.7, 0.6, 0.5),
                                              ((0.9, 0.8, 0.7, 0.6, 0.5),) * 2) for i in range(6)])
        store.commit()
        store.finish_reply(rid, stop={"kind": "ethics", "law": 1, "score": 0.2, "threshold": 0.5, "message": "m"},
                           explanation={"violated": [{"law": 1, "score": 0.2, "first_layer": 1}], "text": "x"})
    store.close()


_REF_DIR = Path(tempfile.mkdtemp(prefix="kala-chat-fuzz-"))
_make_reference_db(_REF_DIR / DB_NAME)
REFERENCE = (_REF_DIR / DB_NAME).read_bytes()
shutil.rmtree(_REF_DIR)


def _flipped(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in flips:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


#: (how, what): random bytes, random bytes after SQLite's magic, or a real chat database with some
#: bytes changed and maybe cut short (kept as the changes, so a failing example prints small)
db_specs = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=3000)),
    st.tuples(st.just("magic"), st.binary(max_size=3000)),
    st.tuples(st.just("flipped"), st.tuples(
        st.lists(st.tuples(st.integers(0, len(REFERENCE) - 1), st.integers(0, 255)), max_size=12),
        st.none() | st.integers(0, len(REFERENCE)))),
)


def _bytes_of(spec) -> bytes:
    how, what = spec
    if how == "bytes":
        return what
    if how == "magic":
        return b"SQLite format 3\x00" + what
    return _flipped(REFERENCE, *what)


def _rows(path: Path) -> set | None:
    """The original rows (what must survive), or None when SQLite cannot read them at all."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        con.text_factory = bytes  # compare raw
        try:
            chats = {tuple(r) for r in con.execute("SELECT id, title, model, settings, created FROM chats")}
            msgs = {tuple(r) for r in con.execute(
                "SELECT id, chat_id, role, assessment, stop, explanation, created FROM messages")}
            return chats | msgs
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError):  # (an error message quoting damaged schema text)
        return None


def _use_like_the_app(store: ChatStore) -> None:
    for c in store.list_chats():
        store.get_chat(c.id)
        store.messages(c.id)
        store.history(c.id)
        store.export_json(c.id)
        store.export_markdown(c.id)
    if not store.read_only:
        cid = store.create_chat("fuzz")
        store.add_user_message(cid, "still works")
        assert store.get_chat(cid).title == "fuzz"


@EXAMPLES
@given(spec=db_specs)
@example(spec=("flipped", ([(47, 5)], None)))  # schema-format byte: "unsupported file format" is damage
@example(spec=("flipped", ([(18, 3)], 100)))  # a "newer" write version SQLite cannot read: damage, moved aside
def test_random_bytes_as_the_chat_database(spec) -> None:
    data = _bytes_of(spec)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / DB_NAME
        db.write_bytes(data)
        ref = Path(tmp) / "reference" / DB_NAME
        ref.parent.mkdir()
        ref.write_bytes(data)
        original_rows = _rows(ref)

        store = ChatStore(db)
        assert not store.in_memory, store.notices
        _use_like_the_app(store)
        store.close()
        again = ChatStore(db)  # the repaired (or kept) file opens cleanly the next time
        assert not again.moved_aside and not again.in_memory, again.notices
        _use_like_the_app(again)
        again.close()

        if store.moved_aside:
            assert len(store.moved_aside) == 1 and store.moved_aside[0].read_bytes() == data
            assert str(store.moved_aside[0]) in store.notices[0]
        elif store.read_only:
            assert db.read_bytes() == data
        elif original_rows:  # kept in use: every original row is still there
            assert original_rows <= (_rows(db) or set())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["threshold", "temperature", "top_p", "max_tokens", "seed", "law_scores", "layer_scores",
                         "kind", "law", "score", "message", "violated", "first_layer", "text"]) | st.text(max_size=8),
        inner, max_size=6),
    max_leaves=12,
)
#: what a column may hold: JSON text of any value, text that is not JSON, a BLOB, a bare number
raw_values = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(-(2**63), 2**63 - 1),  # what an SQLite INTEGER holds
    st.floats(allow_nan=False),
)


def _kept(store: ChatStore) -> list:
    if not store.damaged_rows_path.exists():
        return []
    out = []
    for line in store.damaged_rows_path.read_text(encoding="utf-8").split("\n")[:-1]:
        d = json.loads(line)
        out.append(base64.b64decode(d["raw_base64"]) if "raw_base64" in d else d["raw"])
    return out


@EXAMPLES
@given(column=st.sampled_from(["settings", "assessment", "stop", "explanation"]), raw=raw_values)
def test_random_json_in_a_row(column: str, raw) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / DB_NAME
        db.write_bytes(REFERENCE)
        con = sqlite3.connect(db)
        table = "chats" if column == "settings" else "messages"
        con.execute(f"UPDATE {table} SET {column}=? WHERE id=1", (raw,))
        con.commit()
        raw = con.execute(f"SELECT {column} FROM {table} WHERE id=1").fetchone()[0]  # as stored (column affinity)
        con.close()

        store = ChatStore(db)
        _use_like_the_app(store)
        damaged = [d for d in store.damaged if d.table == table and d.column == column]
        if damaged:
            assert any(column in n and "damaged" in n for n in store.notices)
            # the stored value is kept byte for byte before the app could overwrite it
            kept = _kept(store)
            assert raw in kept or (not isinstance(raw, (str, bytes)) and repr(raw) in kept)
        if column == "settings":
            s = store.get_chat(1).settings
            assert set(s) >= {"threshold", "temperature", "top_p", "max_tokens"}
            store.update_chat(1, settings=s)  # what the Chat page does when a setting changes
            if not damaged:  # intact: everything it said is still said
                assert json.loads(raw).items() <= store.get_chat(1).settings.items()
        store.close()


@pytest.mark.parametrize("column", ["settings", "assessment", "stop", "explanation"])
def test_the_chat_page_shows_a_chat_whose_row_is_damaged(ctx, qtbot, tmp_path, column):
    """The page (not just the store) survives the damaged values the fuzzing found worst."""
    from kala_app.pages.chat import ChatPage

    db = tmp_path / DB_NAME
    db.write_bytes(REFERENCE)
    con = sqlite3.connect(db)
    table = "chats" if column == "settings" else "messages"
    for i, raw in enumerate(['{"threshold": 7, "max_tokens": 1e999}', '{"law": 99, "violated": [{"law": -1}]}',
                             '{"law_scores": [null, "x"]}', b"\xff\xfe", "[]"]):
        con.execute(f"UPDATE {table} SET {column}=? WHERE id=?", (raw, 1 + i % 3))
        con.commit()
        page = ChatPage(ctx, store=ChatStore(db))
        qtbot.addWidget(page)
        for c in page.store.list_chats():
            page.open_chat(c.id)
        if raw == "[]" or column == "settings":  # (a dict with unknown keys is a valid assessment/stop)
            assert page.store.damaged
        page.store.close()
    con.close()
