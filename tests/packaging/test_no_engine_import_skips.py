"""An engine import error fails the suite: no test turns it into a skip (issue 14, item 7)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIPS = re.compile(r"importorskip\(\s*[\"']kala_engine|except (ModuleNotFound|Import)Error:\s*\n\s*pytest\.skip")


def test_no_test_skips_when_the_engine_does_not_import():
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py")
             if p.name != Path(__file__).name and SKIPS.search(p.read_text(encoding="utf-8"))]
    assert found == []
