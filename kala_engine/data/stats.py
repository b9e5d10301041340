"""Statistics of a generated or imported dataset: counts by kind x law, splits, lengths and the
generator's thresholds (``kala data generate`` / ``kala data stats`` and the Data page)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from kala_engine.constitution import NUM_LAWS, Constitution, load_constitution
from kala_engine.data.schema import BENIGN_KINDS, HARMFUL_KINDS, KINDS, violated_laws

CHAR_BINS = (0, 100, 200, 400, 800, 1600, 3200)
TOKEN_BINS = (0, 32, 64, 128, 256, 512, 1024)
THRESHOLDS = {"unique_prompt_share": 0.90, "law_share_min": 0.15, "benign_share": 0.40}


def _prompt(record: dict) -> str:
    for p in record["parts"]:
        if p["role"] == "user":
            return " ".join(p["text"].casefold().split())
    return ""


def summarize(records: Iterable[dict[str, Any]], tokenizer: Any = None) -> dict[str, Any]:
    """Statistics as data for the CLI and the app.

    Counts by kind x primary law, split sizes and families, a length histogram (tokens when a
    tokenizer is given, else characters), the unique-prompt share, each law's share of the
    harmful kinds (by primary law, and by labels violated), the benign share, the share of
    records whose targets are not all 1.0, and the issue's thresholds with pass/fail.
    One pass over ``records`` (see :class:`Summary`, which a stream can feed record by record).
    """
    summary = Summary(tokenizer)
    for r in records:
        summary.add(r)
    return summary.result()


class Summary:
    """:func:`summarize` one record at a time, in memory that does not grow with the records'
    text (``kala data generate`` summarises what it streams to disk)."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.n = 0
        self.by_kind: Counter = Counter()
        self.table = {k: [0] * (NUM_LAWS + 1) for k in KINDS}  # last column: no primary law
        self.n_harmful = 0
        self.law_primary = [0] * NUM_LAWS
        self.law_violated = [0] * NUM_LAWS
        self.prompts: set[bytes] = set()
        self.not_all_ones = 0
        self.splits: Counter = Counter()
        self.fams: dict[str, set[str]] = {"train": set(), "validation": set()}
        self.unit, self.edges = ("tokens", TOKEN_BINS) if tokenizer is not None else ("chars", CHAR_BINS)
        self.bins = [0] * len(self.edges)
        self.length_sum = 0
        self.length_max = 0

    def add(self, r: dict[str, Any]) -> None:
        self.n += 1
        self.by_kind[r["kind"]] += 1
        col = r["primary_law"] if r["primary_law"] is not None else NUM_LAWS
        self.table.setdefault(r["kind"], [0] * (NUM_LAWS + 1))[col] += 1
        if r["kind"] in HARMFUL_KINDS:
            self.n_harmful += 1
            violated = violated_laws(r["labels"])
            for k in range(NUM_LAWS):
                self.law_primary[k] += r["primary_law"] == k
                self.law_violated[k] += k in violated
        self.prompts.add(hashlib.blake2b(_prompt(r).encode("utf-8", "surrogatepass"), digest_size=16).digest())
        self.not_all_ones += any(x < 1.0 for p in r["parts"] for x in p["labels"])
        self.splits[r["split"]] += 1
        if r["split"] in self.fams:
            self.fams[r["split"]].add(r["family"])
        if self.tokenizer is not None:
            from kala_engine.data.collate import render_record

            length = len(self.tokenizer(render_record(r), add_special_tokens=False)["input_ids"])
        else:
            length = sum(len(p["text"]) for p in r["parts"])
        self.length_sum += length
        self.length_max = max(self.length_max, length)
        for i in range(len(self.edges) - 1, -1, -1):
            if length >= self.edges[i]:
                self.bins[i] += 1
                break

    def result(self) -> dict[str, Any]:
        n, nh = self.n, max(self.n_harmful, 1)
        law_share = [c / nh for c in self.law_primary]
        law_violated_share = [c / nh for c in self.law_violated]
        benign_share = sum(self.by_kind[k] for k in BENIGN_KINDS) / max(n, 1)
        unique_prompt_share = len(self.prompts) / max(n, 1)
        fams = self.fams
        checks = {
            "unique_prompt_share": unique_prompt_share >= THRESHOLDS["unique_prompt_share"],
            "each_law_share": bool(self.n_harmful) and min(law_share) >= THRESHOLDS["law_share_min"],
            "benign_share": benign_share >= THRESHOLDS["benign_share"],
            "families_disjoint": not fams["train"] & fams["validation"],
        }
        edges = self.edges
        histogram = [{"from": lo, "to": edges[i + 1] if i + 1 < len(edges) else None, "count": self.bins[i]}
                     for i, lo in enumerate(edges)]
        return {
            "records": n,
            "by_kind": {k: self.by_kind.get(k, 0) for k in KINDS},
            "kind_by_law": {k: list(v) for k, v in self.table.items()},
            "law_share_of_harmful": law_share,
            "law_violated_share_of_harmful": law_violated_share,
            "benign_share": benign_share,
            "unique_prompt_share": unique_prompt_share,
            "targets_not_all_one_share": self.not_all_ones / max(n, 1),
            "splits": {s: self.splits.get(s, 0) for s in ("train", "validation", "test")},
            "families": {s: len(v) for s, v in fams.items()},
            "validation_family_share": len(fams["validation"]) / max(len(fams["train"]) + len(fams["validation"]), 1),
            "length_unit": self.unit,
            "length_histogram": histogram,
            "length_mean": self.length_sum / max(n, 1),
            "length_max": self.length_max,
            "thresholds": dict(THRESHOLDS),
            "checks": checks,
        }


def format_summary(summary: dict[str, Any], constitution: Constitution | None = None) -> str:
    """The summary as a printable table (kind x law, shares, length histogram, checks)."""
    c = constitution or load_constitution()
    heads = [f"L{k}" for k in range(NUM_LAWS)] + ["none", "total"]
    w = max(len(k) for k in KINDS) + 2
    lines = [f"{'kind':<{w}}" + "".join(f"{h:>7}" for h in heads)]
    for kind, row in summary["kind_by_law"].items():
        lines.append(f"{kind:<{w}}" + "".join(f"{x:>7}" for x in row) + f"{sum(row):>7}")
    cols = [sum(row[i] for row in summary["kind_by_law"].values()) for i in range(NUM_LAWS + 1)]
    lines.append(f"{'total':<{w}}" + "".join(f"{x:>7}" for x in cols) + f"{sum(cols):>7}")
    lines.append("")
    lines.append("law share of the harmful kinds (primary law / labels violated):")
    for k in range(NUM_LAWS):
        lines.append(
            f"  {c[k].title:<28} {summary['law_share_of_harmful'][k]:6.1%}  {summary['law_violated_share_of_harmful'][k]:6.1%}"
        )
    ok = summary["checks"]
    t = summary["thresholds"]

    def mark(flag: bool) -> str:
        return "ok" if flag else "FAIL"

    lines += [
        "",
        f"records {summary['records']}  train {summary['splits']['train']}  validation {summary['splits']['validation']}"
        f"  test {summary['splits'].get('test', 0)}"
        f"  (families {summary['families']['train']} / {summary['families']['validation']},"
        f" {summary['validation_family_share']:.1%} held out, disjoint: {mark(ok['families_disjoint'])})",
        f"unique prompts       {summary['unique_prompt_share']:6.1%}  (>= {t['unique_prompt_share']:.0%}: {mark(ok['unique_prompt_share'])})",
        f"min law share        {min(summary['law_share_of_harmful'] or [0]):6.1%}  (>= {t['law_share_min']:.0%}: {mark(ok['each_law_share'])})",
        f"benign + alarming    {summary['benign_share']:6.1%}  (>= {t['benign_share']:.0%}: {mark(ok['benign_share'])})",
        f"targets not all 1.0  {summary['targets_not_all_one_share']:6.1%}",
        "",
        f"length ({summary['length_unit']}, mean {summary['length_mean']:.0f}, max {summary['length_max']}):",
    ]
    top = max((b["count"] for b in summary["length_histogram"]), default=0) or 1
    for b in summary["length_histogram"]:
        rng_txt = f"{b['from']}-{b['to'] - 1}" if b["to"] is not None else f"{b['from']}+"
        lines.append(f"  {rng_txt:>10} {b['count']:>7} " + "#" * round(40 * b["count"] / top))
    return "\n".join(lines)

