#!/usr/bin/env python
"""Render KALA Studio's pages at 1280x800 offscreen: ``python scripts/screenshots.py --out docs/screenshots``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kala_app.screenshots import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
