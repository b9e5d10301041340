"""The Five Laws, loaded from ``resources/constitution.toml`` (the only place a law is named)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .resources import resource_path

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
