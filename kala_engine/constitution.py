"""The Five Laws: their metadata, the violation rule, and which thresholds are in force.

The one owner of every rule about laws (no torch here; the app imports it):

* **Metadata** - names, titles, priority weights and default thresholds, read from
  ``resources/constitution.toml`` (the only place a law is named); :data:`NUM_LAWS`.
* **The violation rule** - law ``k`` is violated when its score is under its threshold
  (:func:`is_violated`). A threshold of 0 therefore never fires; a threshold of 1.0 means "never
  satisfied" and fires at once (a float32 sigmoid can round to exactly 1.0, so 1.0 is treated
  as the ceiling, not compared). The hierarchy is the law index order: a stop or a flag names
  the highest-priority violated law (:func:`first_violated`), not the lowest score.
* **Threshold resolution** - an explicit threshold (one number or five) wins; else the model's
  calibrated ``law_thresholds`` (saved in its ``config.json`` by training); else the
  constitution's default for each law (:func:`resolve_thresholds`, :func:`thresholds_in_force`).
  A model may carry two calibrated sets: ``law_thresholds`` flag a *prompt* (the assessment at
  its last token) and ``reply_thresholds`` stop a *reply* (a reply token's scores). Calibration
  sets them apart (issue 16): a refusal names the harm it refuses, so its tokens dip lower than a
  benign prompt's assessment, and one shared number either cut refusals short or flagged fewer
  harmful prompts. ``reply=True`` asks for the reply set (falling back to ``law_thresholds``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from kala_engine.resources import resource_path

NUM_LAWS = 5


class ConstitutionError(ValueError):
    """The constitution file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Law:
    index: int
    key: str
    name: str
    short: str
    text: str
    weight: float
    threshold: float

    @property
    def title(self) -> str:
        """'Law 1 Individual Safety' - the form used in stop reasons and the UI."""
        return f"Law {self.index} {self.name}"


@dataclass(frozen=True)
class Constitution:
    title: str
    laws: tuple[Law, ...]
    path: Path

    @property
    def names(self) -> list[str]:
        return [law.name for law in self.laws]

    @property
    def weights(self) -> list[float]:
        return [law.weight for law in self.laws]

    @property
    def thresholds(self) -> list[float]:
        return [law.threshold for law in self.laws]

    def __len__(self) -> int:
        return len(self.laws)

    def __getitem__(self, i: int) -> Law:
        return self.laws[i]

    def __iter__(self):
        return iter(self.laws)


def _field(path: Path, where: str, table: dict, name: str, typ: type | tuple[type, ...]):
    if name not in table:
        raise ConstitutionError(f"{path}: {where}: missing field '{name}'")
    value = table[name]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or isinstance(value, bool):
        tname = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ConstitutionError(f"{path}: {where}: field '{name}' must be a {tname}, got {value!r}")
    return value


def parse_constitution(path: str | Path) -> Constitution:
    """Read and check a constitution file. Raises ConstitutionError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"{path}: constitution file not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConstitutionError(f"{path}: not valid TOML: {e}") from None
    raw = data.get("laws")
    if not isinstance(raw, list):
        raise ConstitutionError(f"{path}: field 'laws' must be a list of [[laws]] tables")
    if len(raw) != NUM_LAWS:
        raise ConstitutionError(f"{path}: field 'laws' must hold exactly {NUM_LAWS} laws, found {len(raw)}")
    laws: list[Law] = []
    for pos, t in enumerate(raw):
        where = f"laws[{pos}]"
        index = _field(path, where, t, "index", int)
        if index != pos:
            raise ConstitutionError(
                f"{path}: {where}: field 'index' is {index}; laws must be listed in hierarchy order 0..4"
            )
        name = _field(path, where, t, "name", str).strip()
        key = _field(path, where, t, "key", str).strip()
        text = _field(path, where, t, "text", str).strip()
        if not name or not key or not text:
            raise ConstitutionError(f"{path}: {where}: fields 'name', 'key' and 'text' must not be empty")
        weight = _field(path, where, t, "weight", float)
        if not 0.0 < weight <= 10.0:
            raise ConstitutionError(f"{path}: {where}: field 'weight' must be in (0, 10], got {weight}")
        threshold = _field(path, where, t, "threshold", float)
        if not 0.0 <= threshold <= 1.0:
            raise ConstitutionError(f"{path}: {where}: field 'threshold' must be in [0, 1], got {threshold}")
        short = str(t.get("short", name))
        laws.append(Law(index, key, name, short, text, weight, threshold))
    for attr in ("name", "key"):
        seen: dict[str, int] = {}
        for law in laws:
            v = getattr(law, attr).casefold()
            if v in seen:
                raise ConstitutionError(
                    f"{path}: laws[{law.index}]: duplicate {attr} '{getattr(law, attr)}' (also laws[{seen[v]}])"
                )
            seen[v] = law.index
    return Constitution(title=str(data.get("title", "Constitution")), laws=tuple(laws), path=path)


@lru_cache(maxsize=8)
def _cached(path: str) -> Constitution:
    return parse_constitution(path)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """The shipped constitution, or the one at ``path``."""
    return _cached(str(path if path is not None else resource_path("constitution.toml")))


@lru_cache(maxsize=1)
def law_titles() -> tuple[str, ...]:
    """('Law 0 Civilizational', ...) from the shipped constitution, in hierarchy order."""
    return tuple(law.title for law in load_constitution().laws)


# ----------------------------------------------------------------------------- the violation rule


def is_violated(score, threshold):
    """The stop/flag rule for one law: score under threshold (a threshold of 1.0 always fires).

    Works on floats and, elementwise, on tensors (``scores < thr | thr >= 1``), so the batched
    stopping criteria use this very function.
    """
    return (score < threshold) | (threshold >= 1.0)


def violated_laws(scores: Sequence[float], thresholds: Sequence[float]) -> list[int]:
    """Indices of the violated laws in hierarchy order (the first one is the one to name)."""
    return [k for k, (s, t) in enumerate(zip(scores, thresholds, strict=True)) if is_violated(s, t)]


def first_violated(scores: Sequence[float], thresholds: Sequence[float]) -> int | None:
    """The highest-priority violated law, or None."""
    bad = violated_laws(scores, thresholds)
    return bad[0] if bad else None


def first_layer_under(layer_scores: Sequence[float], threshold: float) -> int | None:
    """The decision path's first layer (0-based, input side first) whose monitor score of one
    law is under ``threshold``; None if no layer's is."""
    return next((i for i, s in enumerate(layer_scores) if s < threshold), None)


# ----------------------------------------------------------------------------- thresholds in force


def resolve_thresholds(explicit: float | Sequence[float] | None = None,
                       calibrated: Sequence[float | None] | None = None) -> tuple[float, ...]:
    """The five per-law thresholds in force.

    ``explicit`` (one number for every law, or five) wins; None means ``calibrated`` (a model's
    ``law_thresholds``, see :func:`model_thresholds`) where it gives a value, else the
    constitution's threshold of that law. Raises ValueError for a count other than 1 or 5 and
    for a value outside [0, 1].
    """
    if explicit is None:
        constitution = load_constitution().thresholds
        given = list(calibrated) if calibrated is not None else [None] * NUM_LAWS
        if len(given) != NUM_LAWS:
            raise ValueError(f"calibrated thresholds must be {NUM_LAWS} values (or null), got {given!r}")
        values = [float(g if g is not None else c) for g, c in zip(given, constitution, strict=True)]
    elif isinstance(explicit, (int, float)) and not isinstance(explicit, bool):
        values = [float(explicit)] * NUM_LAWS
    else:
        try:
            values = [float(t) for t in explicit]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"a threshold must be a number in [0, 1] or {NUM_LAWS} of them, got {explicit!r}") from None
        if len(values) == 1:
            values = values * NUM_LAWS
        if len(values) != NUM_LAWS:
            raise ValueError(f"give one threshold or {NUM_LAWS} (one per law, Law 0 first), got {len(values)}")
    for t in values:
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise ValueError(f"a threshold must be in [0, 1] (0 never stops, 1 stops at once), got {t}")
    return tuple(values)


def model_thresholds(model, *, reply: bool = False) -> list[float | None] | None:
    """The per-law thresholds calibrated for a loaded ``model`` at the end of its training, if
    any: the prompt-flag set, or with ``reply`` the reply-stop set (``reply_thresholds``, else the
    prompt set)."""
    cfg = getattr(model, "config", None)
    t = getattr(cfg, "reply_thresholds", None) if reply else None
    if t is None:
        t = getattr(cfg, "law_thresholds", None)
    return list(t) if t is not None else None


def _valid_saved(given) -> list[float | None] | None:
    if not isinstance(given, list) or len(given) != NUM_LAWS:
        return None
    ok = [t is None or (isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= float(t) <= 1.0)
          for t in given]
    return [None if t is None or not good else float(t) for t, good in zip(given, ok, strict=True)]


def saved_thresholds(model_dir: str | Path | None, *, reply: bool = False) -> list[float | None] | None:
    """The calibrated ``law_thresholds`` (with ``reply``: ``reply_thresholds``, else
    ``law_thresholds``) of a saved model folder (its ``config.json``), read without loading the
    model; None when the folder has none or they cannot be read (an uncalibrated model, a damaged
    file): the constitution's thresholds then apply."""
    if not model_dir:
        return None
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    got = _valid_saved(cfg.get("reply_thresholds")) if reply else None
    return got if got is not None else _valid_saved(cfg.get("law_thresholds"))


def thresholds_in_force(explicit: float | Sequence[float] | None, model_dir: str | Path | None, *,
                        reply: bool = False) -> tuple[float, ...]:
    """Per law, the threshold a prompt (with ``reply``: a reply token) of the model saved in
    ``model_dir`` is judged by - the rule of :func:`resolve_thresholds`, for a model not loaded
    yet (the app asks this)."""
    return resolve_thresholds(explicit, saved_thresholds(model_dir, reply=reply) if explicit is None else None)
