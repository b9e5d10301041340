"""``kala models``: what bases exist, which are cached, what fits this device; resumable downloads.

    kala models list [--json] [--device auto|cpu|cuda]
    kala models download NAME_OR_REPO_ID [--revision R]
    kala models delete NAME_OR_REPO_ID

Everything goes through :mod:`kala_engine.model.hub` (huggingface_hub underneath, the standard cache,
``HF_HOME`` honoured). ``list`` never touches the network.
"""

from __future__ import annotations

import json
import sys
import time

from kala_engine.jobs import Cancelled, JobControl, LogLine
from kala_engine.units import format_bytes, format_duration


def progress_printer(stream=None):
    """An emit() that prints download progress (one line a second, or in place on a terminal)."""
    from kala_engine.model.download import DownloadProgress

    stream = stream or sys.stderr
    tty = stream.isatty()
    last = [0.0, -1]  # time and bytes of the last line

    def emit(ev):
        if isinstance(ev, DownloadProgress):
            now = time.monotonic()
            final = ev.total and ev.done >= ev.total
            if (not tty and now - last[0] < 1.0 and not final) or (final and ev.done == last[1]):
                return
            last[:] = [now, ev.done]
            pct = 100.0 * ev.done / ev.total if ev.total else 0.0
            line = (f"{pct:5.1f}%  {format_bytes(ev.done)} / {format_bytes(ev.total)}  {format_bytes(ev.rate)}/s  "
                    f"eta {format_duration(ev.eta)}  {ev.filename}")
            print(("\r" + line.ljust(78)) if tty else line, end="" if tty else "\n", file=stream, flush=True)
        elif isinstance(ev, LogLine):
            print(ev.message, file=stream if ev.level != "info" else sys.stdout, flush=True)

    return emit


def cmd_list(args) -> int:
    from kala_engine.doctor import list_models
    from kala_engine.model.hub import hub_cache_dir

    rows = list_models(args.device, batch_size=args.batch_size, seq_len=args.seq_len)
    if args.json:
        print(json.dumps({"cache": str(hub_cache_dir()), "models": rows}, indent=2))
        return 0
    print(f"Hugging Face cache: {hub_cache_dir()}  (HF_HOME / HF_HUB_CACHE)")
    print(f"{'model':<22} {'params':>8} {'download':>9}  {'cached':<18} plan on {rows[0]['device'] if rows else '-'}")
    for r in rows:
        cached = f"yes {r['commit'][:8]}" if r["cached"] else (
            f"partial {format_bytes(r['partial_bytes'])}" if r["partial_bytes"] else "no")
        extra = [rev for rev in r["revisions"] if rev != "main"]
        if extra:
            cached += f" (+{', '.join(extra)})"
        plan = (f"fits: {r['mode']} {r['precision']} ~{format_bytes(r['estimate_bytes'])}" if r["fits"]
                else f"does not fit (~{format_bytes(r['estimate_bytes'])} of {format_bytes(r['available_bytes'])})")
        print(f"{r['name']:<22} {r['params'] / 1e6:>7.0f}M {format_bytes(r['download_bytes']):>9}  {cached:<18} {plan}")
    print("\ndownload one: kala models download NAME [--revision stepN]; cached models train offline")
    return 0


def cmd_download(args) -> int:
    from kala_engine.model.hub import download_base, resolve_base

    emit = progress_printer()
    control = JobControl()
    try:
        if not args.force:  # already complete in the cache: nothing to do, no network
            try:
                r = resolve_base(args.name, args.revision)
                print(f"{r.repo_id} is already in the cache: {r.path}")
                return 0
            except ValueError:
                pass
        r = download_base(args.name, args.revision, emit=emit, control=control)
    except (KeyboardInterrupt, Cancelled):
        print("\ndownload interrupted; what arrived is kept - run the same command again to resume",
              file=sys.stderr)
        return 130
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"downloaded {r.repo_id}{'@' + r.revision if r.revision else ''} (commit {r.commit[:8]}) to {r.path}")
    return 0


def cmd_delete(args) -> int:
    from kala_engine.model.hub import delete_from_cache

    freed = delete_from_cache(args.name)
    print(f"{args.name}: {'removed, ' + format_bytes(freed) + ' freed' if freed else 'not in the cache'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="bases: list Pythia sizes (cached? fits?), download into the HF cache")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    ls = msub.add_parser("list", help="every Pythia size: parameters, download size, cached or not, doctor's plan")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ls.add_argument("--batch-size", type=int, default=4)
    ls.add_argument("--seq-len", type=int, default=512)
    ls.set_defaults(func=cmd_list)

    dl = msub.add_parser("download", help="download a base (preset or GPT-NeoX hub id) into the HF cache; resumable")
    dl.add_argument("name", help="preset (pythia-410m, pythia-1b-deduped ...) or hub id (EleutherAI/pythia-6.9b)")
    dl.add_argument("--revision", default=None, help="branch, tag or commit (Pythia: step0 ... step143000)")
    dl.add_argument("--force", action="store_true", help="ask the hub even when the cache has it")
    dl.set_defaults(func=cmd_download)

    rm = msub.add_parser("delete", help="remove a base from the HF cache (all its revisions)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_delete)
