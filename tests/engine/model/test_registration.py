"""'kala' is known to transformers' Auto classes whatever the import order (issue 14, item 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SAVE_THEN_LOAD = r"""
import sys
{first}
from transformers import AutoConfig, AutoModelForCausalLM
assert "torch" in sys.modules
{second}
cfg = AutoConfig.for_model("kala", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, vocab_size=64, max_position_embeddings=32)
model = AutoModelForCausalLM.from_config(cfg)
model.save_pretrained(sys.argv[1])
again = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=False)
print(type(again).__name__)
"""


@pytest.mark.parametrize("engine_first", [True, False], ids=["engine-then-transformers", "transformers-then-engine"])
def test_auto_classes_load_a_saved_kala_model_in_either_import_order(tmp_path, engine_first):
    code = SAVE_THEN_LOAD.format(
        first="import kala_engine\nassert 'transformers' not in sys.modules" if engine_first else "",
        second="" if engine_first else "import kala_engine",
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("KALAForCausalLM")


def test_importing_the_engine_stays_cheap():
    code = "import sys, kala_engine; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
