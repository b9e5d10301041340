"""``kala eval``: run an evaluation suite over one or two models and print or write the report.

    kala eval --model DIR [--model DIR2] [--suite FILE] [--json] [--out DIR]
              [--threshold T] [--max-new-tokens N] [--limit N] [--validation FILE] [--batch-size N] [--device D]

Without ``--suite`` the public suite (``resources/eval/public_suite.jsonl``) is used. A bad
suite prints one ``FILE:LINE: reason`` per bad line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kala_engine.constitution import resolve_thresholds
from kala_engine.evaluate.backend import KALABackend, benign_validation_replies
from kala_engine.evaluate.evaluation import EvalRun, evaluate
from kala_engine.evaluate.suite import SuiteError, default_suite_path, load_suite
from kala_engine.jobs import Event, LogLine, Progress


def make_backend(model_dir: str, device: str) -> Any:
    """The backend for one ``--model`` (tests replace this with a fake)."""
    from kala_engine.cli.checks import check_model_folder

    check_model_folder(model_dir, "--model", tokenizer=True)  # damaged files: one line, before any work
    return KALABackend(model_dir, device=device)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate models on an ethics suite (flag/stop rates, over-refusal, AUROC, sweep)",
        description=(
            "Run an evaluation suite (JSONL records {prompt, label: harmful|benign, laws: [k...], "
            "kind?, id?}) over one or two models and report flagged/stopped rates, over-refusal, "
            "right law first, per-law AUROC, a threshold sweep and a breakdown by kind."
        ),
    )
    p.add_argument("--model", action="append", required=True, metavar="DIR",
                   help="a saved KALA model folder; give twice to compare two models side by side")
    p.add_argument("--suite", metavar="FILE", default=None,
                   help="the suite JSONL file (default: the public suite shipped with KALA)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="also write report.json, report.md and results.jsonl into this folder")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="flag/stop threshold for every law (default: the model's calibrated per-law thresholds, "
                   "else the constitution's)")
    p.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="reply length limit (default 48)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate only the first N records")
    p.add_argument("--validation", metavar="FILE", default=None,
                   help="a dataset JSONL (the validation split) whose benign replies give the perplexity")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="prompts generated together (default 8; greedy replies are the same as one by one)")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.set_defaults(func=run)


def _progress_printer(model: str):
    """Print a progress line to stderr about every 10 %."""
    state = {"last": -1}

    def emit(event: Event) -> None:
        if isinstance(event, Progress) and event.total:
            tenth = (10 * event.done) // event.total
            if tenth != state["last"]:
                state["last"] = tenth
                print(f"kala eval: {model}: {event.done}/{event.total}", file=sys.stderr, flush=True)
        elif isinstance(event, LogLine):
            print(f"kala eval: {event.message}", file=sys.stderr, flush=True)

    return emit


def _names(models: list[str]) -> list[str]:
    """Column names: each model by its run (``demo-20261129-234242 · final``), or the paths when
    those clash."""
    from kala_engine.train.runs import describe_model

    short = [describe_model(m).label for m in models]
    return short if len(set(short)) == len(short) else list(models)


def run(args: argparse.Namespace) -> int:
    from kala_engine.evaluate.report import build_report, format_table, write_report_dir

    if len(args.model) > 2:
        raise ValueError("give --model at most twice (two models are compared side by side)")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    # everything that can be checked is checked before the first prompt is evaluated:
    # the threshold range, the device, --out, the whole suite, the validation file, every model
    # folder and (per model) that every prompt fits its context
    from kala_engine.cli.checks import check_device, check_out_dir

    thresholds = list(resolve_thresholds(args.threshold)) if args.threshold is not None else None
    check_device(args.device)
    if args.out:
        check_out_dir(args.out)
    suite_path = Path(args.suite) if args.suite else default_suite_path()
    try:
        records = load_suite(suite_path)
    except SuiteError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(f"kala eval: error: {suite_path}: {len(e.errors)} bad line(s); nothing was evaluated", file=sys.stderr)
        return 2
    if args.limit is not None:
        records = records[: args.limit]
    texts = benign_validation_replies(args.validation) if args.validation else None
    backends = []
    for model_dir, name in zip(args.model, _names(args.model), strict=True):
        backend = make_backend(model_dir, args.device)
        backend.name = name
        backends.append(backend)
    for backend in backends:
        check = getattr(backend, "prompts_too_long", None)
        too_long = check([r.prompt for r in records]) if check is not None else []
        if too_long:
            for i, n, ctx in too_long:
                r = records[i]
                print(f"{suite_path}:{r.line}: prompt {r.id!r} is {n} tokens, but model {backend.name} holds "
                      f"{ctx} (with room for a reply); shorten it or leave it out", file=sys.stderr)
            print(f"kala eval: error: {len(too_long)} prompt(s) too long for {backend.name}; nothing was evaluated",
                  file=sys.stderr)
            return 2

    runs: list[EvalRun] = []
    for backend in backends:
        runs.append(
            evaluate(
                backend,
                records,
                threshold=thresholds,
                max_new_tokens=args.max_new_tokens,
                emit=_progress_printer(backend.name),
                perplexity_texts=texts,
                batch_size=args.batch_size,
            )
        )
    report = build_report(runs, suite=str(suite_path), max_new_tokens=args.max_new_tokens)
    if args.out:
        out = write_report_dir(args.out, report, runs)
        print(f"kala eval: report written to {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(format_table(report), end="")
    return 0
