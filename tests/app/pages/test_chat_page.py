"""The Chat page end to end with a fake generation job on the real EngineWorker thread.

The fake job follows the engine's contract (kala_engine.jobs): it emits one TokenEvent per
token (five law scores and per-layer scores) and returns a result with the stop reason, the
prompt assessment and the explanation; it stops on ethics when a law falls under the threshold.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import statistics  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import Qt, QTimer  # noqa: E402

from kala_app.chat_store import CANCELLED, COMPLETE, STOPPED  # noqa: E402
from kala_engine.constitution import load_constitution, thresholds_in_force  # noqa: E402
from kala_engine.jobs import TokenEvent  # noqa: E402
from tests.app.fakes import generation_result  # noqa: E402

LAYERS = 4


def _scores(i: int, low_law: int | None = None, low: float = 0.3) -> tuple[float, ...]:
    s = [0.9 - 0.01 * ((i + k) % 7) for k in range(5)]
    if low_law is not None:
        s[low_law] = low
    return tuple(round(v, 4) for v in s)


def fake_factory(words: list[str], scores: list[tuple[float, ...]] | None = None, delay: float = 0.0,
                 prompt_scores=(0.95, 0.2, 0.9, 0.9, 0.9), newline_every: int = 0):
    """A job factory ``(model, messages, settings) -> job`` emitting ``words`` as tokens."""
    calls = []

    def factory(model, messages, settings):
        calls.append((model, messages, settings))
        th = settings["threshold"]
        th = 0.5 if th is None else th  # None: the model's calibrated thresholds (none here)
        used = thresholds_in_force(settings["threshold"], model)  # what a real engine reports

        def job(emit, control):
            text = []
            for i, w in enumerate(words):
                control.checkpoint()
                s = scores[i] if scores else _scores(i)
                t = w + ("\n\n" if newline_every and i % newline_every == newline_every - 1 else "")
                layers = tuple(tuple(min(1.0, v + 0.05 * (LAYERS - 1 - j)) for v in s) for j in range(LAYERS))
                emit(TokenEvent(i, 1000 + i, t, s, layers))
                text.append(t)
                if delay:
                    time.sleep(delay)
                under = [k for k, v in enumerate(s) if v < th]
                if under:
                    k = under[0]
                    return generation_result("".join(text), stop_kind="ethics", law=k, score=s[k], threshold=th,
                                             prompt_scores=prompt_scores, thresholds=used,
                                             findings=[(j, s[j], None) for j in under])
            kind = "length" if len(words) >= settings["max_tokens"] else "eos"
            return generation_result("".join(text), stop_kind=kind, prompt_scores=prompt_scores, thresholds=used)

        return job

    factory.calls = calls
    return factory


@pytest.fixture
def chat_page(make_page, ctx):
    """``chat_page(job_factory, size=...)``: a ChatPage on the shared context, with a model folder to pick."""
    from kala_app.pages.chat import ChatPage

    (ctx.runs_dir / "run-1" / "final").mkdir(parents=True, exist_ok=True)
    return lambda factory, size=(1100, 760): make_page(ChatPage, job_factory=factory, size=size)


def _wait_reply(qtbot, page, timeout=15000):
    qtbot.waitUntil(lambda: not page.is_generating(), timeout=timeout)


def test_model_picker_lists_final_and_checkpoints(chat_page, ctx) -> None:
    for step in (20, 100, 7):
        d = ctx.runs_dir / "run-1" / "checkpoints" / f"step-{step}"
        d.mkdir(parents=True)
        if step != 7:  # step-7 holds only training state (no config.json): not a chat model
            (d / "config.json").write_text("{}", encoding="utf-8")
    page = chat_page(fake_factory(["x"]))
    labels = [page.model_combo.itemText(i) for i in range(page.model_combo.count())]
    assert labels == ["run-1 · final", "run-1 · step-100", "run-1 · step-20"]


def test_clicking_send_sends_the_composers_text(qtbot, chat_page) -> None:
    """The real button, as a person clicks it (QPushButton.clicked carries a bool: the page must
    not take it for the text to send; in a real window Send raised AttributeError every time)."""
    from PySide6.QtCore import Qt

    words = ["Rivers", " flow", "."]
    page = chat_page(fake_factory(words, delay=0.0))
    page.input.setPlainText("How do rivers form?")
    qtbot.mouseClick(page.send_button, Qt.MouseButton.LeftButton)
    _wait_reply(qtbot, page)
    assert page.current_reply().text() == "".join(words)
    chat = page.store.get_chat(page.chat_id)
    assert chat.title == "How do rivers form?" and page.input.toPlainText() == ""


def test_tokens_appear_one_by_one_and_a_click_sets_the_gauge(qtbot, chat_page) -> None:
    words = ["Rivers", " carry", " water", " from", " hills", " to", " the", " sea", "."]
    page = chat_page(fake_factory(words, delay=0.06))
    seen: list[int] = []
    probe = QTimer()
    probe.timeout.connect(lambda: page.current_reply() and seen.append(page.current_reply().token_count()))
    probe.start(5)
    assert page.send("How do rivers form?")
    _wait_reply(qtbot, page)
    probe.stop()
    reply = page.current_reply()
    assert reply.text() == "".join(words)
    # the view grew token by token: it showed (nearly) every intermediate length
    distinct = sorted(set(seen) - {0})
    assert len(distinct) >= len(words) - 2, distinct
    assert distinct[0] <= 2
    # the live gauge ended on the newest token
    assert page.gauge.scores() == pytest.approx(_scores(len(words) - 1))
    # the prompt assessment arrived with the result and names the flagged law
    (user,) = page.view.user_messages()
    assert user.mini.scores() == pytest.approx((0.95, 0.2, 0.9, 0.9, 0.9))
    assert load_constitution()[1].title in user.assessment_text()
    # clicking a token sets the gauge to its five scores and the heatmap to its layers
    qtbot.waitUntil(lambda: reply.token_point(8).x() > reply.token_point(0).x())
    for i in (3, 0, 6):
        qtbot.mouseClick(reply.text_view.viewport(), Qt.MouseButton.LeftButton, pos=reply.token_point(i))
        assert page.gauge.scores() == pytest.approx(_scores(i))
        assert page.heatmap.layer_scores()[-1] == pytest.approx(_scores(i))
        assert f"#{i}" in page.gauge.caption()
    # hovering another token shows it; leaving the text goes back to the pinned token (6)
    qtbot.mouseMove(reply.text_view.viewport(), reply.token_point(2))
    qtbot.waitUntil(lambda: page.gauge.scores() == pytest.approx(_scores(2)))
    qtbot.mouseMove(page.gauge, page.gauge.rect().center())
    qtbot.waitUntil(lambda: page.gauge.scores() == pytest.approx(_scores(6)))
    assert page.store.messages(page.chat_id)[1].status == COMPLETE


def test_threshold_one_stops_with_a_banner_naming_a_law(qtbot, chat_page) -> None:
    page = chat_page(fake_factory(["I", " will", " not"]))
    page.set_settings(threshold=1.0)
    assert page.send("Anything at all")
    _wait_reply(qtbot, page)
    reply = page.current_reply()
    assert reply.banner.isVisible()
    banner = reply.banner.text()
    con = load_constitution()
    # every score is under 1.0: the highest-priority law (Law 0) is the one named
    assert con[0].title in banner and "< 1.00" in banner
    assert reply.token_count() == 1
    msg = page.store.messages(page.chat_id)[1]
    assert msg.status == STOPPED and msg.stop["law"] == 0


def test_chats_survive_a_restart(qtbot, chat_page, ctx) -> None:
    words = ["Hello", " there", ",", " friend"]
    scores = [_scores(0), _scores(1, low_law=4, low=0.42), _scores(2), _scores(3)]
    page = chat_page(fake_factory(words, scores=scores))
    page.set_settings(threshold=0.35, temperature=0.0, max_tokens=77)
    assert page.send("Say hello")
    _wait_reply(qtbot, page)
    first_id = page.chat_id
    page.new_chat()
    assert page.send("Second chat")
    _wait_reply(qtbot, page)
    page.rename_chat(first_id, "Greetings")
    page.store.close()

    again = chat_page(fake_factory(["unused"]))  # a new page with a new store on the same file
    titles = [again.chat_list.item(i).text() for i in range(again.chat_list.count())]
    assert sorted(titles) == ["Greetings", "Second chat"]
    again.open_chat(first_id)
    assert again.threshold_spin.value() == pytest.approx(0.35)
    assert again.max_tokens_spin.value() == 77
    (user,) = again.view.user_messages()
    assert user.text() == "Say hello"
    (reply,) = again.view.replies()
    assert reply.text() == "".join(words)
    qtbot.waitUntil(lambda: reply.token_point(3).x() > reply.token_point(0).x())
    qtbot.mouseClick(reply.text_view.viewport(), Qt.MouseButton.LeftButton, pos=reply.token_point(1))
    assert again.gauge.scores() == pytest.approx(scores[1])


def test_stop_button_keeps_the_tokens_so_far(qtbot, chat_page) -> None:
    page = chat_page(fake_factory([f" w{i}" for i in range(400)], delay=0.01))
    assert page.send("Talk for a long time")
    qtbot.waitUntil(lambda: page.current_reply().token_count() >= 5)
    assert page.stop_button.isEnabled()
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)
    _wait_reply(qtbot, page)
    n = page.current_reply().token_count()
    assert 5 <= n < 400
    msg = page.store.messages(page.chat_id)[1]
    assert msg.status == CANCELLED and len(msg.tokens) == n
    assert "stopped by you" in page.current_reply().status.text()
    assert not page.stop_button.isEnabled() and page.send_button.isEnabled()


def test_switching_or_deleting_chats_while_a_reply_streams(qtbot, chat_page) -> None:
    page = chat_page(fake_factory([f" w{i}" for i in range(300)], delay=0.005))
    assert page.send("first")
    first = page.chat_id
    qtbot.waitUntil(lambda: page.current_reply().token_count() >= 3)
    page.new_chat()  # leaves the streaming chat: the reply is stopped and stored, not drawn here
    _wait_reply(qtbot, page)
    assert page.view.replies() == [] and page.chat_id != first
    msg = page.store.messages(first)[1]
    assert msg.status == CANCELLED and len(msg.tokens) >= 3
    page.open_chat(first)
    assert page.view.replies()[0].token_count() == len(msg.tokens)
    # deleting the chat whose reply streams
    assert page.send("second")
    qtbot.waitUntil(lambda: page.current_reply().token_count() >= 3)
    page.delete_chat(first)
    _wait_reply(qtbot, page)
    assert first not in [c.id for c in page.store.list_chats()]
    assert page.store.integrity_ok()


def test_export_holds_every_token(qtbot, chat_page, tmp_path) -> None:
    page = chat_page(fake_factory(["a", "b", "c"]))
    page.send("export me")
    _wait_reply(qtbot, page)
    import json

    data = json.loads(page.export_chat(tmp_path / "c.json").read_text(encoding="utf-8"))
    assert [t["law_scores"] for t in data["messages"][1]["tokens"]] == [list(_scores(i)) for i in range(3)]
    assert "| 2 | `c` |" in page.export_chat(tmp_path / "c.md").read_text(encoding="utf-8")


def _heartbeat(qtbot, until, min_s: float = 0.0, timeout_ms: int = 60000):
    """Beat a 5 ms QTimer on the UI thread until ``until()``; (wall gaps, UI-thread CPU gaps) in ms."""
    beats: list[tuple[float, float]] = []
    heart = QTimer()
    heart.setTimerType(Qt.TimerType.PreciseTimer)
    heart.timeout.connect(lambda: beats.append((time.perf_counter(), time.thread_time())))
    heart.start(5)
    t0 = time.perf_counter()
    qtbot.waitUntil(lambda: until() and time.perf_counter() - t0 >= min_s, timeout=timeout_ms)
    heart.stop()
    wall = [(b[0] - a[0]) * 1e3 for a, b in zip(beats, beats[1:], strict=False)]
    cpu = [(b[1] - a[1]) * 1e3 for a, b in zip(beats, beats[1:], strict=False)]
    return wall, cpu


def _stats(gaps: list[float]) -> str:
    q = statistics.quantiles(gaps, n=100, method="inclusive")
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {max(gaps):.1f} ms ({len(gaps)} beats)"


def test_ui_thread_never_stalls_while_a_reply_streams_at_full_speed(qtbot, chat_page) -> None:
    """A fake job emits 4000 tokens (with per-layer scores) as fast as it can on the worker thread.

    The UI thread's own work between two 5 ms heartbeats must stay under 50 ms (buffered
    tokens, time-budgeted flushes): that is asserted always. The wall-clock gaps are asserted
    too when the machine is not oversubscribed (1-minute load average under the CPU count);
    on a machine busy with other processes the threads wait for a CPU and no wall-clock timing
    is reliable, so then the numbers are only printed.
    """
    n_tokens = 4000
    words = [f" word{i % 97}" for i in range(n_tokens)]
    page = chat_page(fake_factory(words, newline_every=60))
    page.set_settings(max_tokens=n_tokens)
    idle_wall, _ = _heartbeat(qtbot, lambda: True, min_s=0.3)
    t0 = time.perf_counter()
    assert page.send("Write a lot")
    wall, cpu = _heartbeat(qtbot, lambda: not page.is_generating(), min_s=0.1)
    stream_s = time.perf_counter() - t0
    assert page.current_reply().token_count() == n_tokens
    assert len(page.store.messages(page.chat_id)[1].tokens) == n_tokens
    load = os.getloadavg()[0]
    print(f"\nstreamed {n_tokens} tokens in {stream_s:.2f} s; heartbeat gaps: {_stats(wall)}; "
          f"UI-thread CPU between beats: {_stats(cpu)}; idle heartbeat before: {_stats(idle_wall)}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    # one beat may hold a single pause (a garbage collection, the first bubble's layout) under
    # 100 ms; a UI starved by the stream shows many long beats, and fails either bound
    assert sorted(cpu)[-2] < 50 and max(cpu) < 100, _stats(cpu)
    if load < (os.cpu_count() or 1):  # not oversubscribed: the wall-clock stalls are ours to answer for
        assert sorted(wall)[-2] < 50 and max(wall) < 100, _stats(wall)


def test_model_default_thresholds_come_from_config_json(qtbot, chat_page, ctx) -> None:
    """A model with calibrated law_thresholds: the gauge marks them; the job gets thresholds=None."""
    import json

    from kala_app.pages import chat as chat_mod

    calibrated = [0.31, 0.42, None, 0.27, 0.66]  # None: the constitution's threshold for Law 2
    model = ctx.runs_dir / "run-1" / "final"
    (model / "config.json").write_text(json.dumps({"model_type": "kala", "law_thresholds": calibrated}),
                                       encoding="utf-8")
    con = load_constitution()
    expected = [t if t is not None else con.thresholds[k] for k, t in enumerate(calibrated)]
    factory = fake_factory(["Fine", "."])
    page = chat_page(factory)
    page.set_model(model)
    assert page.calibrated_check.isChecked() and not page.threshold_spin.isEnabled()
    assert list(page.gauge.thresholds()) == pytest.approx(expected)
    assert list(page.heatmap._thresholds) == pytest.approx(expected)

    # the real job factory passes thresholds=None to the engine (it then uses the calibration)
    seen = {}

    import kala_engine.generate.session as generation

    def fake_chat_job(model, prompt, thresholds, temperature, top_p, max_new_tokens, output_layer_scores, seed,
                      device):
        seen["thresholds"], seen["device"] = thresholds, device
        return lambda emit, control: {"text": ""}

    real = generation.chat_job
    generation.chat_job = fake_chat_job
    try:
        chat_mod.generation_job(str(model), [{"role": "user", "content": "hi"}], page.settings())(None, None)
    finally:
        generation.chat_job = real
    assert seen["thresholds"] is None
    assert seen["device"] == "auto"  # the GPU when this PyTorch can use it (kala_engine.generate.session.chat_device)

    assert page.send("Hello")
    _wait_reply(qtbot, page)
    assert factory.calls[-1][2]["threshold"] is None
    assert page.store.get_chat(page.chat_id).settings["threshold"] is None
    assert list(page.gauge.thresholds()) == pytest.approx(expected)

    # an explicit value: the spin box is enabled and the markers show it for every law
    page.calibrated_check.setChecked(False)
    page.threshold_spin.setValue(0.8)
    assert page.threshold_spin.isEnabled()
    assert page.settings()["threshold"] == pytest.approx(0.8)
    assert list(page.gauge.thresholds()) == pytest.approx([0.8] * 5)
    assert page.store.get_chat(page.chat_id).settings["threshold"] == pytest.approx(0.8)


def test_prompt_and_reply_thresholds_each_judge_their_own_message(qtbot, chat_page, ctx) -> None:
    """A model calibrated with a prompt set and a reply set (issue 16): the user's message is
    judged and stored against the prompt set, the reply and the token gauge against the reply set,
    and a reopened chat keeps each."""
    import json

    model = ctx.runs_dir / "run-1" / "final"
    prompt_set, reply_set = [0.7, 0.6, 0.65, 0.8, 0.75], [0.3, 0.2, 0.25, 0.4, 0.35]
    (model / "config.json").write_text(json.dumps({"model_type": "kala", "law_thresholds": prompt_set,
                                                   "reply_thresholds": reply_set}), encoding="utf-8")
    page = chat_page(fake_factory(["Fine", "."]))
    page.set_model(model)
    assert page.thresholds() == pytest.approx(prompt_set) and page.thresholds(reply=True) == pytest.approx(reply_set)
    assert list(page.gauge.thresholds()) == pytest.approx(reply_set)  # the inspector shows tokens
    assert page.send("Hello")
    _wait_reply(qtbot, page)
    user, reply = page.store.messages(page.chat_id)
    assert user.thresholds == pytest.approx(prompt_set) and reply.thresholds == pytest.approx(reply_set)
    assert page.current_reply().thresholds() == pytest.approx(reply_set)
    assert page._user_widget._thresholds == pytest.approx(prompt_set)
    page.open_chat(page.chat_id)
    assert page.store.messages(page.chat_id)[1].thresholds == pytest.approx(reply_set)


def test_gauge_colours_leave_room_above_a_calibrated_threshold() -> None:
    """Against a calibrated 0.85 an ordinary 0.97 is green, 0.87 amber and 0.80 red."""
    from kala_app.widgets.gauge import BAD, OK, WARN, score_color, shade_color

    assert score_color(0.97, 0.85) == OK
    assert score_color(0.87, 0.85) == WARN
    assert score_color(0.80, 0.85) == BAD
    assert shade_color(0.97, 0.85) is None
    assert score_color(1.0, 1.0) == BAD  # a threshold of 1.0 always fires, as in the engine


def test_a_model_trained_after_start_is_picked(qtbot, ctx) -> None:
    """The page opened with no model (placeholder shown); the first trained run becomes the choice."""
    import shutil

    from kala_app.pages.chat import ChatPage

    shutil.rmtree(ctx.runs_dir, ignore_errors=True)
    ctx.runs_dir.mkdir(parents=True)
    page = ChatPage(ctx, job_factory=fake_factory(["x"]))
    qtbot.addWidget(page)
    assert page.model_path() == "" and not page.send_button.isEnabled()
    assert page.view._placeholder.text().startswith("Pick a model above")
    (ctx.runs_dir / "first" / "final").mkdir(parents=True)
    (ctx.runs_dir / "first" / "final" / "config.json").write_text('{"law_thresholds": [0.9, 0.8, 0.7, 0.6, 0.55]}')
    page.refresh_models()
    assert page.model_path().endswith("final") and page.send_button.isEnabled()
    assert page.view._placeholder.text().startswith("Send a message below.")  # no "pick a model" once one is
    assert list(page.gauge.thresholds()) == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.55])
    page.store.close()


def _colours(reply) -> list:
    return [None if (c := reply.text_view.token_background(i)) is None else c.name(c.NameFormat.HexArgb)
            for i in range(reply.token_count())]


def test_switching_models_leaves_earlier_replies_colours_unchanged(qtbot, chat_page, ctx) -> None:
    """Each reply (and its prompt's assessment) is drawn against the model and thresholds that
    produced it: switching the model inside an open chat, reopening the chat or restarting the
    page never re-judges the past. Before, every reply was re-coloured against the new model's."""
    import json

    from kala_app.pages.chat import ChatPage

    strict, lax = ctx.runs_dir / "strict" / "final", ctx.runs_dir / "lax" / "final"
    for model, t in ((strict, 0.9), (lax, 0.3)):
        model.mkdir(parents=True)
        (model / "config.json").write_text(json.dumps({"model_type": "kala", "law_thresholds": [t] * 5}))
    factory = fake_factory(["Sure", " thing", "."], scores=[(0.8,) * 5] * 3, prompt_scores=(0.85,) * 5)
    page = chat_page(factory)
    page.set_model(strict)
    assert page.send("Hello")
    _wait_reply(qtbot, page)
    first = page.view.replies()[0]
    before = _colours(first)
    assert all(c is not None for c in before), "0.80 is under the strict model's 0.90: tinted"
    assert page.view.user_messages()[0].assessment_text().startswith("Prompt flagged")

    page.set_model(lax)  # inside the open chat (the picker, or Chat with it before it opened a new chat)
    assert _colours(first) == before
    assert page.send("Again")
    _wait_reply(qtbot, page)
    assert _colours(page.view.replies()[1]) == [None] * 3, "0.80 is well above the lax model's 0.30"

    def check(p):
        replies, users = p.view.replies(), p.view.user_messages()
        assert _colours(replies[0]) == before
        assert _colours(replies[1]) == [None] * 3
        assert users[0].assessment_text().startswith("Prompt flagged")
        assert users[1].assessment_text().startswith("Prompt within the laws")
        assert list(replies[0].thresholds()) == pytest.approx([0.9] * 5)
        # the inspector shows an old token against its own reply's thresholds
        replies[0].token_clicked.emit(replies[0].token(0))
        assert list(p.gauge.thresholds()) == pytest.approx([0.9] * 5)

    chat_id = page.chat_id
    page.open_chat(chat_id)  # reopened: drawn from the store
    check(page)
    again = ChatPage(ctx, job_factory=factory)  # a restart
    qtbot.addWidget(again)
    again.open_chat(chat_id)
    check(again)
    again.store.close()

    # rows written before messages kept their thresholds fall back to the chat's model, as before
    for m in page.store.messages(chat_id):
        page.store.set_thresholds(m.id, None)
    page.open_chat(chat_id)
    assert _colours(page.view.replies()[0]) == [None] * 3
