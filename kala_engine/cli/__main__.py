"""``python -m kala_engine.cli.main``: the ``kala`` command."""

import sys

from kala_engine.cli.main import main

sys.exit(main())
