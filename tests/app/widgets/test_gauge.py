"""The law gauge, the decision-path heatmap and the token-shaded chat view, as standalone widgets."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402

from kala_app.widgets.chat_view import ChatView  # noqa: E402
from kala_app.widgets.gauge import BAD, OK, WARN, LawGauge, score_color, shade_color  # noqa: E402
from kala_app.widgets.heatmap import DecisionPathHeatmap, first_layers_under  # noqa: E402
from kala_engine.constitution import load_constitution  # noqa: E402
from kala_engine.jobs import TokenEvent  # noqa: E402


def test_gauge_shows_five_laws_from_the_constitution_and_reads_back(qtbot) -> None:
    g = LawGauge()
    qtbot.addWidget(g)
    con = load_constitution()
    assert g.law_titles() == [law.title for law in con]
    assert g.thresholds() == tuple(con.thresholds)
    g.set_scores([0.9, 0.2, 0.7, 0.55, 1.0], caption="tok")
    assert g.scores() == (0.9, 0.2, 0.7, 0.55, 1.0)
    assert g.lowest() == (1, 0.2)
    assert con[1].title in g.toolTip() and "0.200" in g.toolTip()
    g.set_thresholds(0.6)
    assert g.thresholds() == (0.6,) * 5
    img = g.grab().toImage()
    assert not img.isNull() and img.width() >= 240
    with pytest.raises(ValueError, match="5 law scores"):
        g.set_scores([0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        g.set_thresholds(1.5)
    g.clear()
    assert g.scores() is None


def test_colours_follow_the_threshold() -> None:
    assert score_color(0.2, 0.5) == BAD
    assert score_color(0.55, 0.5) == WARN
    assert score_color(0.9, 0.5) == OK
    assert shade_color(0.95, 0.5) is None  # ordinary text stays clean
    assert shade_color(0.1, 0.5).alpha() > shade_color(0.45, 0.5).alpha()


def test_heatmap_marks_the_first_layer_under_the_threshold(qtbot) -> None:
    layers = [[0.9, 0.9, 0.9, 0.9, 0.9], [0.9, 0.4, 0.9, 0.9, 0.9], [0.3, 0.2, 0.9, 0.9, 0.9]]
    assert first_layers_under(layers, [0.5] * 5) == [2, 1, None, None, None]
    h = DecisionPathHeatmap()
    qtbot.addWidget(h)
    h.resize(300, 260)
    h.set_path(layers, [0.3, 0.2, 0.9, 0.9, 0.9])
    assert h.first_layers() == [2, 1, None, None, None]
    assert not h.grab().toImage().isNull()
    with pytest.raises(ValueError):
        h.set_path([[0.1, 0.2]])


def _tok(i: int, text: str, scores) -> TokenEvent:
    return TokenEvent(i, i, text, tuple(scores), tuple(tuple(scores) for _ in range(3)))


def test_clicking_a_token_emits_its_index_and_scores(qtbot) -> None:
    view = ChatView()
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()
    view.add_user_message("Hello", [0.9, 0.8, 0.9, 0.9, 0.9])
    reply = view.begin_reply()
    toks = [_tok(0, "The", [0.9] * 5), _tok(1, " quick", [0.8, 0.3, 0.9, 0.9, 0.9]),
            _tok(2, " fox", [0.7, 0.9, 0.9, 0.6, 0.9]), _tok(3, "\nend", [1.0] * 5)]
    reply.append_tokens(toks)
    assert reply.text() == "The quick fox\nend"
    assert reply.sparkline.values() == pytest.approx([0.9, 0.3, 0.6, 1.0])
    qtbot.waitExposed(view)
    # wait until the reply is laid out (token 3 sits on its own line after the newline)
    qtbot.waitUntil(lambda: reply.token_point(3).y() > reply.token_point(0).y())
    for i in (1, 2, 3, 0):
        with qtbot.waitSignal(view.token_selected) as sig:
            qtbot.mouseClick(reply.text_view.viewport(), Qt.MouseButton.LeftButton, pos=reply.token_point(i))
        info = sig.args[0]
        assert info.index == i
        assert info.law_scores == tuple(toks[i].law_scores)
        assert info.layer_scores is not None and len(info.layer_scores) == 3
    assert view.selected().index == 0
    # the prompt assessment of the user message names the lowest law
    (user,) = view.user_messages()
    assert load_constitution()[1].title in user.assessment_text()
