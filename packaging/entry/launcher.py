"""Frozen entry point of both bundled commands (PyInstaller starts this file).

The executable's name picks the command: ``kala`` (or ``kala.exe``) runs the command line
(``kala_engine.cli.main:main``), anything else the desktop app (``kala_app.main:main``) -- the same
functions ``pip install`` wires to the two scripts, so the packaged commands and the
development ones cannot drift apart. One entry script lets the Linux bundle ship a single
executable with ``kala`` as a symbolic link to it, instead of a second copy of the ~50 MB
module archive (see kala-studio.spec).
"""

import multiprocessing
import os
import sys


def command_name(argv0: str) -> str:
    """``kala`` or ``kala-studio``, from the name this process was started under."""
    name = os.path.basename(argv0).lower()
    if name.endswith(".exe"):
        name = name[: -len(".exe")]
    return "kala" if name == "kala" else "kala-studio"


if __name__ == "__main__":
    # Spawned worker processes (Windows/macOS) re-enter the frozen executable.
    multiprocessing.freeze_support()
    if command_name(sys.argv[0]) == "kala":
        from kala_engine.cli.main import main
    else:
        from kala_app.main import main
    sys.exit(main())
