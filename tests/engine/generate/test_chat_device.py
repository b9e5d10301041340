"""Where a chat runs: the GPU when this PyTorch can use it, the CPU otherwise or when the model
does not fit; one cached model at a time, released before a training run."""

from __future__ import annotations

import pytest
import torch

from kala_engine.doctor import DeviceInfo
from kala_engine.generate import session
from kala_engine.jobs import LogLine
from kala_engine.model.presets import GiB


def card(kernels: bool) -> DeviceInfo:
    return DeviceInfo(kind="cuda", name="Tesla P100-PCIE-16GB", total_bytes=16 * GiB, available_bytes=15 * GiB,
                      compute_capability=(6, 0), arch_list=("sm_60",) if kernels else ("sm_75",),
                      kernels_present=kernels, fp16=True)


def test_auto_is_the_gpu_only_when_this_pytorch_has_kernels_for_it(monkeypatch):
    import kala_engine.doctor as doctor

    assert session.chat_device("cpu") == "cpu" and session.chat_device("cuda:1") == "cuda:1"
    session._runs_cuda.cache_clear()
    if not torch.cuda.is_available():
        assert session.chat_device("auto") == "cpu"
    calls = []
    for kernels, where in ((True, "cuda"), (False, "cpu")):  # False: a P100 under a build without sm_60
        session._runs_cuda.cache_clear()
        monkeypatch.setattr(doctor, "probe_device", lambda device="auto", k=kernels: calls.append(k) or card(k))
        assert session.chat_device("auto") == where and session.chat_device("auto") == where
    assert calls == [True, False]  # probed once per process, not per reply
    session._runs_cuda.cache_clear()


def test_a_model_too_big_for_the_gpu_chats_on_the_cpu_with_a_warning(monkeypatch):
    tried = []

    def load(model_dir, device):
        tried.append(device)
        if device == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "model", "tokenizer"

    monkeypatch.setattr(session, "chat_device", lambda device="auto": "cuda" if device == "auto" else device)
    monkeypatch.setattr(session, "_cached_load", load)
    events = []
    assert session._load_for_chat("m", "auto", events.append) == ("model", "tokenizer")
    assert tried == ["cuda", "cpu"]
    assert [e.level for e in events if isinstance(e, LogLine)] == ["warning"] and "CPU" in events[0].message
    with pytest.raises(torch.OutOfMemoryError):  # asked for the GPU by name: no silent move
        session._load_for_chat("m", "cuda", events.append)


def test_one_cached_model_at_a_time_the_old_one_released_before_the_next_loads(monkeypatch, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    seen = []

    def load_chat_model(p, device):
        seen.append(len(session._LOADED))  # what is still held while the next model loads
        return f"model {p.name}", "tok"

    monkeypatch.setattr(session, "load_chat_model", load_chat_model)
    monkeypatch.setattr(session, "_LOADED", {})
    assert session._cached_load(tmp_path / "a", "cpu")[0] == "model a"
    assert session._cached_load(tmp_path / "b", "cpu")[0] == "model b"
    assert seen == [0, 0] and len(session._LOADED) == 1
    session.release_cached_models()
    assert session._LOADED == {}
