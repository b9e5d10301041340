"""Run the `kala` CLI in-process, the way a user would see it (shared by the CLI error tests)."""

from __future__ import annotations

import contextlib
import io
import sys


def run_cli(argv: list[str], stdin: bytes | None = None) -> tuple[int | None, str, str, BaseException | None]:
    """main(argv) in-process: (exit code, stdout, stderr, exception that escaped main or None)."""
    from kala_engine.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    escaped = None
    code: int | None = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse usage errors
                code = e.code if isinstance(e.code, int) else 2
            except Exception as e:  # noqa: BLE001 - a traceback a user would see
                escaped = e
    finally:
        sys.stdin = old_stdin
    return code, out.getvalue(), err.getvalue(), escaped
