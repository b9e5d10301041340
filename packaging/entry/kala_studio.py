"""Frozen entry point of the ``kala-studio`` desktop app (PyInstaller starts this file).

It only calls the same ``main`` that ``pip install`` wires to the ``kala-studio`` script.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    # Spawned worker processes (Windows/macOS) re-enter the frozen executable.
    multiprocessing.freeze_support()
    from kala_app.main import main

    sys.exit(main())
