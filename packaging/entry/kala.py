"""Frozen entry point of the ``kala`` command line (PyInstaller starts this file).

It only calls the same ``main`` that ``pip install`` wires to the ``kala`` script, so the
packaged CLI and the development one cannot drift apart.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    # Spawned worker processes (Windows/macOS) re-enter the frozen executable.
    multiprocessing.freeze_support()
    from kala_engine.cli import main

    sys.exit(main())
