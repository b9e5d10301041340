#!/usr/bin/env python
"""The original note's training script, as a thin entry point to `kala train` (same code, same flags).

    python scripts/train_kala_model.py --generate-data
    python scripts/train_kala_model.py --base-model EleutherAI/pythia-6.9b --epochs 3 --batch-size 4 \\
        --ethics-weight 0.5 --output-dir models/kala-6.9b
    python scripts/train_kala_model.py --base-model EleutherAI/pythia-6.9b --output-dir models/kala-6.9b --test

Run from a checkout (the repository root is put on the path); every `kala train` option works too
(`python scripts/train_kala_model.py --help`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kala_engine.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
