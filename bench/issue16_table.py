"""Issue 16's before/after table from bench/issue16_seeds.sh outputs: mean and spread over seeds.

    python bench/issue16_table.py BEFORE_DIR AFTER_DIR [--md] [--eval eval2]

Each DIR holds sSEED/{demo.time, eval/report.json, demo/run/metrics.jsonl, ...}; the figures are
the issue's "What it must show" plus the demo's wall and CPU time. Spread = min..max over seeds.
``--eval eval2`` reads sSEED/eval2/report.json instead: the second, blind suite
(resources/eval2/second_suite.jsonl), which has no perplexity.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def _metrics(report: dict) -> dict:
    """The metrics dict of the (single) model in a kala eval report.json."""
    stack = [report]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            if "harmful" in d and "replies" in d:
                return d
            stack.extend(d.values())
        elif isinstance(d, list):
            stack.extend(d)
    raise ValueError("no metrics in report")


def _time(path: Path) -> dict:
    text = path.read_text()

    def grab(label: str) -> float:
        return float(re.search(re.escape(label) + r":\s*([\d.:]+)", text).group(1).split()[0])

    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    secs = 0.0
    for part in wall.split(":"):
        secs = secs * 60 + float(part)
    return {"wall_s": secs, "cpu_s": grab("User time (seconds)") + grab("System time (seconds)"),
            "rss_mb": grab("Maximum resident set size (kbytes)") / 1024}


def _last_validation(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    val = [r for r in rows if r.get("split") == "validation"]
    return val[-1] if val else {}


def figures(seed_dir: Path, eval_dir: str = "eval") -> dict:
    rep_path = seed_dir / eval_dir / "report.json"
    m = _metrics(json.loads((rep_path if rep_path.exists() else seed_dir / "report.json").read_text()))
    rep, kinds = m["replies"], m["by_kind"]
    t = _time(seed_dir / "demo.time")
    run = seed_dir / "demo" / "run"
    val = _last_validation(run if run.exists() else seed_dir)
    pct = 100.0
    return {
        "harmful flagged or stopped %": pct * m["harmful"]["flagged_or_stopped_rate"],
        "  plain harmful %": pct * kinds["harmful"]["flagged_or_stopped_rate"],
        "  jailbreak-wrapped %": pct * kinds["jailbreak"]["flagged_or_stopped_rate"],
        "harmful flagged (prompt alone) %": pct * m["harmful"]["flagged_rate"],
        "Law 0 AUROC": m["auroc"][0]["auroc"],
        "mean AUROC (5 laws)": statistics.mean(a["auroc"] for a in m["auroc"]),
        "over-refusal (benign flagged or stopped) %": pct * m["over_refusal_rate"],
        "  benign-but-alarming %": pct * kinds["benign_alarming"]["flagged_or_stopped_rate"],
        "refusals cut short by the stop %": pct * (rep["refusals_cut_short_rate"] or 0.0),
        "  refusals cut short (count)": rep["refusals_cut_short"],
        "  refusals (count)": rep["refusals"],
        "model refused harmful %": pct * rep["harmful_refused_rate"],
        "  model refused jailbreak %": pct * rep["by_kind"]["jailbreak"]["refused_rate"],
        "model refused benign %": pct * rep["benign_refused_rate"],
        "true misses (harmful, neither refused nor stopped) %": pct * rep["harmful_missed_rate"],
        "right law first %": pct * (m["right_law_first"] or 0.0),
        "benign validation-reply perplexity": m["perplexity"],
        "validation LM loss (end)": val.get("lm_loss"),
        "demo wall s (shared machine)": t["wall_s"],
        "demo CPU s (user+sys)": t["cpu_s"],
        "demo max RSS MB": t["rss_mb"],
    }


def summary(root: Path, eval_dir: str = "eval") -> tuple[dict, list[str]]:
    seeds = sorted(p for p in root.glob("s*") if (p / eval_dir / "report.json").exists() or (p / "report.json").exists())
    per = [figures(s, eval_dir) for s in seeds]
    out = {}
    for key in per[0]:
        vals = [f[key] for f in per if f[key] is not None]
        out[key] = (statistics.mean(vals), min(vals), max(vals)) if vals else None
    return out, [s.name for s in seeds]


def _fmt(v) -> str:
    if v is None:
        return "-"
    mean, lo, hi = v
    digits = 3 if abs(mean) < 2 else (0 if abs(mean) >= 1000 else 1)
    return f"{mean:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def main(argv: list[str]) -> int:
    eval_dir = "eval"  # the folder under each seed with the report to read (--eval)
    if "--eval" in argv:
        i = argv.index("--eval")
        eval_dir = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    dirs = [Path(a) for a in argv if not a.startswith("--")]
    sums = [summary(d, eval_dir) for d in dirs]
    names = " | ".join(f"{d.name} ({', '.join(s)})" for d, (_, s) in zip(dirs, sums, strict=True))
    print(f"| figure: mean (min-max over seeds) | {names} |")
    print("|---" * (len(dirs) + 1) + "|")
    for key in sums[0][0]:
        print(f"| {key.strip()} | " + " | ".join(_fmt(s[0].get(key)) for s in sums) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
