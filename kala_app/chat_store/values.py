"""Encoding the stored values (per-layer scores as float32 blobs, JSON) and checking what is read back:
a damaged value is reported, never trusted."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

from kala_engine.constitution import NUM_LAWS

from .schema import DEFAULT_SETTINGS


def pack_layers(layers: Sequence[Sequence[float]] | None) -> bytes | None:
    if layers is None:
        return None
    flat = [float(v) for row in layers for v in row]
    return struct.pack(f"<{len(flat)}f", *flat)


def unpack_layers(blob: bytes | None, n_laws: int = 5) -> tuple[tuple[float, ...], ...] | None:
    if blob is None:
        return None
    if not isinstance(blob, bytes) or len(blob) % (4 * n_laws):
        raise ValueError(f"per-layer scores are not float32 rows of {n_laws}")
    flat = struct.unpack(f"<{len(blob) // 4}f", blob)
    return tuple(tuple(flat[i:i + n_laws]) for i in range(0, len(flat), n_laws))


def dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, ensure_ascii=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def dumps_thresholds(thresholds: Sequence[float] | None) -> str | None:
    return None if thresholds is None else json.dumps([float(t) for t in thresholds])


def _check_thresholds(v: Any) -> bool:
    return isinstance(v, list) and len(v) == NUM_LAWS and all(is_num(t) and 0.0 <= t <= 1.0 for t in v)


# ---------------------------------------------------------------- checking what was read


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_law(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < NUM_LAWS


def text_of(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return "" if v is None else str(v)


def parse_json(raw: Any) -> Any:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if not isinstance(raw, str):
        raise ValueError(f"a {type(raw).__name__} where JSON text belongs")
    return json.loads(raw)


#: Per-chat settings the store knows, with the check each value must pass.
_SETTING_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "threshold": (lambda v: v is None or (is_num(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
    "temperature": (lambda v: is_num(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (lambda v: is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "max_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096,
                   "a whole number in [1, 4096]"),
    "seed": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "null or a whole number"),
}


def clean_settings(raw: Any) -> tuple[dict[str, Any], str]:
    """(settings, problem): the stored settings merged over the defaults; a bad value falls back
    to its default and ``problem`` says what was wrong ("" when nothing was)."""
    out = dict(DEFAULT_SETTINGS)
    try:
        d = parse_json(raw)
    except ValueError as e:
        return out, f"settings are not JSON ({str(e)[:80]})"
    if not isinstance(d, dict):
        return out, f"settings are a JSON {type(d).__name__}, not an object"
    problems = []
    for k, v in d.items():
        check = _SETTING_CHECKS.get(k)
        if check is None:
            problems.append(f"unknown setting {k!r}")
        elif not check[0](v):
            problems.append(f"{k} must be {check[1]}, got {json.dumps(v)[:40]}")
        else:
            out[k] = v
    return out, "; ".join(problems)


def _scores(v: Any) -> bool:
    return isinstance(v, list) and len(v) == NUM_LAWS and all(is_num(x) for x in v)


def _check_assessment(d: Any) -> bool:
    return isinstance(d, dict) and (d.get("law_scores") is None or _scores(d["law_scores"])) and (
        d.get("layer_scores") is None
        or (isinstance(d["layer_scores"], list) and all(_scores(r) for r in d["layer_scores"])))


def _check_stop(d: Any) -> bool:
    return isinstance(d, dict) and all(
        d.get(k) is None or isinstance(d[k], str) for k in ("kind", "message")) and (
        d.get("law") is None or _is_law(d["law"])) and all(
        d.get(k) is None or is_num(d[k]) for k in ("score", "threshold"))


def _check_explanation(d: Any) -> bool:
    if not isinstance(d, dict) or not (d.get("text") is None or isinstance(d["text"], str)):
        return False
    violated = d.get("violated", [])
    return isinstance(violated, list) and all(
        isinstance(v, dict) and _is_law(v.get("law")) and (v.get("score") is None or is_num(v["score"]))
        and (v.get("first_layer") is None or (isinstance(v["first_layer"], int)
                                              and not isinstance(v["first_layer"], bool)))
        for v in violated)


JSON_CHECKS = {"assessment": _check_assessment, "stop": _check_stop, "explanation": _check_explanation,
                "thresholds": _check_thresholds}


# ---------------------------------------------------------------- looking at a file before using it


def text_factory(b: bytes) -> str:
    """TEXT as str; bytes that are not UTF-8 (a damaged file) are shown with U+FFFD, never raise."""
    return b.decode("utf-8", errors="replace")


