"""Hypothesis: random bytes and random JSON thrown at `kala data validate` and `kala eval --suite`
(a real tiny KALA model): exit 0 or 2, never a traceback, and the input file is never changed."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kala_engine.data.generate import generate_dataset
from tests.engine.cli.cli_harness import run_cli

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
GOOD = generate_dataset(10, seed=4)

text = st.text(max_size=12) | st.sampled_from(["\ud800", "caf\udce9", "\ufeff", "\u2028", "kill a process " * 30])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 7) | st.floats(allow_nan=True, allow_infinity=True) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=10,
)
suite_like = st.fixed_dictionaries(
    {"prompt": text | json_values, "label": st.sampled_from(["harmful", "benign", "other"]) | json_values},
    optional={"laws": st.lists(st.integers(-1, 6), max_size=3) | json_values, "kind": text | json_values,
              "id": text | st.integers(0, 3) | json_values},
)


def _line(value) -> bytes:
    return json.dumps(value, ensure_ascii=bool(value) and isinstance(value, dict)).encode("utf-8", "surrogatepass")


lines = st.lists(
    st.one_of(suite_like.map(_line), st.sampled_from(GOOD).map(_line), json_values.map(_line), st.binary(max_size=40)),
    max_size=5,
)
files = st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf"]), lines, st.sampled_from([b"\n", b"\r\n"])).map(
    lambda t: t[0] + t[2].join(line.replace(b"\n", b" ") for line in t[1])
) | st.binary(max_size=200)

clean = st.lists(st.sampled_from(["a", "b", " ", "kill", "poison", "\u00e9", "\t", "\U0001f600"]), min_size=1,
                 max_size=12).map("".join).filter(str.strip)
dirty = st.tuples(clean, st.sampled_from(["\ud800", "\udce9", "\udfff"]), clean).map("".join)
words = st.one_of(clean, clean, clean, dirty)  # JSON can spell lone surrogates; about 1 prompt in 4 does
valid_record = st.one_of(
    st.builds(lambda p: {"prompt": p, "label": "benign"}, words | st.just("kill a process " * 30)),
    st.builds(lambda p, k: {"prompt": p, "label": "harmful", "laws": [k]}, words, st.integers(0, 4)),
)
valid_suite = st.lists(valid_record.map(_line), min_size=1, max_size=4).map(b"\n".join)
valid_dataset = st.lists(st.sampled_from(GOOD).map(_line), min_size=1, max_size=4, unique=True).map(b"\n".join)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    tok = train_tokenizer(["hello there, how are you", "kill a stuck process", "poison", "caf\u00e9"] * 5,
                          vocab_size=300)
    torch.manual_seed(0)
    cfg = KALAConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64,
                     vocab_size=len(tok), rotary_pct=0.25, max_position_embeddings=64)
    d = tmp_path_factory.mktemp("fuzz") / "model"
    KALAForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def cached_loading(monkeypatch):
    """The real loader, once per folder (each example would otherwise load the model again)."""
    from kala_engine.generate import session as generation

    monkeypatch.setattr(generation, "load_chat_model", functools.lru_cache(maxsize=2)(generation.load_chat_model))


def _check(argv_for, data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.jsonl"
        path.write_bytes(data)
        code, out, err, escaped = run_cli(argv_for(path))
        assert escaped is None, f"{type(escaped).__name__}: {escaped}"
        assert code in (0, 2), (code, err[-1500:])
        event(f"exit {code}")
        assert "Traceback" not in out + err
        if code == 2:
            assert (out + err).strip()  # validate lists FILE:LINE problems on stdout
        assert path.read_bytes() == data  # the input is never touched
        assert [p.name for p in Path(d).iterdir()] == ["in.jsonl"]


@FUZZ
@given(data=valid_dataset | files)
def test_data_validate_never_crashes_nor_touches_its_input(data):
    _check(lambda p: ["data", "validate", p], data)


@FUZZ
@given(data=valid_suite | files)
def test_eval_suite_never_crashes_nor_touches_its_input(tiny_model, cached_loading, data):
    _check(lambda p: ["eval", "--model", tiny_model, "--suite", p, "--max-new-tokens", "1", "--limit", "3"], data)
