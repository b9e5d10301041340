"""The tiny CPU training run the trainer, distill, align and run-lock tests share: its model shape, its
config, its data file and the reading and comparing of its metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from kala_engine.train.config import TrainConfig
from kala_engine.train.trainer import TIMING_KEYS

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 128}


def cfg_for(dataset, run_dir, **kw) -> TrainConfig:
    """12 steps of 4 examples, validation and a checkpoint every 4 steps, seed 7 (on the CPU)."""
    base = dict(data=str(dataset), run_dir=str(run_dir), max_steps=12, batch_size=4, max_length=48,
                learning_rate=3e-3, eval_every=4, eval_batches=2, save_every=4, keep_checkpoints=3, seed=7,
                vocab_size=300, tiny_overrides=TINY, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def write_data(tmp_path_factory, n: int, seed: int) -> Path:
    """A generated data file of `n` records (a module fixture's body)."""
    from kala_engine.data.generate import write_dataset

    p = tmp_path_factory.mktemp("data") / "d.jsonl"
    write_dataset(p, n, seed)
    return p


def write_base_and_pairs(d: Path) -> tuple[Path, Path]:
    """In ``d``: a tiny base trained 15 steps (its ``final/``) and 160 preference pairs, what the
    alignment tests (engine and Train page) align."""
    from kala_engine.data.generate import write_dataset
    from kala_engine.data.pairs import write_pairs
    from kala_engine.train.trainer import train

    write_dataset(d / "d.jsonl", 200, 1)
    write_pairs(d / "pairs.jsonl", 160, 2)
    train(TrainConfig(data=str(d / "d.jsonl"), run_dir=str(d / "base"), max_steps=15, batch_size=8, max_length=80,
                      vocab_size=400, tiny_overrides=TINY, device="cpu", eval_every=0, save_every=0, seed=1),
          lambda e: None)
    return d / "base" / "final", d / "pairs.jsonl"


def metrics(run_dir) -> list[dict]:
    """The run's metrics.jsonl lines without the timing keys (which differ between two equal runs)."""
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in d.items() if k not in TIMING_KEYS} for d in lines]


def assert_same_trajectory(a: list[dict], b: list[dict]):
    """Two runs' metrics lines are the same: floats to 1e-6, the rest exactly."""
    assert len(a) == len(b), (len(a), len(b))
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert abs(x[k] - y[k]) <= 1e-6, (x.get("step"), k, x[k], y[k])
            else:
                assert x[k] == y[k], (k, x[k], y[k])
