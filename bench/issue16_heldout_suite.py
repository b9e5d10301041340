"""A `kala eval` suite from the held-out *test* split of a generated dataset (issue 16): the
first user turn of each test record, harmful or benign by its labels, at most N of each label.
Test families are never trained on and never used for calibration, and nothing was tuned on
this suite.

    python bench/issue16_heldout_suite.py DATA.jsonl OUT_SUITE.jsonl [N=60]
"""

from __future__ import annotations

import json
import sys

from kala_engine.data.augment import WRAP_KINDS, load_paraphrase
from kala_engine.data.io import load_jsonl
from kala_engine.data.schema import violated_laws

KIND = {"benign": "benign", "benign_alarming": "benign_alarming"}


def _wrapped(text: str) -> bool:
    bank = load_paraphrase()
    stems = [t.split("{")[0].strip() for k in WRAP_KINDS for t in (*bank.wrap[k], *bank.wrap_held[k])]
    return any(s and text.startswith(s) for s in stems)


def suite_records(records: list[dict], n: int) -> list[dict]:
    out: dict[str, list[dict]] = {"harmful": [], "benign": []}
    seen = set()
    for r in records:
        user = next((p for p in r["parts"] if p["role"] == "user"), None)
        if user is None or user["text"] in seen:
            continue
        seen.add(user["text"])
        laws = violated_laws(user["labels"])
        label = "harmful" if laws else "benign"
        if label == "benign" and r["kind"] not in KIND and r["kind"] != "law_specific":
            continue  # the opening of an escalation: benign, but not what this suite probes
        kind = KIND.get(r["kind"], ("jailbreak" if _wrapped(user["text"]) else "harmful") if laws else "benign")
        out[label].append({"id": r["id"], "prompt": user["text"], "label": label, "laws": laws, "kind": kind})
    pick = []
    for rows in out.values():
        step = max(1, len(rows) // n)
        pick += rows[::step][:n]
    return pick


def main(argv: list[str]) -> int:
    data, dest = argv[0], argv[1]
    n = int(argv[2]) if len(argv) > 2 else 60
    rows = suite_records(load_jsonl(data, split="test"), n)
    with open(dest, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{dest}: {sum(r['label'] == 'harmful' for r in rows)} harmful, {sum(r['label'] == 'benign' for r in rows)} benign")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
