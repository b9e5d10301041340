"""Bases: one resolver (preset, hub id or folder -> a local folder), the catalogue, and downloads.

Wherever a base is taken (``kala train --base``, ``load_from_pythia``, ``kala doctor --base``, the
app) it goes through :func:`resolve_base`:

1. a folder is used as it is (after the loading policy, :mod:`kala_engine.model.loading`);
2. a preset name (``pythia-410m``, ``pythia-1b-deduped``) or a hub id (``EleutherAI/pythia-6.9b``,
   with an optional revision such as ``step143000``) is looked up in the Hugging Face cache
   (``HF_HOME`` / ``HF_HUB_CACHE`` honoured) with no network call at all, ``HF_HUB_OFFLINE`` or not;
3. only when the caller asked for a download (``kala models download``, the Models page, or
   ``kala train`` given a base that is not cached yet while online) is it fetched, through
   ``huggingface_hub``: GPT-NeoX checked (``model_type``) and ``auto_map`` refused first, then the
   free disk space, safetensors only, progress as :class:`DownloadProgress` events, cancel through
   the job's :class:`~kala_engine.jobs.JobControl`.

Resumable downloads: huggingface_hub deletes a partial file when a download stops, so each file's
bytes are fetched with its own ``http_get`` (Range requests, retries on dropped connections) into
``blobs/<etag>.incomplete`` in the cache, which a later run continues; a finished blob is checked
against its sha256 and moved in place, and ``snapshot_download`` then writes the snapshot, refs and
file list exactly as it always does (it finds every blob already there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kala_engine.jobs import Emit, JobControl

# Downloads only fetch files; nothing here imports or runs them. Every load of what was fetched
# goes through kala_engine.model.loading (auto_map refused, trust_remote_code=False, safetensors only).
from kala_engine.model.download import (
    BaseError,
    fetch_files,
    hub_errors,
    unreachable_error,
)
from kala_engine.model.loading import LoadRefused, check_folder, check_no_remote_code
from kala_engine.model.presets import PRESETS, count_parameters

#: Pythia lives here; a bare preset name means EleutherAI/<name>
DEFAULT_ORG = "EleutherAI"
#: model types KALA can start from
SUPPORTED_MODEL_TYPES = ("gpt_neox", "kala")
#: files a base needs (weights as safetensors only; tokenizer files where the repo has them)
BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt")
#: extra free space kept after a download (bytes), besides 2 % of its size

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ResolvedBase:
    """What a base name resolved to. ``path`` is None only for ``kala-tiny`` (trained from scratch)."""

    name: str  # what the user gave
    kind: str  # "scratch" | "folder" | "cache" | "download"
    path: str | None
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None


# --------------------------------------------------------------------------- the catalogue


def _pythia_presets() -> list[dict]:
    return [p for p in PRESETS if p["name"].startswith("pythia-")]


def catalog() -> list[dict]:
    """Every Pythia size and its deduped twin: name, repo id, parameters, estimated download bytes.

    Pythia's published checkpoints are fp16 safetensors (``torch_dtype: float16`` in each
    config.json), so a download is about 2 bytes per parameter plus a 2 MB tokenizer.
    """
    out = []
    for p in _pythia_presets():
        params = p["published_params"] or count_parameters(p["name"]).base
        for suffix in ("", "-deduped"):
            name = p["name"] + suffix
            out.append(dict(name=name, repo_id=f"{DEFAULT_ORG}/{name}", shape=p["name"], params=params,
                            download_bytes=2 * params + 2 * 1024**2, deduped=bool(suffix)))
    return out


def preset_names() -> list[str]:
    return ["kala-tiny"] + [m["name"] for m in catalog()]


def shape_preset(name: str) -> str | None:
    """The presets.py shape behind a preset name or a known Pythia hub id (deduped = same shape)."""
    n = name.strip()
    low = n.lower()
    if low == "kala-tiny":
        return "kala-tiny"
    for m in catalog():
        if low in (m["name"], m["repo_id"].lower()):
            return m["shape"]
    return None


def _valid_names_line() -> str:
    return (f"choose a preset ({', '.join(preset_names())}), a hub id such as {DEFAULT_ORG}/pythia-410m, "
            f"or a local model folder")


def classify(name: str) -> tuple[str, str]:
    """("scratch"|"folder"|"repo", normalised value) for a base string, or BaseError."""
    n = str(name).strip()
    if not n:
        raise BaseError("no base given; " + _valid_names_line())
    if n.lower() == "kala-tiny":
        return "scratch", "kala-tiny"
    p = Path(n).expanduser()
    if p.exists():
        return "folder", str(p)
    for m in catalog():
        if n.lower() in (m["name"], m["repo_id"].lower()):
            return "repo", m["repo_id"]
    looks_like_path = (n.startswith((".", "/", "~", "\\")) or os.sep in n.replace("/", "") or n.count("/") > 1
                       or re.match(r"^[A-Za-z]:[\\/]", n) is not None)
    if looks_like_path:
        raise BaseError(f"{n}: no such folder; " + _valid_names_line())
    if _REPO_ID.match(n):
        return "repo", n
    raise BaseError(f"unknown base {n!r}; " + _valid_names_line())


# --------------------------------------------------------------------------- the cache (no network)


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _storage(repo_id: str, cache_dir: Path | None = None, repo_type: str = "model") -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return (cache_dir or hub_cache_dir()) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)


def _complete(folder: Path) -> bool:
    """config.json and every safetensors shard (per the index when sharded) are in ``folder``."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir: Path | None = None
                    ) -> tuple[Path, str] | None:
    """(folder, commit) of a complete cached snapshot, or None. Never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                        allow_patterns=[*BASE_FILES, "*.safetensors", "*.safetensors.index.json"]))
    except (LocalEntryNotFoundError, OSError, ValueError):  # IncompleteSnapshotError is a LocalEntryNotFoundError
        return None
    return (folder, folder.name) if _complete(folder) else None


def partial_bytes(repo_id: str, cache_dir: Path | None = None) -> int:
    """Bytes of unfinished downloads kept for this repo (a later download resumes them)."""
    blobs = _storage(repo_id, cache_dir) / "blobs"
    return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.is_dir() else 0


def cached_revisions(repo_id: str, cache_dir: Path | None = None) -> dict[str, str]:
    """{revision: commit} of the complete snapshots in the cache (read from its refs)."""
    refs = _storage(repo_id, cache_dir) / "refs"
    out = {}
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            rev = ref.relative_to(refs).as_posix()
            hit = cached_snapshot(repo_id, rev, cache_dir)
            if hit:
                out[rev] = hit[1]
    return out


# --------------------------------------------------------------------------- the resolver


def resolve_base(name: str, revision: str | None = None, *, download: bool = False, weights: bool = True,
                 emit: Emit | None = None, control: JobControl | None = None,
                 cache_dir: Path | None = None) -> ResolvedBase:
    """A preset, hub id or folder -> a local folder (see the module docstring for the order).

    ``download``: fetch a base missing from the cache (only where the user asked for one).
    ``weights``: also require safetensors weights in a folder (the doctor only reads config.json).
    """
    kind, value = classify(name)
    if kind == "scratch":
        return ResolvedBase(name, "scratch", None)
    if kind == "folder":
        p = Path(value)
        if not p.is_dir():
            raise BaseError(f"{p} is a file; a base is a model folder (config.json + model.safetensors)")
        if not (p / "config.json").is_file():
            raise BaseError(f"{p}: no config.json - not a model folder; " + _valid_names_line())
        check_folder(p, weights=weights)
        return ResolvedBase(name, "folder", str(p))
    repo_id = value
    hit = cached_snapshot(repo_id, revision, cache_dir)
    if hit is not None:
        folder, commit = hit
        check_folder(folder, weights=weights)
        return ResolvedBase(name, "cache", str(folder), repo_id, revision, commit)
    label = repo_id + (f"@{revision}" if revision else "")
    if not download:
        raise BaseError(f"{label} is not downloaded yet (looked in {cache_dir or hub_cache_dir()}); get it with "
                        f"`kala models download {name}{f' --revision {revision}' if revision else ''}` or the "
                        f"Models page - KALA downloads only when asked")
    return download_base(repo_id, revision, emit=emit, control=control, cache_dir=cache_dir)


# --------------------------------------------------------------------------- downloads


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def download_base(name: str, revision: str | None = None, *, emit: Emit | None = None,
                  control: JobControl | None = None, cache_dir: Path | None = None) -> ResolvedBase:
    """Download a GPT-NeoX base (safetensors, config, tokenizer) into the HF cache; resumable.

    Raises BaseError/LoadRefused with one line for everything a user can act on; Cancelled when
    ``control`` was cancelled (the bytes already received stay for the next run).
    """
    from filelock import FileLock, Timeout
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    emit = emit or (lambda e: None)
    control = control or JobControl()
    kind, repo_id = classify(name)
    if kind != "repo":
        raise BaseError(f"{name}: only a preset name or a hub id can be downloaded")
    label = repo_id + (f"@{revision}" if revision else "")
    if _offline():
        raise BaseError(f"{label} is not in the Hugging Face cache ({cache_dir or hub_cache_dir()}) and downloads "
                        f"are off (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE on a connected machine and run "
                        f"`kala models download {name}`, or pass a local model folder")
    api = HfApi()
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise BaseError(f"{repo_id} has no revision {revision!r} (a branch, tag or commit such as main or "
                        f"step143000)") from None
    except RepositoryNotFoundError:
        raise BaseError(f"{repo_id}: no such model on {constants.ENDPOINT} (or it is private/gated); "
                        + _valid_names_line()) from None
    except hub_errors() as e:
        raise unreachable_error(label, e) from None
    commit = info.sha
    sizes = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    top = [f for f in sizes if "/" not in f]
    safetensors = [f for f in top if f.endswith(".safetensors")]
    if "config.json" not in sizes:
        raise BaseError(f"{label}: no config.json - not a transformers model repository")
    if not safetensors:
        pickles = [f for f in top if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        if pickles:
            raise LoadRefused(
                f"{label}: refused: this revision offers its weights only as pickle files ({', '.join(pickles[:3])}); "
                f"KALA downloads safetensors only, because unpickling a downloaded file can run code. Pick a "
                f"revision that has model.safetensors"
            )
        raise BaseError(f"{label}: no weight files (model.safetensors) in the repository")
    storage = _storage(repo_id, cache_dir)
    lock = storage.parent / ".locks" / storage.name / "kala-download.lock"  # beside huggingface_hub's own locks
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(lock), timeout=0):
            # the small files first: the model type and auto_map decide before any weights move
            try:
                cfg_path = hf_hub_download(repo_id, "config.json", revision=commit, cache_dir=cache_dir)
            except hub_errors() as e:
                raise unreachable_error(label, e) from None
            try:
                model_type = json.loads(Path(cfg_path).read_text(encoding="utf-8")).get("model_type")
            except (OSError, ValueError, AttributeError) as e:
                raise BaseError(f"{label}: unreadable config.json ({e})") from None
            if model_type not in SUPPORTED_MODEL_TYPES:
                raise BaseError(f"{label}: model_type is {model_type!r}; KALA starts from GPT-NeoX (Pythia) models "
                                f"only (model_type 'gpt_neox'), e.g. {DEFAULT_ORG}/pythia-410m")
            check_no_remote_code(Path(cfg_path).parent)
            wanted = [f for f in BASE_FILES if f in sizes]
            if "tokenizer.json" in wanted:  # the fast tokenizer is enough; skip the slow one's files
                wanted = [f for f in wanted if f not in ("vocab.json", "merges.txt")]
            wanted += sorted(safetensors) + [f for f in top if f.endswith(".safetensors.index.json")]
            folder = fetch_files(repo_id, revision, commit, wanted, sizes, storage, label, emit, control, cache_dir)
            check_folder(folder)
            return ResolvedBase(repo_id, "download", str(folder), repo_id, revision, commit)
    except Timeout:
        raise BaseError(f"{label}: another download of it is running (lock {lock}); wait for it or cancel it"
                        ) from None


def download_job(name: str, revision: str | None = None, cache_dir: Path | None = None) -> Callable:
    """A job (``job(emit, control)``) for the app's worker: download a base, return its folder."""

    def job(emit: Emit, control: JobControl) -> dict:
        r = download_base(name, revision, emit=emit, control=control, cache_dir=cache_dir)
        return {"path": r.path, "repo_id": r.repo_id, "revision": r.revision, "commit": r.commit}

    return job


def delete_from_cache(name: str, cache_dir: Path | None = None) -> int:
    """Remove a repo (all revisions and partial files) from the cache; returns the bytes freed."""
    _, repo_id = classify(name)
    storage = _storage(repo_id, cache_dir)
    if not storage.is_dir():
        return 0
    freed = sum(p.stat().st_size for p in storage.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(storage)
    return freed


# --------------------------------------------------------------------------- datasets

#: the public repos behind ``kala data import --format F --from-hub`` and the files tried first
#: (the hub's layout of these repos as of 2025; ``--hub-file`` picks another file)
DATASETS = {
    "hh-rlhf": dict(repo_id="Anthropic/hh-rlhf", files=("harmless-base/train.jsonl.gz",)),
    "pku-saferlhf": dict(repo_id="PKU-Alignment/PKU-SafeRLHF",
                         files=("data/Alpaca-7B/train.jsonl", "train.jsonl", "data/train.jsonl")),
    "beavertails": dict(repo_id="PKU-Alignment/BeaverTails",
                        files=("round0/30k/train.jsonl.xz", "30k_train.jsonl.xz", "train.jsonl")),
}
#: what kala_engine.data.io reads (gzip and xz are decompressed on the fly)
READABLE = (".jsonl", ".jsonl.gz", ".jsonl.xz", ".json", ".json.gz")


def _pick_dataset_file(sizes: dict[str, int], preferred: tuple[str, ...]) -> str | None:
    for f in preferred:
        if f in sizes:
            return f
    train = [f for f in sizes if f.endswith(READABLE) and "train" in f.rsplit("/", 1)[-1]]
    return min(train, key=lambda f: (sizes[f], f)) if train else None  # the smallest training split


def fetch_dataset(fmt: str, repo_id: str | None = None, filename: str | None = None, revision: str | None = None,
                  *, emit: Emit | None = None, control: JobControl | None = None,
                  cache_dir: Path | None = None) -> Path:
    """The local path of a public dataset file (cache first, no network; else a resumable download)."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    known = DATASETS.get(fmt)
    if repo_id is None:
        if known is None:
            raise BaseError(f"--from-hub needs a repo id for format {fmt!r} (known: "
                            + ", ".join(f"{k}: {v['repo_id']}" for k, v in DATASETS.items()) + ")")
        repo_id = known["repo_id"]
    preferred = (filename,) if filename else (known["files"] if known and repo_id == known["repo_id"] else ())
    for f in preferred:
        hit = try_to_load_from_cache(repo_id, f, cache_dir=cache_dir, revision=revision, repo_type="dataset")
        if isinstance(hit, str):
            return Path(hit)
    label = f"dataset {repo_id}" + (f"@{revision}" if revision else "")
    if _offline():
        raise BaseError(f"{label} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1); "
                        f"run the same command on a connected machine, or import a local copy (kala data import FILE)")
    try:
        info = HfApi().dataset_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise BaseError(f"{label}: no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise BaseError(f"{label}: no such dataset on the hub (or it is private/gated)") from None
    except hub_errors() as e:
        raise unreachable_error(label, e) from None
    sizes = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    chosen = filename if filename in sizes else (None if filename else _pick_dataset_file(sizes, preferred))
    if chosen is None:
        parquet = sorted(f for f in sizes if f.endswith(".parquet"))
        if filename:
            raise BaseError(f"{label} has no file {filename!r}; it has e.g. {', '.join(sorted(sizes)[:6])}")
        if parquet:
            raise BaseError(f"{label} serves only parquet files ({parquet[0]} ...); KALA reads JSONL (plain, .gz, .xz) "
                            f"- parquet support needs pyarrow, which this installation does not include")
        raise BaseError(f"{label}: no JSONL training file found; pass --hub-file PATH (files: "
                        f"{', '.join(sorted(sizes)[:6])})")
    if not chosen.endswith(READABLE):
        raise BaseError(f"{label}: {chosen} is not JSONL (plain, .gz or .xz); pass --hub-file with a JSONL file")
    folder = fetch_files(repo_id, revision, info.sha, [chosen], sizes, _storage(repo_id, cache_dir, "dataset"), label,
                    emit or (lambda e: None), control or JobControl(), cache_dir, repo_type="dataset")
    return folder / chosen
