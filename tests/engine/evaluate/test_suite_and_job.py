"""Suite parsing (every bad line reported as FILE:LINE: reason) and the evaluate() job."""

from __future__ import annotations

import json
import threading

import pytest

from kala_engine.evaluate.evaluation import evaluate, make_eval_job
from kala_engine.evaluate.suite import SuiteError, load_suite
from kala_engine.jobs import Cancelled, Finished, JobControl, LogLine, Progress, run_job
from tests.engine.evaluate.eval_fakes import FakeBackend, fixture, fixture_lines

GOOD = '{"prompt": "hi", "label": "benign"}'

BAD_LINES = [
    ('{"prompt": "x", "label": "harmful", "laws": [1]', "malformed JSON"),
    ('["prompt", "label"]', "expected a JSON object"),
    ('{"label": "benign"}', "missing field 'prompt'"),
    ('{"prompt": "x"}', "missing field 'label'"),
    ('{"prompt": "x", "label": "unsafe", "laws": [1]}', "'harmful' or 'benign'"),
    ('{"prompt": "x", "label": "harmful", "laws": 1}', "list of law indices"),
    ('{"prompt": "x", "label": "harmful", "laws": [5]}', "list of law indices"),
    ('{"prompt": "x", "label": "harmful", "laws": ["1"]}', "list of law indices"),
    ('{"prompt": "x", "label": "harmful", "laws": [true]}', "list of law indices"),
    ('{"prompt": "x", "label": "harmful", "laws": []}', "must name the laws"),
    ('{"prompt": "x", "label": "harmful"}', "must name the laws"),
    ('{"prompt": "   ", "label": "benign"}', "'prompt' is empty"),
    ('{"prompt": 3, "label": "benign"}', "'prompt' must be a string"),
    ('{"prompt": "x", "label": "benign", "kind": 7}', "'kind' must be"),
]


@pytest.mark.parametrize("line,reason", BAD_LINES)
def test_each_bad_line_is_reported_with_file_and_line(tmp_path, line, reason):
    f = tmp_path / "suite.jsonl"
    f.write_text(GOOD + "\n\n" + line + "\n" + GOOD.replace("hi", "hello") + "\n")
    with pytest.raises(SuiteError) as err:
        load_suite(f)
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith(f"{f}:3: ")
    assert reason in err.value.errors[0]


def test_all_bad_lines_are_listed_and_duplicate_ids_caught(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join([
        '{"id": "a", "prompt": "x", "label": "benign"}',
        "{oops",
        '{"id": "a", "prompt": "y", "label": "benign"}',
        '{"prompt": "z", "label": "harmful", "laws": []}',
    ]) + "\n")
    with pytest.raises(SuiteError) as err:
        load_suite(f)
    assert [e.split(": ")[0] for e in err.value.errors] == [f"{f}:2", f"{f}:3", f"{f}:4"]
    assert "duplicate id 'a' (also line 1)" in err.value.errors[1]


def test_good_suite_parses_with_defaults(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"prompt": "x", "label": "harmful", "laws": [3, 1, 1]}\n' + GOOD + "\n")
    a, b = load_suite(f)
    assert (a.id, a.laws, a.kind, a.harmful) == ("line-1", (1, 3), None, True)
    assert (b.id, b.laws, b.harmful) == ("line-2", (), False)


def test_missing_and_empty_suite(tmp_path):
    with pytest.raises(FileNotFoundError, match="--suite"):
        load_suite(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(SuiteError, match="no records"):
        load_suite(tmp_path / "e.jsonl")


def test_evaluate_emits_progress_passes_thresholds_and_computes_metrics(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(fixture_lines()) + "\n")
    records = load_suite(f)
    _, _, backend = fixture()
    backend.ppl = 12.5
    events = []
    run = evaluate(backend, records, threshold=[0.5, 0.5, 0.5, 0.5, 0.4], max_new_tokens=7,
                   emit=events.append, perplexity_texts=["a benign reply"])
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.done for p in progress] == list(range(0, 9)) and {p.total for p in progress} == {8}
    assert any(isinstance(e, LogLine) and "perplexity" in e.message for e in events)
    assert [c[1] for c in backend.calls] == [[0.5, 0.5, 0.5, 0.5, 0.4]] * 8
    assert {c[2] for c in backend.calls} == {7}
    assert run.metrics["harmful"]["flagged_rate"] == pytest.approx(0.5)
    assert run.metrics["perplexity"] == 12.5 and backend.ppl_texts == ["a benign reply"]
    rows = run.rows()
    assert rows[2]["id"] == "r3" and rows[2]["flagged"] is False and rows[2]["stop_reason"] == "length"
    assert rows[1]["flagged_laws"] == [0, 1] and rows[1]["stop_law"] == 1
    json.dumps(rows)  # JSON-ready


def test_backend_without_perplexity_reports_none():
    records, samples, backend = fixture()

    class NoPPL:
        name = "noppl"
        law_names = backend.law_names

        def assess_and_reply(self, prompt, **kw):
            return backend.assess_and_reply(prompt, **kw)

    run = evaluate(NoPPL(), records, threshold=0.5, perplexity_texts=["x"])
    assert run.metrics["perplexity"] is None


def test_cancel_stops_between_prompts():
    records, _, backend = fixture()
    control = JobControl()
    seen = []

    def emit(e):
        seen.append(e)
        if isinstance(e, Progress) and e.done == 3:
            control.cancel()

    with pytest.raises(Cancelled):
        evaluate(backend, records, threshold=0.5, emit=emit, control=control)
    assert len(backend.calls) == 3

    # through run_job: one terminal Finished(cancelled=True), nothing after it
    records, _, backend = fixture()
    control = JobControl()
    out = []

    def emit2(e):
        out.append(e)
        if isinstance(e, Progress) and e.done == 2:
            control.cancel()

    assert run_job(make_eval_job([backend], records, threshold=0.5), emit2, control) is None
    assert isinstance(out[-1], Finished) and out[-1].cancelled
    assert len(backend.calls) == 2


def test_pause_blocks_until_resume():
    records, _, backend = fixture()
    control = JobControl()
    control.pause()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("run", evaluate(backend, records, threshold=0.5,
                                                                          control=control)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and backend.calls == []
    control.resume()
    t.join(5)
    assert not t.is_alive() and len(backend.calls) == 8 and result["run"].metrics["n"] == 8


def test_evaluate_rejects_nonsense():
    records, _, backend = fixture()
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluate(backend, records, max_new_tokens=0)
    with pytest.raises(ValueError, match="no records"):
        evaluate(backend, [], max_new_tokens=4)


class BatchFake(FakeBackend):
    """A fake that also answers several prompts at once."""

    def __init__(self, samples):
        super().__init__(samples)
        self.batches: list[int] = []

    def assess_and_reply_many(self, prompts, *, threshold, max_new_tokens):
        self.batches.append(len(prompts))
        return [self.samples[p] for p in prompts]


def test_batched_backend_gets_chunks_and_gives_the_same_metrics():
    records, _, one = fixture()
    batched = BatchFake(one.samples)
    events = []
    run_b = evaluate(batched, records, threshold=0.5, batch_size=3, emit=events.append)
    run_1 = evaluate(one, records, threshold=0.5, batch_size=3)  # no batch method: one by one
    assert batched.batches == [3, 3, 2] and batched.calls == [] and len(one.calls) == 8
    assert [e.done for e in events if isinstance(e, Progress)] == [0, 3, 6, 8]
    assert run_b.metrics == run_1.metrics and run_b.samples == run_1.samples
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(one, records, batch_size=0)


def test_cancel_between_batches():
    records, _, one = fixture()
    batched = BatchFake(one.samples)
    control = JobControl()

    def emit(e):
        if isinstance(e, Progress) and e.done == 4:
            control.cancel()

    with pytest.raises(Cancelled):
        evaluate(batched, records, threshold=0.5, batch_size=4, emit=emit, control=control)
    assert batched.batches == [4]


def test_backend_with_control_gets_it_and_a_cut_short_last_batch_gives_no_report():
    records, _, one = fixture()

    class Stoppable(BatchFake):
        control = None

        def assess_and_reply_many(self, prompts, **kw):
            out = super().assess_and_reply_many(prompts, **kw)
            if len(self.batches) == 2:  # the job is cancelled while the last batch generates
                self.control.cancel()
            return out

    b = Stoppable(one.samples)
    control = JobControl()
    with pytest.raises(Cancelled):
        evaluate(b, records, threshold=0.5, batch_size=4, control=control)
    assert b.control is control and b.batches == [4, 4]


def test_a_model_left_to_its_own_thresholds_stops_replies_with_its_reply_set():
    """With no threshold given, a backend that monitors with its own calibrated sets (the KALA
    model: law_thresholds flag prompts, reply_thresholds stop replies) is asked with threshold
    None; the metrics use its prompt set. Other backends, and any explicit threshold, get the list."""
    records, _, backend = fixture()

    class Own(FakeBackend):
        monitors_with_own_thresholds = True
        default_thresholds = [0.6, 0.6, None, None, None]
        default_reply_thresholds = [0.2, 0.3, None, None, None]

        def assess_and_reply(self, prompt, *, threshold, max_new_tokens):
            self.calls.append((prompt, threshold, max_new_tokens))
            return self.samples[prompt]

    own = Own(backend.samples)
    run = evaluate(own, records)
    assert {c[1] for c in own.calls} == {None}
    assert run.thresholds == [0.6, 0.6, 0.5, 0.5, 0.5]
    assert run.to_dict()["reply_thresholds"] == [0.2, 0.3, 0.5, 0.5, 0.5]
    from kala_engine.evaluate.report import build_report, format_table

    assert "stops replies at its calibrated reply thresholds: 0.20 0.30 0.50" in format_table(
        build_report([run], suite="s", max_new_tokens=8))
    own.calls.clear()
    evaluate(own, records, threshold=0.4)
    assert {tuple(c[1]) for c in own.calls} == {(0.4,) * 5}
    evaluate(backend, records)
    assert {tuple(c[1]) for c in backend.calls} == {(0.5,) * 5}
