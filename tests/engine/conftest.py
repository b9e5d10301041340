"""Shared fixtures for the engine tests: one 10k generation and one small tokenizer per session."""

from __future__ import annotations

import pytest

from kala_engine.data.generate import generate_dataset
from kala_engine.data.tokenizer import record_texts, train_tokenizer


@pytest.fixture(scope="session")
def dataset_10k():
    return generate_dataset(10000, seed=0)


@pytest.fixture(scope="session")
def small_records():
    return generate_dataset(400, seed=3)


@pytest.fixture(scope="session")
def tokenizer(small_records, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(record_texts(small_records), out_dir=out, vocab_size=600)


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_saved")
    tokenizer.save_pretrained(str(out))
    return out
