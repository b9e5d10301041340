"""The tiny CPU training run the trainer and run-lock tests share: its model shape and its config."""

from __future__ import annotations

from kala_engine.train.config import TrainConfig

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 128}


def cfg_for(dataset, run_dir, **kw) -> TrainConfig:
    """12 steps of 4 examples, validation and a checkpoint every 4 steps, seed 7 (on the CPU)."""
    base = dict(data=str(dataset), run_dir=str(run_dir), max_steps=12, batch_size=4, max_length=48,
                learning_rate=3e-3, eval_every=4, eval_batches=2, save_every=4, keep_checkpoints=3, seed=7,
                vocab_size=300, tiny_overrides=TINY, device="cpu")
    base.update(kw)
    return TrainConfig(**base)
