"""``kala data``: generate, validate, import and summarise constitutional JSONL datasets.

    kala data generate --out FILE [--count N] [--seed S] [--pairs]
    kala data validate FILE
    kala data import FILE --format {kala,hh-rlhf,pku-saferlhf,beavertails} --out FILE
    kala data import --from-hub [REPO_ID] [--hub-file PATH] --format F --out FILE
    kala data stats FILE [--json] [--tokenizer DIR]
    kala data cai --model DIR --out FILE [--count N] [--seed S]   (model drafts, critiques, revises)

Errors a user can fix print without a traceback and exit 2 (handled by kala_engine.cli.main).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(subparsers) -> None:
    from kala_engine.data.importers import ALL_FORMATS

    data = subparsers.add_parser("data", help="generate, validate, import and summarise constitutional datasets")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    gen = sub.add_parser("generate", help="write a generated constitutional JSONL dataset and print its summary")
    gen.add_argument("--out", required=True, type=Path, help="output .jsonl file (written atomically)")
    gen.add_argument("--count", type=_positive_int, default=10000, help="number of records (default 10000)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same file")
    gen.add_argument("--pairs", action="store_true",
                     help="write preference pairs (prompt, chosen, rejected) for kala align instead of records")
    gen.set_defaults(func=cmd_generate)

    val = sub.add_parser("validate", help="check a dataset: exit 0, or exit 2 listing FILE:LINE: reason")
    val.add_argument("file", type=Path)
    val.set_defaults(func=cmd_validate)

    imp = sub.add_parser("import", help="convert a well-known dataset (a local copy, or --from-hub) to KALA JSONL")
    imp.add_argument("file", type=Path, nargs="?", default=None,
                     help="input file: JSON lines (.gz/.xz too; also CSV or a JSON array for the other formats)")
    imp.add_argument("--format", default="auto", choices=("auto", *ALL_FORMATS), dest="fmt",
                     help="the data set's format (default: auto, detected from the file's fields)")
    imp.add_argument("--from-hub", nargs="?", const="", default=None, metavar="REPO_ID",
                     help="take the file from the Hugging Face hub (cache first; default repo per format: "
                          "Anthropic/hh-rlhf, PKU-Alignment/PKU-SafeRLHF, PKU-Alignment/BeaverTails)")
    imp.add_argument("--hub-file", default=None, help="with --from-hub: the file in the repo (default: its train split)")
    imp.add_argument("--revision", default=None, help="with --from-hub: branch, tag or commit")
    imp.add_argument("--out", required=True, type=Path, help="output .jsonl file (written atomically)")
    imp.add_argument("--pairs", action="store_true",
                     help="write preference pairs (safe reply over unsafe reply of the same prompt) for kala align")
    imp.set_defaults(func=cmd_import)

    st = sub.add_parser("stats", help="print a dataset's summary (kind x law, lengths, shares)")
    st.add_argument("file", type=Path)
    st.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    st.add_argument("--tokenizer", type=Path, default=None,
                    help="tokenizer folder: measure lengths in its tokens instead of characters")
    st.set_defaults(func=cmd_stats)

    cai = sub.add_parser("cai", help="Constitutional-AI mode: a saved model drafts, critiques and revises replies")
    cai.add_argument("--model", required=True, type=Path, help="folder with the model and its tokenizer")
    cai.add_argument("--out", required=True, type=Path, help="output .jsonl file (written atomically)")
    cai.add_argument("--count", type=_positive_int, default=100, help="harmful requests to process (default 100)")
    cai.add_argument("--seed", type=int, default=0)
    cai.add_argument("--max-new-tokens", type=_positive_int, default=96)
    cai.set_defaults(func=cmd_cai)


#: Memory a streamed generation keeps per record (its duplicate digest, its prompt's digest).
MEMORY_PER_RECORD = 200


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def check_generate_size(out: Path, count: int, seed: int) -> int:
    """Refuse a --count whose file cannot fit on the disk (or whose duplicate check cannot fit in
    memory), with the estimate; returns the estimated bytes. A sample of 200 records gives the
    average size. Refusing now beats a "disk full" after hours of writing."""
    import shutil

    from kala_engine.cli.checks import CLIError
    from kala_engine.data.generate import iter_dataset
    from kala_engine.data.io import dumps_record
    from kala_engine.doctor import _cpu_memory

    sample = [len(dumps_record(r).encode("utf-8")) + 1 for r in iter_dataset(min(count, 200), seed)]
    per_record = sum(sample) / len(sample)
    need = int(per_record * count)
    free = shutil.disk_usage(out.parent if str(out.parent) else ".").free
    if need > free:
        fits = int(free / per_record)
        raise CLIError(f"--count {count} would write about {_size(need)} (about {per_record:.0f} bytes a record), "
                       f"but {out.parent or '.'} has {_size(free)} free; ask for at most about {fits} records")
    available = _cpu_memory()[1]
    if available and count * MEMORY_PER_RECORD > available:
        raise CLIError(f"--count {count}: telling that many records apart needs about "
                       f"{_size(count * MEMORY_PER_RECORD)} of memory and {_size(available)} is available; "
                       f"ask for at most about {available // MEMORY_PER_RECORD} records")
    return need


def cmd_generate(args) -> int:
    """Stream the records to a temporary file beside --out (renamed when complete): memory does
    not grow with the records' text, Ctrl-C leaves nothing behind, a progress line every few
    seconds."""
    import sys

    from kala_engine.cli.checks import check_out_file
    from kala_engine.data.generate import Summary, format_summary, iter_dataset
    from kala_engine.data.io import write_jsonl

    check_out_file(args.out)
    if args.pairs:
        return _generate_pairs(args)
    check_generate_size(args.out, args.count, args.seed)
    t0 = time.perf_counter()
    summary = Summary()
    state = {"shown": t0}

    def stream():
        for record in iter_dataset(args.count, args.seed):
            summary.add(record)
            yield record
            now = time.perf_counter()
            if now - state["shown"] >= 5:
                state["shown"] = now
                print(f"kala data generate: {summary.n}/{args.count} records written to a temporary file "
                      f"beside {args.out} (Ctrl-C stops, leaving nothing)", file=sys.stderr, flush=True)

    n = write_jsonl(args.out, stream())
    t_all = time.perf_counter() - t0
    print(format_summary(summary.result()))
    print(f"\nwrote {n} records to {args.out} (seed {args.seed}) in {t_all:.2f} s")
    return 0


def _generate_pairs(args) -> int:
    from kala_engine.data.pairs import write_pairs

    t0 = time.perf_counter()
    stats = write_pairs(args.out, args.count, args.seed)
    for name in ("by_source", "by_split"):
        print("  ".join(f"{k} {v}" for k, v in sorted(stats[name].items())))
    print(f"\nwrote {stats['n']} pairs to {args.out} (seed {args.seed}) in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_validate(args) -> int:
    from kala_engine.data.io import validate_file
    from kala_engine.data.pairs import is_pair_file, validate_pair_file

    problems = (validate_pair_file if args.file.is_file() and is_pair_file(args.file) else validate_file)(args.file)
    if problems:
        for p in problems:
            print(p)
        print(f"{args.file}: {len(problems)} problem(s)")
        return 2
    with args.file.open("rb") as f:
        n = sum(1 for line in f if line.strip())
    print(f"{args.file}: {n} records, all valid")
    return 0


def cmd_import(args) -> int:
    from kala_engine.cli.checks import check_out_file
    from kala_engine.data.importers import import_dataset

    check_out_file(args.out)
    if args.from_hub is not None:
        if args.file is not None:
            raise ValueError("give either a local FILE or --from-hub, not both")
        if args.fmt == "auto":
            raise ValueError("with --from-hub, name the data set with --format (hh-rlhf, pku-saferlhf or beavertails)")
        from kala_engine.cli.models import progress_printer
        from kala_engine.model.hub import fetch_dataset

        args.file = fetch_dataset(args.fmt, args.from_hub or None, args.hub_file, args.revision,
                                  emit=progress_printer())
        print(f"converting {args.file}")
    elif args.file is None:
        raise ValueError("give the dataset file to import, or --from-hub [REPO_ID] to take it from the hub")
    if args.pairs:
        from kala_engine.data.pairs import import_pairs

        print(import_pairs(args.file, args.fmt, args.out))
        return 0
    report = import_dataset(args.file, args.fmt, args.out)
    print(report.format())
    return 0


def cmd_stats(args) -> int:
    from kala_engine.data.generate import format_summary, summarize
    from kala_engine.data.io import load_jsonl

    records = load_jsonl(args.file)
    tokenizer = None
    if args.tokenizer is not None:
        from kala_engine.cli.checks import check_tokenizer_folder
        from kala_engine.data.tokenizer import load_tokenizer

        check_tokenizer_folder(args.tokenizer, "--tokenizer")
        tokenizer = load_tokenizer(args.tokenizer)
    summary = summarize(records, tokenizer=tokenizer)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0


def cmd_cai(args) -> int:
    from kala_engine.cli.checks import check_model_folder, check_out_file
    from kala_engine.data.constitutional_ai import cai_from_model_dir
    from kala_engine.data.io import write_jsonl

    if not args.model.is_dir():
        raise FileNotFoundError(f"{args.model}: no such model folder")
    check_out_file(args.out)
    check_model_folder(args.model, "--model", tokenizer=True)
    t0 = time.perf_counter()
    records, skipped = cai_from_model_dir(str(args.model), args.count, args.seed, args.max_new_tokens)
    for reason, n in sorted(skipped.items()):
        print(f"skipped: {reason}: {n}")
    if not records:
        raise ValueError(f"{args.model}: the model produced no usable draft/critique/revision; nothing written")
    write_jsonl(args.out, records)
    print(f"wrote {len(records)} critique_revision records to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0
