"""TrainConfig is the one source of a run's defaults: kala train, kala demo and the Train page agree."""

from __future__ import annotations

from dataclasses import asdict

from kala_engine.cli.main import build_parser
from kala_engine.cli.train import _config
from kala_engine.train.config import (
    FINE_TUNE_LEARNING_RATE,
    SCRATCH_LEARNING_RATE,
    TrainConfig,
    default_learning_rate,
)


def test_kala_train_without_flags_is_trainconfigs_defaults():
    args = build_parser().parse_args(["train", "--data", "d.jsonl", "--run-dir", "r"])
    assert asdict(_config(args)) == asdict(TrainConfig(data="d.jsonl", run_dir="r"))


def test_the_learning_rate_follows_the_base_unless_given():
    assert TrainConfig(data="d", run_dir="r").learning_rate == SCRATCH_LEARNING_RATE == 2e-3  # kala demo's
    assert TrainConfig(base="pythia-70m", data="d", run_dir="r").learning_rate == FINE_TUNE_LEARNING_RATE
    assert TrainConfig(base="pythia-70m", data="d", run_dir="r", learning_rate=1e-5).learning_rate == 1e-5
    assert default_learning_rate("kala-tiny") == SCRATCH_LEARNING_RATE


def test_kala_demo_trains_with_trainconfigs_kala_tiny_defaults():
    args = build_parser().parse_args(["demo"])
    tc = TrainConfig(data="d", run_dir="r")
    assert (args.learning_rate, args.ethics_weight, args.seed) == (tc.learning_rate, tc.ethics_weight, tc.seed)


def test_sizes_and_durations_read_the_same_in_the_cli_and_the_app():
    from kala_engine.units import format_bytes, format_duration

    assert [format_bytes(n) for n in (None, 512, 12 * 1024, 311.6 * 1024**2, 1.9 * 1024**3)] == [
        "–", "512 B", "12.0 KB", "311.6 MB", "1.9 GB"]
    assert [format_duration(s) for s in (None, float("nan"), -1, 16, 724, 3723)] == [
        "–", "–", "–", "0:16", "12:04", "1:02:03"]
