"""The CLI's error boundary: checks that run before any work, and one line for every expected failure.

Two halves:

* **checks** (``check_*``) look at what the user pointed at - an output path, a device, a model or
  tokenizer folder, a text argument - *before* a command starts working, and raise
  :class:`CLIError` with one line that names the thing and the fix;
* :func:`expected_error` sorts an exception that got through anyway: the failures a user can act on
  (a file missing or damaged, a full disk, no permission, out of memory) become one line, anything
  else is a bug - :func:`bug_report` is what ``kala`` prints under its traceback.

Nothing here loads a model: the checks read ``config.json``, ``tokenizer.json`` and the safetensors
headers only, so they take milliseconds. (The loading policy - remote code, ``auto_map``, which
weight formats are read - lives with the loaders.)
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """An error to print as it is, exit code 2."""

#: Where a bug gets reported (printed under the traceback of an unexpected error).
BUG_REPORT = (
    "this is a bug in KALA Studio, not a problem with your input: please report it to the KALA Studio "
    "issue tracker with the command line, `kala --version` and the traceback above"
)

#: config.json fields every GPT-NeoX / KALA model reads as sizes: positive integers.
_INT_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
               "max_position_embeddings")
#: fields read as positive numbers
_POSITIVE_FIELDS = ("layer_norm_eps", "rotary_emb_base", "initializer_range")
_BOOL_FIELDS = ("use_parallel_residual", "tie_word_embeddings")


def _error(message: str) -> Exception:
    return CLIError(message)


# ------------------------------------------------------------------------------ text


def check_text(value: str | None, flag: str) -> str | None:
    """``value`` unchanged, or CLIError when it is not valid UTF-8.

    Python hands undecodable argv bytes over as lone surrogates (``'\\udcff'``); a tokenizer or a
    terminal cannot take those, so the flag is refused with where the bad byte is.
    """
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02X}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"character U+{ord(bad):04X}"
        raise _error(
            f"{flag} is not valid UTF-8 text ({byte} at position {e.start}); set the terminal to UTF-8 "
            f"(e.g. LANG=C.UTF-8) or pass the text again"
        ) from None
    return value


def decode_line(raw: bytes) -> tuple[str, bool]:
    """One input line as text; invalid UTF-8 bytes become U+FFFD. Returns (text, was_valid)."""
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


# ------------------------------------------------------------------------------ paths


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_out_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output *file* path: not a folder, in an existing, writable folder."""
    p = Path(path)
    if p.is_dir():
        raise _error(f"{flag} {p} is a folder; give a file name inside it (e.g. {p / 'data.jsonl'})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise _error(f"{flag} {p}: the folder {parent} does not exist; create it first")
    if not parent.is_dir():
        raise _error(f"{flag} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _error(f"{flag} {p}: no permission to write in {parent}; choose another folder")
    return p


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """An output *folder* (made later when missing): not a file, and creatable/writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise _error(f"{flag} {p} is a file; {flag} takes a folder (it is made when missing)")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise _error(f"{flag} {p}: {base} is a file, so the folder cannot be made there")
    if not os.access(base, os.W_OK | os.X_OK):
        raise _error(f"{flag} {p}: no permission to write in {base}; choose another folder")
    return p


def check_in_file(path: str | os.PathLike, flag: str, what: str = "file") -> Path:
    p = Path(path)
    if p.is_dir():
        raise _error(f"{flag} {p} is a folder; give the {what} inside it")
    if not p.is_file():
        raise _error(f"{flag} {p}: no such {what}")
    return p


# ------------------------------------------------------------------------------ device


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` when torch can use it here; CLIError naming what is missing otherwise."""
    import torch

    name = str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise _error(f"{flag} {name!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA support (torch " + torch.__version__ + ")"
                   if torch.version.cuda is None else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES?)")
            raise _error(f"{flag} {name}: {why}; use {flag} cpu, or see `kala doctor` for what to install")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise _error(f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise _error(f"{flag} {name}: Apple MPS is not available here; use {flag} cpu")
    elif dev.type != "cpu":
        raise _error(f"{flag} {name}: KALA runs on cpu, cuda or mps, not {dev.type}")
    return name


# ------------------------------------------------------------------------------ model folders


def _read_json(path: Path, what: str) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _error(f"{path}: not UTF-8 text (byte {e.start}); the {what} is damaged - copy or save it again") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _error(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); "
                     f"the {what} is damaged - copy or save it again") from None
    except RecursionError:
        raise _error(f"{path}: not valid JSON (nested too deeply); the {what} is damaged") from None


def check_config(path: Path, kinds: tuple[str, ...] | None = None) -> dict:
    """``config.json`` as a dict, its size fields type-checked; CLIError naming the field otherwise."""
    cfg = _read_json(path, "model's config")
    if not isinstance(cfg, dict):
        raise _error(f"{path}: expected a JSON object, got {type(cfg).__name__}; the model's config is damaged")
    mt = cfg.get("model_type")
    if kinds is not None and mt not in kinds:
        raise _error(f"{path.parent}: model_type is {mt!r}; this command takes a "
                     + " or ".join(repr(k) for k in kinds) + " model folder")
    check_config_fields(cfg, str(path), "the config was edited or damaged - save the model again")
    return cfg


def check_config_fields(cfg: dict, where: str, fix: str = "fix the value") -> None:
    """The size fields of a model config (or overrides) have the types a model can be built from."""
    for name in _INT_FIELDS:
        if name in cfg:
            v = cfg[name]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _error(f"{where}: field '{name}' must be a positive integer, got {v!r}; {fix}")
    for name in _POSITIVE_FIELDS:
        if name in cfg:
            v = cfg[name]
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise _error(f"{where}: field '{name}' must be a positive number, got {v!r}; {fix}")
    if "rotary_pct" in cfg:
        v = cfg["rotary_pct"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
            raise _error(f"{where}: field 'rotary_pct' must be a number in (0, 1], got {v!r}; {fix}")
    for name in _BOOL_FIELDS:
        if name in cfg and not isinstance(cfg[name], bool):
            raise _error(f"{where}: field '{name}' must be true or false, got {cfg[name]!r}; {fix}")
    h, n = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if isinstance(h, int) and isinstance(n, int) and n > 0 and h % n:
        raise _error(f"{where}: hidden_size {h} is not a multiple of num_attention_heads {n}; {fix}")


def check_safetensors(path: Path) -> None:
    """The safetensors header of ``path`` reads and covers the whole file (nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except SafetensorError as e:
        raise _error(f"{path}: damaged or not a safetensors file ({e}); save or download the model again") from None
    except OSError as e:
        raise _error(f"{path}: cannot read the weights ({e.strerror or e})") from None


def check_model_folder(path: str | os.PathLike, flag: str, kinds: tuple[str, ...] | None = None,
                       tokenizer: bool = False) -> Path:
    """A model folder a command is about to load: config.json sane, safetensors headers whole.

    A missing folder, or a file, is left to the loader (which names it). ``kinds``: the model
    types this command takes (None: leave that to the loader, which says more). ``tokenizer``: also check that ``tokenizer.json`` (if there) is readable JSON.
    """
    p = Path(path)
    if not p.is_dir():  # missing, or a file: the loaders say so in their own words
        return p
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise _error(f"{flag} {p}: not a model folder (no config.json)")
    check_config(cfg_file, kinds)
    weights = sorted(p.glob("*.safetensors"))
    pickled = sorted(p.glob("*.bin")) + sorted(p.glob("*.pt")) + sorted(p.glob("*.pth"))
    if not weights and pickled:  # the weights policy: safetensors only for models the user points at
        raise _error(
            f"{flag} {p}: the weights are only in {pickled[0].name} (a pickle); KALA reads safetensors only. "
            f"Convert them once where you trust the file's origin: "
            f"transformers' from_pretrained(DIR, trust_remote_code=False).save_pretrained(DIR, safe_serialization=True)"
        )
    for w in weights:
        check_safetensors(w)
    if tokenizer:
        check_tokenizer_folder(p, flag)
    return p


def check_tokenizer_folder(path: str | os.PathLike, flag: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise _error(f"{flag} {p}: no such folder")
    if not p.is_dir():
        raise _error(f"{flag} {p} is a file; pass the folder that holds tokenizer.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        f = p / name
        if f.is_file() and not isinstance(_read_json(f, "tokenizer"), dict):
            raise _error(f"{f}: expected a JSON object; the tokenizer is damaged - save it again")
    return p


# ------------------------------------------------------------------------------ classification


def expected_error(exc: BaseException) -> str | None:
    """One line for a failure the user can act on, or None when ``exc`` is a bug."""
    from kala_engine.jobs import JobError

    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        SafetensorError = ()  # noqa: N806
    try:
        import torch

        oom: tuple = (torch.OutOfMemoryError,)
    except (ImportError, AttributeError):  # pragma: no cover
        oom = ()
    if isinstance(exc, (CLIError, JobError)):
        return str(exc)
    if isinstance(exc, oom):
        return ("out of GPU memory; lower --batch-size or --max-length (or, for a large base, --mode nf4-lora) - "
                "`kala doctor` shows a plan that fits")
    if isinstance(exc, MemoryError):
        return ("out of memory; ask for less (a smaller --count, --batch-size or --max-length) or close other "
                "programs")
    if type(exc).__name__.startswith("StrictDataclass"):  # huggingface_hub's config field validation
        return f"invalid model config: {exc}"
    if isinstance(exc, SafetensorError):
        return f"a weights file is damaged or not a safetensors file ({exc}); save or download the model again"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8"
    if isinstance(exc, OSError):
        return _os_message(exc)
    if isinstance(exc, ValueError):
        return str(exc)
    return None


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    code = exc.errno
    if code == errno.ENOSPC or code == getattr(errno, "EDQUOT", -1):
        return f"{where}the disk is full (or over quota); free some space or write somewhere else"
    if code in (errno.EACCES, errno.EPERM):
        return f"{where}permission denied; choose a folder you can write to, or fix the file's permissions"
    if code == errno.EROFS:
        return f"{where}the file system is read-only; write somewhere else"
    if code == errno.EISDIR:
        return f"{where}is a folder, where a file was expected"
    if code == errno.ENOTDIR:
        return f"{where}a part of this path is a file, where a folder was expected"
    if code == errno.EEXIST:
        return f"{where}already exists and is in the way (a file where a folder should be?)"
    if code == errno.ENOENT:
        return f"{where}no such file or folder"
    return f"{where}{exc.strerror or exc}"


def bug_report() -> str:
    return BUG_REPORT
