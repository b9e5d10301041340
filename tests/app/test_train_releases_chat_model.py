"""The app's training job takes the Chat page's cached model off the GPU before the run starts."""

from __future__ import annotations


def test_a_training_job_releases_the_chat_model_first(monkeypatch):
    from kala_app import engine_api
    from kala_engine.generate import session

    order = []
    monkeypatch.setattr(session, "release_cached_models", lambda: order.append("release"))
    monkeypatch.setattr(engine_api, "_engine_train_job", lambda config: lambda emit, control: order.append("train"))
    engine_api.train_job(object())(lambda e: None, None)
    assert order == ["release", "train"]
