"""The one place where the app calls into ``kala_engine``.

Every engine function a page uses goes through this module, so that when an engine name or
signature changes only this file changes. Engine functions are imported by name, inside the
functions that call them (torch is heavy: the window opens before any engine module that needs it
is loaded), so go-to-definition works and a rename in the engine fails loudly instead of falling
back. The app never imports torch or transformers itself (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kala_engine.jobs import Emit, JobControl, LogLine, Progress

#: How many examples the quickstart generates.
QUICKSTART_COUNT = 2000
#: How many optimizer steps the quickstart trains kala-tiny for (a few minutes on a laptop CPU).
QUICKSTART_STEPS = 300


def quickstart_hyperparameters(steps: int = QUICKSTART_STEPS) -> dict[str, Any]:
    """The Train page settings of the quickstart (those of ``kala demo``, scaled to ``steps``)."""
    steps = max(1, int(steps))
    return {"max_steps": steps, "batch_size": 16, "learning_rate": 2e-3, "ethics_weight": 2.0,
            "warmup_steps": min(20, max(1, steps // 5)), "eval_every": max(1, steps // 4),
            "save_every": max(1, steps // 4)}


# ================================================================== device


def device_summary() -> str:
    """One line for the status bar: the compute device the engine would use (imports torch: slow)."""
    from kala_engine.doctor import device_summary as engine_device_summary

    return engine_device_summary()


# ================================================================== data


def data_kinds() -> list[str]:
    """The example kinds the generator knows."""
    from kala_engine.data.schema import KINDS

    return list(KINDS)


#: The Data page's format choice that detects the format from the file.
AUTO_FORMAT = "auto"


def import_formats() -> list[str]:
    """Formats ``kala data import`` understands (``kala`` first)."""
    from kala_engine.data.importers import FORMATS

    return ["kala"] + [f for f in FORMATS if f != "kala"]


def format_title(fmt: str) -> str:
    """How a format is named to the user (``HH-RLHF``; ``Auto-detect`` for :data:`AUTO_FORMAT`)."""
    if fmt == AUTO_FORMAT:
        return "Auto-detect"
    from kala_engine.data.detect import TITLES

    return TITLES.get(fmt, fmt)


def record_kind(rec: dict) -> str:
    return str(rec.get("kind", "?"))


def record_laws(rec: dict) -> list[float] | None:
    """The five per-law labels of a record (1.0 = satisfied), or None if it has none."""
    for key in ("laws", "labels", "law_scores", "law_labels"):
        v = rec.get(key)
        if isinstance(v, (list, tuple)) and len(v) == 5:
            try:
                return [float(x) for x in v]
            except (TypeError, ValueError):
                return None
        if isinstance(v, dict):
            from kala_engine.constitution import load_constitution

            keys = [law.key for law in load_constitution()]
            if all(k in v for k in keys):
                return [float(v[k]) for k in keys]
    return None


def record_text(rec: dict) -> tuple[str, str]:
    """(first user text, first assistant text) of a record, for the preview table."""
    user = assistant = ""
    parts = rec.get("parts")
    if isinstance(parts, list):
        for part in parts:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                continue
            if part.get("role") == "user" and not user:
                user = part["text"]
            elif part.get("role") == "assistant" and not assistant:
                assistant = part["text"]
    return user, assistant


@dataclass
class LoadedData:
    """Records of a JSONL file plus the problems found, by 1-based line number."""

    path: Path
    records: list[dict] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    summary: Any = None


def load_and_validate(path: str | Path, emit: Emit | None = None, control: JobControl | None = None) -> LoadedData:
    """Read a KALA JSONL file; every bad line is reported as (line, reason), like ``kala data validate``."""
    from kala_engine.data.io import iter_checked_records as checked

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; choose an existing .jsonl file")
    out = LoadedData(path=path)
    for lineno, record, reasons in checked(path):
        if control is not None and lineno % 2000 == 0:
            control.checkpoint()
            if emit:
                emit(Progress(lineno, 0, f"read {lineno} lines"))
        if reasons:
            out.errors.extend((lineno, r) for r in reasons)
        else:
            out.records.append(record)
    if emit:
        emit(Progress(1, 1, f"{len(out.records)} valid records, {len(out.errors)} problems"))
    return out


def load_job(path: str | Path) -> Callable:
    """A job that reads and validates ``path``; its result is a :class:`LoadedData`."""

    def job(emit: Emit, control: JobControl) -> LoadedData:
        emit(LogLine(f"validating {path}"))
        return load_and_validate(path, emit, control)

    return job


def generate_job(out: str | Path, count: int, seed: int, kinds: Iterable[str] | None = None) -> Callable:
    """A job that writes a generated data set to ``out`` and returns its :class:`LoadedData`.

    When ``kinds`` is a subset of :func:`data_kinds`, only those kinds are kept (the generator's
    output is filtered).
    """
    out = Path(out)
    kinds = list(kinds) if kinds is not None else None

    def job(emit: Emit, control: JobControl) -> LoadedData:
        from kala_engine.data.generate import write_dataset as write

        out.parent.mkdir(parents=True, exist_ok=True)
        emit(Progress(0, count, f"generating {count} examples (seed {seed})"))
        write(out, count, seed)
        control.checkpoint()
        if kinds is not None:
            keep = set(kinds)
            lines = [ln for ln in out.read_text(encoding="utf-8").splitlines()
                     if ln.strip() and json.loads(ln).get("kind") in keep]
            out.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        emit(Progress(count, count, "validating"))
        data = load_and_validate(out, None, control)
        data.summary = summarize(data.records)
        emit(LogLine(f"wrote {len(data.records)} examples to {out}"))
        return data

    return job


def import_job(src: str | Path, fmt: str, out: str | Path | Callable[[str], Path]) -> Callable:
    """A job that converts ``src`` (format ``fmt``; :data:`AUTO_FORMAT`: the one it looks like)
    into KALA JSONL at ``out`` (or ``out(format)``) and loads it.

    Bad input never fails with a traceback: it fails with a :class:`~kala_engine.jobs.JobError`
    whose one message says what the file looks like ("x.jsonl looks like HH-RLHF (JSON lines),
    not KALA: choose the format hh-rlhf"). A KALA file without one valid record fails the same
    way (a preview of nothing is no use); one with some bad lines loads, its problems listed.
    """

    def job(emit: Emit, control: JobControl) -> LoadedData:
        from kala_engine.data.detect import detect_format, why_unknown
        from kala_engine.jobs import JobError

        src_name = Path(src).name
        try:
            found = detect_format(src)
        except OSError as e:
            raise JobError(str(e)) from None
        use = found.fmt if fmt == AUTO_FORMAT else fmt
        if found.fmt is None:
            raise JobError(f"Cannot import {src_name}: {why_unknown(found)}.")
        if found.fmt != use:
            raise JobError(f"{src_name} looks like {found.describe()}, not {format_title(use)}: choose "
                           f"“{format_title(found.fmt)}” under Format (or Auto-detect) and open it again.")
        if use == "kala":
            data = load_and_validate(src, emit, control)
            if not data.records:
                ln, why = data.errors[0] if data.errors else (1, "no records")
                raise JobError(f"{src_name} holds no valid KALA record ({len(data.errors)} problem(s); line {ln}: "
                               f"{why}); check it with: kala data validate {src}")
            return data
        from kala_engine.data.importers import import_dataset

        emit(LogLine(f"importing {src} ({use})"))
        out_path = Path(out(use) if callable(out) else out)
        try:
            import_dataset(Path(src), use, out_path)
        except (ValueError, OSError) as e:  # the file's fault: said in one message, no traceback
            raise JobError(str(e)) from None
        data = load_and_validate(out_path, emit, control)
        data.summary = summarize(data.records)
        return data

    return job


def coverage(records: Iterable[dict], kinds: list[str], threshold: float = 0.5) -> list[list[int]]:
    """counts[kind][law]: how many records of each kind have the law violated (label < threshold).

    A last column counts records of that kind that violate no law.
    """
    idx = {k: i for i, k in enumerate(kinds)}
    counts = [[0] * 6 for _ in kinds]
    for rec in records:
        i = idx.get(record_kind(rec))
        if i is None:
            continue
        laws = record_laws(rec)
        hit = False
        if laws is not None:
            for j, v in enumerate(laws):
                if v < threshold:
                    counts[i][j] += 1
                    hit = True
        if not hit:
            counts[i][5] += 1
    return counts


def summarize(records: list[dict]) -> Any:
    """The engine's statistics of ``records`` (kala_engine.data.generate.summarize)."""
    from kala_engine.data.generate import summarize as engine_summarize

    return engine_summarize(records)


# ================================================================== models, doctor, training


def base_presets() -> list[str]:
    """Names of the model presets, the embedded tiny model first."""
    from kala_engine.model.presets import PRESET_NAMES

    names = list(PRESET_NAMES)
    names.sort(key=lambda n: n != "kala-tiny")  # then the presets' own order: smallest Pythia first
    return names


# Bases through the engine's one resolver (kala_engine.model.hub): preset, hub id or folder -> a folder.


def resolve_base(name: str, revision: str | None = None) -> str | None:
    """The local folder of a base (None for kala-tiny); never downloads. Raises ValueError with one line."""
    from kala_engine.model.hub import resolve_base as engine_resolve_base

    return engine_resolve_base(name, revision).path


def list_models(device: str = "auto") -> list[dict]:
    """Every Pythia size: params, download size, cached (path, commit, partial bytes), the doctor's plan."""
    from kala_engine.doctor import list_models as engine_list_models

    return engine_list_models(device)


def download_base_job(name: str, revision: str | None = None) -> Callable:
    """A worker job downloading a base into the HF cache (DownloadProgress events; cancel keeps a resumable partial)."""
    from kala_engine.model.hub import download_job

    return download_job(name, revision)


def delete_base(name: str) -> int:
    """Remove a base from the HF cache; the bytes freed."""
    from kala_engine.model.hub import delete_from_cache

    return delete_from_cache(name)


def hub_cache_dir() -> Path:
    """The Hugging Face cache folder bases and public data sets go to (``HF_HOME`` / ``HF_HUB_CACHE``)."""
    from kala_engine.model.hub import hub_cache_dir as engine_hub_cache_dir

    return Path(engine_hub_cache_dir())


def base_catalog() -> list[dict]:
    """Every Pythia size the Models page lists: name, repo_id, params, download_bytes (no I/O)."""
    from kala_engine.model.hub import catalog

    return catalog()


def cached_bases() -> dict[str, str]:
    """{preset name: commit} of the catalogue's bases complete in the HF cache. Files only: no network,
    no torch (a few ms once huggingface_hub is imported), so the Train page can ask on every show."""
    from kala_engine.model.hub import cached_snapshot as cached

    out = {}
    for m in base_catalog():
        hit = cached(m["repo_id"])
        if hit is not None:
            out[m["name"]] = hit[1]
    return out


def hub_datasets() -> dict[str, str]:
    """{format: public repo id} of the data sets the Data page can download (``kala data import --from-hub``)."""
    from kala_engine.model.hub import DATASETS as known

    return {fmt: d["repo_id"] for fmt, d in known.items()}


def hub_import_job(fmt: str, out_dir: str | Path) -> Callable:
    """A job: fetch the public data set of format ``fmt`` from the hub (cache first, else a resumable
    download with ``DownloadProgress`` events), convert it to KALA JSONL in ``out_dir`` and load it.

    The output is named after the repo and the file (``hh-rlhf-harmless-base-train.jsonl``). A cancel
    keeps the bytes received (the next run resumes); every failure is one line (a JobError).
    """

    def job(emit: Emit, control: JobControl) -> LoadedData:
        from kala_engine.jobs import JobError
        from kala_engine.model.hub import fetch_dataset as fetch

        src = Path(fetch(fmt, emit=emit, control=control))
        parts = src.parts
        rel = parts[parts.index("snapshots") + 2:] if "snapshots" in parts else (src.name,)
        stem = "-".join([fmt, *rel[:-1], rel[-1].split(".")[0]])
        out_path = Path(out_dir) / f"{stem}.jsonl"
        emit(LogLine(f"importing {src.name} ({fmt}) into {out_path}"))
        from kala_engine.data.importers import import_dataset

        try:
            import_dataset(src, fmt, out_path)
        except (ValueError, OSError) as e:  # the file's fault: said in one message, no traceback
            raise JobError(f"{src.name}: {e}") from None
        data = load_and_validate(out_path, emit, control)
        data.summary = summarize(data.records)
        return data

    return job


@dataclass
class DoctorReport:
    """What the Train page's doctor panel shows."""

    device: str = "?"
    compute_capability: str = "-"
    kernels: str = "-"
    precision: str = "-"
    mode: str = "-"
    estimate_bytes: float = float("nan")
    available_bytes: float = float("nan")
    fits: bool | None = None
    reason: str = ""
    lines: list[str] = field(default_factory=list)
    #: why the base cannot be trained from as it is ("" when it can): not downloaded, no weights...
    base_problem: str = ""


def doctor(base: str) -> DoctorReport:
    """Run ``kala_engine.doctor.diagnose(base)`` and put its :class:`~kala_engine.doctor.Plan` in
    the words of the Train page's doctor panel."""
    from kala_engine.doctor import diagnose

    plan = diagnose(base)
    dev = plan.device
    cc = dev.compute_capability
    if dev.kernels_present is None:  # on the CPU
        kernels = "-"
    else:
        kernels = "present" if dev.kernels_present else "MISSING for this GPU"
    return DoctorReport(
        device=dev.name, compute_capability=".".join(map(str, cc)) if cc else "-", kernels=kernels,
        precision=plan.precision, mode=plan.mode, estimate_bytes=float(plan.estimate_bytes),
        available_bytes=float(plan.available_bytes), fits=plan.fits, reason=plan.reason,
        lines=list(plan.lines), base_problem=plan.base_problem,
    )


def base_problem(base: str) -> str:
    """Why ``base`` cannot be trained from as it is ("" when it can). Fast: files only, no torch."""
    from kala_engine.doctor import check_base

    return check_base(base).problem


def model_folder_problem(folder: str | Path) -> str:
    """Why ``folder`` is not a usable base (config.json GPT-NeoX/KALA, tokenizer, safetensors), or ""."""
    from kala_engine.doctor import check_model_folder

    return check_model_folder(folder)


def make_train_config(**kwargs) -> Any:
    """A ``kala_engine.train.trainer.TrainConfig`` from the fields it has (unknown ones are dropped)."""
    from kala_engine.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in kwargs.items() if k in names})


def train_job(config: Any) -> Callable:
    """The engine's training job for ``config`` (:func:`_engine_train_job`), which first takes the
    Chat page's cached model off the GPU: the run needs the card's memory."""
    job = _engine_train_job(config)

    def run(emit: Emit, control: JobControl) -> Any:
        from kala_engine.generate.session import release_cached_models

        release_cached_models()
        return job(emit, control)

    return run


def _engine_train_job(config: Any) -> Callable:
    """Several GPUs: the launcher's job (see kala_engine.train.distributed.launch_job); a
    preference method: ``kala align``'s; else ``kala train``'s."""
    if config.gpus * config.nodes > 1:
        from kala_engine.train.distributed import launch_job

        return launch_job(config)
    if config.method != "sft":
        from kala_engine.train.align import align_job

        return align_job(config)
    from kala_engine.train.trainer import train_job as engine_train_job

    return engine_train_job(config)


def gpu_count() -> int:
    """CUDA GPUs this machine shows (0 without CUDA)."""
    from kala_engine.doctor_multi import visible_devices

    return visible_devices("cuda")


# ================================================================== self-test


def self_test_job(workdir: Path) -> tuple[Callable, str]:
    """A job: train a tiny model for one step, then generate one token. Returns (job, description)."""
    data_path = workdir / "data.jsonl"
    run_dir = workdir / "run"

    def job(emit: Emit, control: JobControl) -> dict:
        from kala_engine.data.generate import write_dataset
        from kala_engine.generate.session import chat_job

        write_dataset(data_path, 64, 0)
        emit(LogLine(f"generated 64 examples in {data_path}"))
        cfg = make_train_config(
            base="kala-tiny", data=str(data_path), run_dir=str(run_dir), max_steps=1, batch_size=2,
            eval_every=0, save_every=0,
        )
        train = train_job(cfg)
        result = train(emit, control)
        emit(LogLine(f"trained one step into {run_dir}"))
        model_dir = run_dir / "final"
        gjob = chat_job(model=str(model_dir), model_dir=str(model_dir), prompt="Hello", max_new_tokens=1)
        gresult = gjob(emit, control)
        return {"train": result, "generate": gresult}

    return job, "generate 64 examples, train kala-tiny for 1 step, generate 1 token"
