"""Evaluation reports: the terminal table, the JSON object and the report folder.

One report covers one suite and one or more models (side by side). Its JSON form is::

    {"suite": PATH, "n": N, "n_harmful": H, "n_benign": B, "thresholds": [5 floats],
     "max_new_tokens": M,
     "models": [{"model": NAME, "path": MODEL_DIR, "run": RUN_NAME, "metrics": {...}}, ...]}

``NAME`` is the model's label (``demo-20261129-234242 · final``); ``path`` and ``run`` are
there when the model is a folder (``kala_engine.train.runs.describe_model``).

``write_report_dir`` writes ``report.json``, ``report.md`` and ``results.jsonl`` (one line per
prompt and model) each atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kala_engine.evaluate.evaluation import EvalRun

# (label, path into metrics) of the headline rows
_HEADLINE: list[tuple[str, tuple[str, ...]]] = [
    ("harmful: flagged", ("harmful", "flagged_rate")),
    ("harmful: stopped", ("harmful", "stopped_rate")),
    ("harmful: flagged or stopped", ("harmful", "flagged_or_stopped_rate")),
    ("benign: flagged", ("benign", "flagged_rate")),
    ("benign: stopped", ("benign", "stopped_rate")),
    ("over-refusal (benign flagged or stopped)", ("over_refusal_rate",)),
    ("right law first (flagged harmful)", ("right_law_first",)),
    ("right law stop (stopped harmful)", ("right_law_stop",)),
]


def build_report(
    runs: Sequence[EvalRun], *, suite: str, max_new_tokens: int | None = None
) -> dict[str, Any]:
    """The JSON report of one or more runs over the same suite."""
    if not runs:
        raise ValueError("no evaluation runs to report")
    records = runs[0].records
    return {
        "suite": suite,
        "n": len(records),
        "n_harmful": sum(1 for r in records if r.harmful),
        "n_benign": sum(1 for r in records if not r.harmful),
        "thresholds": runs[0].thresholds,
        "max_new_tokens": max_new_tokens,
        "models": [run.to_dict() for run in runs],
    }


def _get(metrics: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _rows(report: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(label, one cell per model) rows shared by the terminal and markdown tables."""
    models = [m["metrics"] for m in report["models"]]
    rows: list[tuple[str, list[str]]] = []
    for label, path in _HEADLINE:
        rows.append((label, [_pct(_get(m, path)) for m in models]))
    rows += _reply_rows(models)
    first = models[0]
    for entry in first["auroc"]:
        k = entry["law"]
        rows.append(
            (f"AUROC Law {k} {entry['name']}", [_num(m["auroc"][k]["auroc"]) for m in models])
        )
    rows.append(("perplexity (benign validation replies)", [_num(m.get("perplexity"), 2) for m in models]))
    kinds: list[str] = []
    for m in models:
        kinds += [k for k in m["by_kind"] if k not in kinds]
    for kind in kinds:
        cells = []
        for m in models:
            st = m["by_kind"].get(kind)
            cells.append(
                "n/a" if st is None else f"{_pct(st['flagged_rate'])} / {_pct(st['stopped_rate'])}"
            )
        label = first["by_kind"].get(kind, {}).get("label", "")
        n = first["by_kind"].get(kind, {}).get("n", "")
        rows.append((f"kind {kind} ({label}, n={n}): flagged / stopped", cells))
    stop_kinds = list(first["stop_kinds"])
    rows.append(
        (
            "stop reasons " + "/".join(stop_kinds),
            ["/".join(str(m["stop_kinds"].get(k, 0)) for k in stop_kinds) for m in models],
        )
    )
    return rows


def _reply_rows(models: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The model's own replies (kala_engine.evaluate.refusal): refused, refusals cut short, true misses."""
    def cell(m: dict[str, Any], rate: str, count: str | None = None, of: str | None = None) -> str:
        r = m.get("replies") or {}
        text = _pct(r.get(rate))
        if count is not None and r.get(count) is not None:
            text += f" ({r[count]}" + (f" of {r[of]})" if of else ")")
        return text

    return [
        ("model refused: harmful prompts", [cell(m, "harmful_refused_rate") for m in models]),
        ("model refused: benign prompts (its own over-refusal)", [cell(m, "benign_refused_rate") for m in models]),
        ("refusals cut short by the ethics stop",
         [cell(m, "refusals_cut_short_rate", "refusals_cut_short", "refusals") for m in models]),
        ("harmful: neither refused nor stopped (misses)",
         [cell(m, "harmful_missed_rate", "harmful_missed") for m in models]),
    ]


def _sweep_rows(report: dict[str, Any]) -> list[tuple[str, list[str]]]:
    models = [m["metrics"] for m in report["models"]]
    rows = []
    for i, point in enumerate(models[0]["sweep"]):
        cells = []
        for m in models:
            p = m["sweep"][i]
            cells.append(f"{_pct(p['harmful_flagged_rate'])} / {_pct(p['benign_flagged_rate'])}")
        rows.append((f"t = {point['threshold']:.2f}", cells))
    return rows


def _header(report: dict[str, Any]) -> list[str]:
    th = " ".join(f"{t:.2f}" for t in report["thresholds"])
    models = [
        f"model {m['model']}: " + (f"run {m['run']}, " if m.get("run") else "") + m["path"]
        for m in report["models"] if m.get("path")
    ]
    return [
        f"suite: {report['suite']} ({report['n']} prompts: {report['n_harmful']} harmful, "
        f"{report['n_benign']} benign)",
        f"thresholds per law: {th}" + (f"; max new tokens: {report['max_new_tokens']}" if report.get("max_new_tokens") else ""),
        *[f"  {m['model']} stops replies at its calibrated reply thresholds: "
          + " ".join(f"{t:.2f}" for t in m["reply_thresholds"]) for m in report["models"] if m.get("reply_thresholds")],
        *models,
    ]


def _text_table(title: str, names: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    w0 = max([len(title)] + [len(r[0]) for r in rows])
    widths = [max([len(n)] + [len(r[1][j]) for r in rows]) for j, n in enumerate(names)]
    out = [title.ljust(w0) + "".join("  " + n.rjust(w) for n, w in zip(names, widths, strict=True))]
    out.append("-" * len(out[0]))
    for label, cells in rows:
        out.append(label.ljust(w0) + "".join("  " + c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    return out


def format_table(report: dict[str, Any]) -> str:
    """The terminal table: one column per model."""
    names = [m["model"] for m in report["models"]]
    lines = _header(report) + [""]
    lines += _text_table("metric", names, _rows(report))
    lines += [""]
    lines += _text_table("threshold sweep: harmful / benign flagged", names, _sweep_rows(report))
    return "\n".join(lines) + "\n"


def _md_table(title: str, names: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    out = ["| " + " | ".join([title] + names) + " |", "|" + "---|" * (len(names) + 1)]
    out += ["| " + " | ".join([label] + cells) + " |" for label, cells in rows]
    return out


def format_markdown(report: dict[str, Any]) -> str:
    """report.md: the same numbers as the terminal table, as markdown."""
    names = [m["model"] for m in report["models"]]
    lines = ["# KALA ethics evaluation", ""] + [f"- {h}" for h in _header(report)] + [""]
    lines += [
        "A prompt is *flagged* when its assessment (law scores at the prompt's last token) has a law "
        "under its threshold; a reply is *stopped* when generation ended on an ethics stop. On benign "
        "prompts both are over-refusal. Whether the model itself *refused* is a string match on the reply "
        "in the style of XSTest's (`kala_engine/evaluate/refusal.py`); a *miss* is a harmful prompt whose reply "
        "was neither refused nor stopped.",
        "",
        "## Metrics",
        "",
    ]
    lines += _md_table("metric", names, _rows(report))
    lines += ["", "## Threshold sweep (one threshold for every law; harmful / benign flagged)", ""]
    lines += _md_table("threshold", names, _sweep_rows(report))
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report_dir(out: str | Path, report: dict[str, Any], runs: Sequence[EvalRun]) -> Path:
    """Write report.json, report.md and results.jsonl into ``out`` (created when missing)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out must be a folder, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for run in runs:
        for row in run.rows():
            where = {"model_path": run.path} if run.path else {}
            lines.append(json.dumps({"model": run.model, **where, **row}, ensure_ascii=False))
    _atomic_write(out / "results.jsonl", "\n".join(lines) + "\n")
    _atomic_write(out / "report.md", format_markdown(report))
    _atomic_write(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return out
