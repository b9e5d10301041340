"""The Chat page's parts on their own: composer, history list, inspector, a reply's outcome, and
reading the engine's typed result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kala_engine.constitution import load_constitution
from tests.app.fakes import generation_result


def test_composer_settings_round_trip_and_only_user_changes_are_reported(qtbot):
    from kala_app.widgets.chat_composer import ChatComposer

    c = ChatComposer(0.5)
    qtbot.addWidget(c)
    changed = []
    c.settings_changed.connect(lambda: changed.append(c.settings()))
    c.apply_settings({"threshold": 0.35, "temperature": 0.2, "top_p": 0.8, "max_tokens": 64})
    assert changed == []  # filling the boxes from a stored chat is not a change
    assert c.settings() == {"threshold": 0.35, "temperature": 0.2, "top_p": 0.8, "max_tokens": 64}
    assert c.threshold_spin.isEnabled() and not c.calibrated_check.isChecked()
    c.calibrated_check.setChecked(True)  # the user goes back to the model's thresholds
    assert changed[-1]["threshold"] is None and not c.threshold_spin.isEnabled()
    c.max_tokens_spin.setValue(99)
    assert changed[-1]["max_tokens"] == 99
    sent = []
    c.send_requested.connect(lambda: sent.append(True))
    c.send_button.click()
    assert sent == [True]


def test_history_list_names_chats_and_reports_the_chosen_one(qtbot):
    from kala_app.widgets.chat_history import READ_ONLY_TIP, ChatHistoryList

    h = ChatHistoryList()
    qtbot.addWidget(h)
    chats = [SimpleNamespace(id=7, title="Rivers", message_count=2, model="m"),
             SimpleNamespace(id=3, title="Bread", message_count=0, model="")]
    chosen = []
    h.chat_chosen.connect(chosen.append)
    h.show_chats(chats, current=3)
    assert [h.list.item(i).text() for i in range(h.list.count())] == ["Rivers", "Bread"]
    assert chosen == []  # showing the list selects the open chat without reporting it
    h.list.setCurrentRow(0)
    assert chosen == [7]
    h.set_state(has_chat=True, read_only=True)
    assert not h.new_button.isEnabled() and h.delete_button.toolTip() == READ_ONLY_TIP
    assert h.export_button.isEnabled()  # a read-only history can still be exported


def test_a_replys_outcome_names_the_law_and_its_first_layer(qtbot):
    from kala_app.widgets.chat_bubbles import ReplyWidget

    con = load_constitution()
    r = ReplyWidget(con, [0.5] * 5, "KALA · a-very-long-run-name-that-would-widen-the-reply · final")
    qtbot.addWidget(r)
    r.show_outcome("stopped", {"kind": "ethics", "law": 1, "score": 0.21, "threshold": 0.5, "message": ""},
                   {"violated": [{"law": 1, "score": 0.21, "first_layer": 3}], "text": ""}, n=12, elapsed=1.25)
    assert r.status.text() == "12 tokens · stopped by the constitution · 1.2 s"
    assert f"Stopped: {con[1].title} fell to 0.21 < 0.50" in r.banner.text()
    assert "first under the threshold at layer 3" in r.banner.text()
    r2 = ReplyWidget(con, [0.5] * 5)
    qtbot.addWidget(r2)
    r2.show_outcome("interrupted", None, None, n=4)
    assert "interrupted" in r2.status.text() and r2.banner.isHidden()
    assert r.header.toolTip().endswith("· final")  # the whole name, however it is elided


def test_read_outcome_reads_the_engines_result_and_guesses_nothing():
    from kala_app.pages.chat_outcome import read_outcome

    res = generation_result("You could", stop_kind="ethics", law=1, score=0.3, threshold=0.5,
                            prompt_scores=(0.9, 0.2, 0.9, 0.9, 0.9), thresholds=(0.6,) * 5,
                            findings=[(1, 0.3, 2)])
    out = read_outcome(res)
    assert (out.text, out.stop_kind, out.stop_law, out.stop_score, out.stop_threshold) == \
        ("You could", "ethics", 1, 0.3, 0.5)
    assert out.assessment == [0.9, 0.2, 0.9, 0.9, 0.9] and out.thresholds == [0.6] * 5
    assert out.violated == [(1, 0.3, 2)] and out.explanation_text.startswith("at reply token")
    assert read_outcome(None).stop_kind == "eos"
    with pytest.raises(AttributeError):  # a dict with look-alike keys is not an engine result
        read_outcome({"text": "x", "stop": {"kind": "eos"}})
