"""``kala-studio --self-test`` trains one step through the worker and generates one token, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_self_test_exits_zero_and_says_what_it_did(tmp_path):
    env = dict(os.environ, KALA_STUDIO_HOME=str(tmp_path), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-m", "kala_app.main", "--self-test"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "chat history: " in out and "read-write" in out and "runs: " in out  # the real stores were opened
    assert "training step 1/" in out
    assert "generated token 0" in out
    assert out.rstrip().endswith("OK")
