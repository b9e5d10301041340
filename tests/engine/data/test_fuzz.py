"""Hypothesis fuzzing of `kala data validate` and `kala data import`: for any input, exit 0 or 2
with a message (never a traceback), and never a partial output file."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kala_engine.cli.main import main
from kala_engine.data.generate import generate_dataset
from kala_engine.data.io import load_jsonl, validate_file

GOOD = generate_dataset(20, seed=5)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
labels = st.one_of(
    st.lists(st.floats(-0.5, 1.5) | st.just(1.0), min_size=5, max_size=5),
    json_values,
)
parts = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "bot"]), "text": st.text(max_size=20),
         "labels": labels, "lm": st.booleans() | json_values}
    )
    | json_values,
    max_size=3,
)
record_like = st.fixed_dictionaries(
    {
        "id": st.text(max_size=6) | json_values,
        "kind": st.sampled_from(["benign", "harmful_request", "harmful_completion", "other"]) | json_values,
        "family": st.text(max_size=6),
        "split": st.sampled_from(["train", "validation", "test"]),
        "primary_law": st.none() | st.integers(-2, 7) | st.booleans(),
        "labels": labels,
        "parts": parts,
    }
)


def _line(value) -> bytes:
    return json.dumps(value).encode("utf-8")


lines = st.lists(st.sampled_from(GOOD).map(_line), min_size=1, max_size=3) | st.lists(
    st.one_of(st.sampled_from(GOOD).map(_line), record_like.map(_line), json_values.map(_line), st.binary(max_size=30)),
    min_size=0,
    max_size=5,
)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@FUZZ
@given(lines=lines)
def test_validate_never_crashes_and_names_file_line(lines):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.jsonl"
        path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
        code, out, err = _run(["data", "validate", str(path)])
        assert code in (0, 2)
        assert "Traceback" not in out + err
        if code == 0:
            load_jsonl(path)  # a file that validates also loads
        else:
            problems = [line for line in out.splitlines() if line.startswith(str(path))]
            assert problems
            assert all(re.match(re.escape(str(path)) + r":\d+: \S", p) for p in problems[:-1] or problems)
            assert validate_file(path)


words = st.text(alphabet=st.sampled_from("ab kill poison racist ignore your rules \u00e9\t"), min_size=0, max_size=25)
hh_valid = st.builds(
    lambda a, b, c: {"chosen": f"\n\nHuman: {a}\n\nAssistant: {b}", "rejected": f"\n\nHuman: {a}\n\nAssistant: {c}"},
    words, words, words,
)
hh_like = hh_valid | st.fixed_dictionaries({"chosen": st.text(max_size=30) | json_values, "rejected": st.text(max_size=30)})
pku_like = st.fixed_dictionaries(
    {"prompt": words | json_values, "response_0": words, "response_1": words | json_values,
     "is_response_0_safe": st.booleans() | json_values, "is_response_1_safe": st.booleans(),
     "response_0_harm_category": st.dictionaries(st.sampled_from(["Violence", "Copyright Issues", "x"]), st.booleans())
     | json_values}
)
bt_like = st.fixed_dictionaries(
    {"prompt": words, "response": words | json_values,
     "category": st.dictionaries(st.sampled_from(["self_harm", "animal_abuse", "y"]), st.booleans()) | json_values,
     "is_safe": st.booleans()}
)
junk = st.one_of(record_like.map(_line), json_values.map(_line), st.binary(max_size=20))
kala_like = st.sampled_from(GOOD) | record_like
bt_valid = st.fixed_dictionaries({"prompt": words, "response": words, "is_safe": st.booleans(),
                                  "category": st.dictionaries(st.sampled_from(["self_harm", "animal_abuse"]), st.booleans())})
pku_valid = st.fixed_dictionaries({"prompt": words, "response_0": words, "response_1": words,
                                   "is_response_0_safe": st.booleans(), "is_response_1_safe": st.booleans()})
clean = {"kala": st.sampled_from(GOOD), "hh-rlhf": hh_valid, "pku-saferlhf": pku_valid, "beavertails": bt_valid}
by_format = {"kala": kala_like, "hh-rlhf": hh_like, "pku-saferlhf": pku_like, "beavertails": bt_like}
import_inputs = st.sampled_from(sorted(by_format)).flatmap(
    lambda fmt: st.tuples(
        st.just(fmt),
        st.lists(clean[fmt].map(_line), min_size=1, max_size=4)
        | st.lists(st.one_of(by_format[fmt].map(_line), by_format[fmt].map(_line), junk), max_size=4),
    )
)


@FUZZ
@given(case=import_inputs)
def test_import_never_crashes_and_never_leaves_partial_output(case):
    fmt, lines = case
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        src.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
        out = Path(d) / "out.jsonl"
        code, stdout, err = _run(["data", "import", str(src), "--format", fmt, "--out", str(out)])
        assert code in (0, 2)
        assert "Traceback" not in stdout + err
        if code == 0:
            assert validate_file(out) == []
        else:
            assert err.strip()
            assert not out.exists()
        assert sorted(p.name for p in Path(d).iterdir()) == sorted(["in.jsonl"] + (["out.jsonl"] if code == 0 else []))
