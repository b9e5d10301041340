"""Chat sessions, loading a chat model, the app's job, and `kala chat`."""

from __future__ import annotations

import json

import pytest

from kala_engine.cli.main import main as kala
from kala_engine.constitution import load_constitution
from kala_engine.generate.generation import GenerationResult
from kala_engine.generate.session import ChatSession, chat_job, load_chat_model
from kala_engine.jobs import Finished, JobControl, TokenEvent, run_job
from tests.engine.generate.conftest import steer_scores

NO_STOP = ()


# ----------------------------------------------------------------------------- chat sessions


def test_session_keeps_the_transcript_and_uses_the_template(chat_model, chat_tokenizer):
    s = ChatSession(chat_model, chat_tokenizer, system="Be kind.", max_new_tokens=4, thresholds=0.0)
    r1 = s.send("Hello")
    r2 = s.send("How are you?")
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert s.messages[2]["content"] == r1.text and s.messages[4]["content"] == r2.text
    # the second prompt is the whole conversation in the chat template, ending in <|assistant|>
    expected = chat_tokenizer(
        "<|system|>Be kind.<|end|><|user|>Hello<|end|><|assistant|>" + r1.text
        + "<|end|><|user|>How are you?<|end|><|assistant|>", add_special_tokens=False)["input_ids"]
    assert r2.prompt_tokens == len(expected) and r2.dropped_turns == 0


def test_session_drops_the_oldest_turns_when_the_context_fills(chat_model, chat_tokenizer):
    s = ChatSession(chat_model, chat_tokenizer, system="Be kind.", max_new_tokens=8, thresholds=0.0,
                    reserve_tokens=8)
    long_message = "Please help me write a short poem about the sea and the sky. " * 2
    results = [s.send(long_message) for _ in range(6)]
    dropped = [r.dropped_turns for r in results]
    assert dropped[0] == 0 and sum(dropped) > 0  # the caller is told when turns leave the context
    assert all(r.prompt_tokens + 8 <= 128 for r in results)
    assert s.messages[0]["role"] == "system" and len(s.messages) == 13  # the transcript keeps everything
    assert s.context_start > 1 and s.messages[s.context_start]["role"] == "user"


def test_session_message_longer_than_the_context_is_refused_and_forgotten(chat_model, chat_tokenizer):
    s = ChatSession(chat_model, chat_tokenizer, max_new_tokens=4, thresholds=0.0)
    with pytest.raises(ValueError, match="context"):
        s.send("Hello, how are you today? " * 60)
    with pytest.raises(ValueError, match="empty"):
        s.send("  ")
    assert s.messages == []
    assert s.send("Hello").stop.kind in ("eos", "length")


# ----------------------------------------------------------------------------- loading


def test_load_chat_model_round_trip(model_dir, chat_model, chat_tokenizer):
    model, tok = load_chat_model(model_dir)
    assert not model.training and len(tok) == len(chat_tokenizer)
    a = ChatSession(model, tok, max_new_tokens=5, thresholds=0.0).send("Hello")
    b = ChatSession(chat_model, chat_tokenizer, max_new_tokens=5, thresholds=0.0).send("Hello")
    assert a.token_ids == b.token_ids


def test_load_chat_model_errors(tmp_path, make_neox_dir, model_dir):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_chat_model(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_chat_model(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_chat_model(tmp_path / "empty")
    _, neox = make_neox_dir()
    with pytest.raises(ValueError, match="load_from_pythia"):
        load_chat_model(neox)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / f).unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_chat_model(model_dir)


# ----------------------------------------------------------------------------- the app's job


def test_chat_job_emits_token_events_and_returns_the_result(model_dir):
    events = []
    result = run_job(chat_job(str(model_dir), prompt="Hello", max_new_tokens=3, thresholds=0.0), events.append)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert isinstance(result, GenerationResult) and len(tokens) == len(result.token_ids) >= 1
    assert isinstance(events[-1], Finished) and events[-1].result is result and not events[-1].cancelled


def test_chat_job_fits_a_long_conversation_into_the_context(chat_model, chat_tokenizer):
    turn = "Please help me write a short poem about the sea and the sky. "
    messages = [{"role": "system", "content": "Be kind."}]
    for _ in range(5):
        messages += [{"role": "user", "content": turn * 2}, {"role": "assistant", "content": turn}]
    messages.append({"role": "user", "content": "And now one about the hills?"})
    result = run_job(chat_job(chat_model, chat_tokenizer, messages, max_new_tokens=4, thresholds=0.0), lambda e: None)
    assert result.dropped_turns > 0 and result.dropped_turns % 2 == 0  # whole user/assistant turns
    assert result.prompt_tokens + 4 <= 128
    kept = [messages[0], *messages[1 + result.dropped_turns:]]
    from kala_engine.generate.generation import encode_prompt

    assert result.prompt_tokens == len(encode_prompt(chat_tokenizer, kept))


def test_chat_job_cancel_keeps_the_partial_reply(chat_model, chat_tokenizer):
    control = JobControl()
    events = []

    def emit(e):
        events.append(e)
        if isinstance(e, TokenEvent) and e.index == 1:
            control.cancel()

    job = chat_job(chat_model, chat_tokenizer, "Hello", max_new_tokens=20, thresholds=0.0, stop_token_ids=NO_STOP)
    run_job(job, emit, control)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.cancelled
    assert finished.result.stop.kind == "cancelled" and len(finished.result.token_ids) == 2


# ----------------------------------------------------------------------------- kala chat


def _lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_kala_chat_json_one_shot(model_dir, capsys):
    rc = kala(["chat", "--model", str(model_dir), "--prompt", "Hello", "--json", "--max-new-tokens", "4",
               "--threshold", "0", "--layer-scores"])
    assert rc == 0
    lines = _lines(capsys.readouterr().out)
    tokens = [d for d in lines if d["event"] == "token"]
    assert 1 <= len(tokens) <= 4 and all(len(d["law_scores"]) == 5 and len(d["layer_scores"]) == 2 for d in tokens)
    assert [d["event"] for d in lines[len(tokens):]] == ["prompt_assessment", "stop"]
    assessment, stop = lines[-2], lines[-1]
    assert assessment["laws"] == [law.title for law in load_constitution().laws]
    assert stop["kind"] in ("eos", "length") and stop["tokens"] == len(tokens)
    assert stop["text"] == "".join(d["text"] for d in tokens)


def test_kala_chat_json_ethics_stop_names_the_law(tmp_path, chat_model, chat_tokenizer, capsys):
    steer_scores(chat_model, [[0.9, 0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.2, 0.9, 0.9]])
    d = tmp_path / "steered"
    chat_model.save_pretrained(d)
    chat_tokenizer.save_pretrained(d)
    rc = kala(["chat", "--model", str(d), "--prompt", "Hello", "--json", "--threshold", "0.5"])
    assert rc == 0
    lines = _lines(capsys.readouterr().out)
    stop = lines[-1]
    title = load_constitution().laws[2].title
    assert stop["kind"] == "ethics" and stop["law"] == 2 and stop["message"] == f"{title} fell to 0.20 < 0.50"
    assert stop["explanation"]["findings"][0]["first_layer"] == 1
    assert lines[-2]["flagged"][0]["title"] == title


def test_kala_chat_interactive_reads_lines(model_dir, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\n/reset\nHow are you?\n/quit\nnever read\n"))
    rc = kala(["chat", "--model", str(model_dir), "--max-new-tokens", "3", "--threshold", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("[prompt]") == 2 and out.count("[stop]") == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "--prompt is empty"),
        (["--prompt", "Hello", "--threshold", "1.5"], "threshold"),
        (["--prompt", "Hello", "--threshold", "-0.1"], "threshold"),
        (["--prompt", "Hello", "--threshold", "abc"], "threshold"),
        (["--prompt", "Hello, how are you today? " * 60], "context"),
        (["--prompt", "Hello", "--max-new-tokens", "0"], "max_new_tokens"),
    ],
)
def test_kala_chat_bad_input_exits_2_without_traceback(model_dir, capsys, args, message):
    rc = kala(["chat", "--model", str(model_dir), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_kala_chat_not_a_kala_folder(tmp_path, make_neox_dir, capsys):
    _, neox = make_neox_dir()
    assert kala(["chat", "--model", str(neox), "--prompt", "Hello"]) == 2
    err = capsys.readouterr().err
    assert "load_from_pythia" in err and "Traceback" not in err
    assert kala(["chat", "--model", str(tmp_path / "nope"), "--prompt", "Hello"]) == 2
    assert "no such folder" in capsys.readouterr().err
