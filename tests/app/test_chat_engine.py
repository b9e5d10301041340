"""The Chat page with the real engine: a tiny random KALA model saved in a run folder."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from kala_engine.constitution import load_constitution  # noqa: E402

CORPUS = [
    "Hello, how are you today? I am fine, thank you.",
    "How do rivers form? Rain gathers in channels and flows to the sea.",
    "I cannot help with that request because it could hurt someone.",
    "Explain how plants turn light into energy with photosynthesis.",
] * 4


@pytest.fixture
def tiny_model_run(ctx):
    """runs/tiny/final: a random 2-layer KALA model and a small BPE tokenizer (built, never downloaded)."""
    import torch

    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    tok = train_tokenizer(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                     vocab_size=len(tok), rotary_pct=0.25, max_position_embeddings=256)
    model = KALAForCausalLM(cfg).eval()
    d = ctx.runs_dir / "tiny" / "final"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_real_engine_threshold_one_stops_with_a_banner_naming_a_law(qtbot, ctx, tiny_model_run) -> None:
    from kala_app.pages.chat import ChatPage

    page = ChatPage(ctx)  # the real kala_engine.generate.session.chat_job
    qtbot.addWidget(page)
    page.resize(1100, 760)
    page.show()
    try:
        assert page.model_path() == str(tiny_model_run)
        page.set_settings(threshold=1.0, temperature=0.0, max_tokens=8)
        with qtbot.waitSignal(page.reply_finished, timeout=60000) as sig:
            assert page.send("How do rivers form?")
        outcome = sig.args[0]
        assert outcome.stop_kind == "ethics"
        reply = page.current_reply()
        assert reply.token_count() == 1  # every score is under 1.0: the first token stops the reply
        con = load_constitution()
        banner = reply.banner.text()
        assert reply.banner.isVisible()
        assert con[outcome.stop_law].title in banner and "< 1.00" in banner
        # the gauge shows that token's five scores and the heatmap its two layers
        info = reply.token(0)
        assert page.gauge.scores() == pytest.approx(info.law_scores)
        assert info.layer_scores is not None and len(info.layer_scores) == 2
        assert page.heatmap.layer_scores() == info.layer_scores
        # the prompt assessment reached the user message and the store
        (user,) = page.view.user_messages()
        assert user.mini.scores() is not None
        user_msg, reply_msg = page.store.messages(page.chat_id)
        assert user_msg.assessment["law_scores"] == pytest.approx(list(user.mini.scores()))
        assert reply_msg.status == "stopped" and reply_msg.stop["law"] == outcome.stop_law
        assert len(reply_msg.tokens) == 1 and reply_msg.tokens[0].layer_scores is not None
    finally:
        page.store.close()


def test_a_folder_that_is_no_model_fails_with_the_reason(qtbot, ctx) -> None:
    from kala_app.pages.chat import ChatPage

    bad = ctx.runs_dir / "empty" / "final"
    bad.mkdir(parents=True)
    page = ChatPage(ctx)
    qtbot.addWidget(page)
    try:
        page.set_model(bad)
        assert page.send("Hello?")
        qtbot.waitUntil(lambda: not page.is_generating(), timeout=60000)
        assert "not a model folder" in page.current_reply().status.text()
        user, reply = page.store.messages(page.chat_id)
        assert user.content == "Hello?" and reply.status == "error"
        assert "not a model folder" in reply.stop["message"]
    finally:
        page.store.close()
