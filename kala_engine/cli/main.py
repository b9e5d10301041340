"""The ``kala`` command line: one dispatcher, sub-commands registered by their own modules.

Each sub-command module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed args and returning an exit code). Errors a user can
act on (``CLIError``, ``ValueError``, a missing or damaged file, a full disk, out of memory: see
``kala_engine.cli.checks.expected_error``) are printed as one line without a traceback (exit 2;
``KALA_DEBUG=1`` shows the traceback); anything else is a bug: its traceback is printed with a
line saying so (exit 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from kala_engine.cli.checks import CLIError  # noqa: F401 - the error every command raises


# one module per command, each with register(subparsers); imported when the parser is built
def _command_modules():
    from kala_engine.cli import align, chat, data, distill, doctor, eval, models, train

    return [
        data,  # kala data generate|validate|import|stats|cai
        doctor,  # kala doctor
        train,  # kala train, kala demo
        align,  # kala align (preference alignment)
        chat,  # kala chat
        eval,  # kala eval
        models,  # kala models list|download|delete
        distill,  # kala distill
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kala",
        description="KALA Studio command line: data, training, chat and evaluation of constitutional models.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(version("kala-studio"))
        except PackageNotFoundError:
            print("kala-studio (not installed)")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one error boundary of every command
        from kala_engine.cli.checks import bug_report, expected_error

        message = expected_error(e)
        if message is None:  # a bug: show everything, and say so
            traceback.print_exc()
            print(f"kala {args.command}: {bug_report()}", file=sys.stderr)
            return 1
        if os.environ.get("KALA_DEBUG"):
            raise
        print(f"kala {args.command}: error: {message}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
