"""Precision and quantisation set-up of a run, found on the first GPU run (bench/results/gpu):
fp32 master weights from an fp16 checkpoint, one process running runs of different precisions,
and the NF4 base keeping every constitutional part in full precision."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from kala_engine.train.trainer import train
from tests.engine.train.tiny_runs import cfg_for, write_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_data(tmp_path_factory, 120, 5)


@pytest.fixture
def fp16_pythia(make_neox_dir):
    """A Pythia-like folder stored in fp16, as EleutherAI's checkpoints are, with a tokenizer."""
    from kala_engine.data.tokenizer import train_tokenizer

    model, base = make_neox_dir("pythia-fp16", vocab_size=320)
    model.half().save_pretrained(base)
    assert json.loads((base / "config.json").read_text())["dtype"] == "float16"
    train_tokenizer(["hello world"] * 10, vocab_size=300).save_pretrained(base)
    return base


def test_an_fp16_checkpoint_trains_fp32_master_weights(dataset, tmp_path, fp16_pythia):
    from kala_engine.doctor import make_plan
    from kala_engine.train.model_setup import build_model

    cfg = cfg_for(dataset, tmp_path / "r", base=str(fp16_pythia), max_steps=2, eval_every=0, save_every=0,
                  calibrate=False)
    from kala_engine.data.tokenizer import load_tokenizer

    model = build_model(cfg, load_tokenizer(fp16_pythia), make_plan(cfg.base, batch_size=4, seq_len=48),
                        lambda e: None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    result = train(cfg, lambda e: None)
    with safe_open(str(tmp_path / "r" / "final" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    assert result["steps"] == 2


def test_one_process_runs_accelerators_of_different_precisions():
    """An fp32 run, then a bf16 one in the same process (the app; a test session): accelerate used
    to refuse the second ("AcceleratorState has already been initialized")."""
    from kala_engine.train.model_setup import fresh_accelerator

    assert fresh_accelerator("no", cpu=True).mixed_precision == "no"
    assert fresh_accelerator("bf16", cpu=True).mixed_precision == "bf16"
    assert fresh_accelerator("no", cpu=True).mixed_precision == "no"


@pytest.mark.parametrize("kind", ["pythia", "kala"])
def test_nf4_keeps_every_constitutional_linear_and_the_head_unquantised(kind, make_neox_dir, tiny_kala, tmp_path):
    """transformers' own matcher (should_convert_module) decides what the 4-bit loader converts:
    each constitutional Linear and the LM head are left alone, every base projection converted."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    from kala_engine.model.modeling_kala import (
        CONSTITUTIONAL_KEYS,
        KALAForCausalLM,
        kala_config_from_gpt_neox,
    )
    from kala_engine.train.model_setup import unquantized_modules

    if kind == "pythia":
        neox, folder = make_neox_dir("p")
        model = KALAForCausalLM(kala_config_from_gpt_neox(neox.config))
    else:
        folder, model = tmp_path / "k", tiny_kala
        model.save_pretrained(folder)
    skip = unquantized_modules(folder, kind if kind == "kala" else "gpt_neox")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    kept = [n for n in linears if not should_convert_module(n, skip)]
    constitutional = [n for n in linears if any(k in n for k in CONSTITUTIONAL_KEYS)]
    assert len(constitutional) == 4 * model.config.num_hidden_layers  # fc1 and fc2 of the head and the monitor
    assert sorted(kept) == sorted([*constitutional, "embed_out"])
    assert any(n.endswith("query_key_value") for n in linears if n not in kept)


def test_an_nf4_run_saves_a_plain_model_with_every_lora_update_added_in_full(make_neox_dir, tmp_path):
    """peft's merge into a 4-bit layer re-quantizes W + update (a small LoRA update rounds away)
    and leaves a folder only bitsandbytes can load: the final model is the dequantized base plus
    each update, plain Linear layers, no quantization_config. bitsandbytes quantizes on the CPU
    too, so this runs without a GPU."""
    pytest.importorskip("bitsandbytes")
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight
    from transformers import BitsAndBytesConfig

    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.generate.session import load_chat_model
    from kala_engine.model.modeling_kala import load_from_pythia
    from kala_engine.train.config import TrainConfig
    from kala_engine.train.model_setup import apply_lora, unquantized_modules
    from kala_engine.train.run_folder import RunFolder
    from kala_engine.train.trainer import save_final

    _, base = make_neox_dir("nf4", vocab_size=320)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                               bnb_4bit_use_double_quant=True,
                               llm_int8_skip_modules=unquantized_modules(base, "gpt_neox"))
    model = load_from_pythia(base, quantization_config=quant, device_map={"": "cpu"}, dtype=torch.float32)
    cfg = TrainConfig(data="unused", run_dir=str(tmp_path / "run"), base=str(base), mode="nf4-lora",
                      gradient_checkpointing=False)
    peft_model = apply_lora(model, cfg, quantized=True)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking, small update (lora_B starts at 0)
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    expected, lora_layers = {}, 0
    for name, m in peft_model.get_base_model().named_modules():
        if isinstance(m, LoraLayer):
            w = m.get_base_layer().weight
            expected[name] = dequantize_bnb_weight(w, state=w.quant_state).float() + m.get_delta_weight("default")
            lora_layers += 1
    assert lora_layers == 4 * model.config.num_hidden_layers
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(parents=True)
    save_final(peft_model, train_tokenizer(["hello world"] * 10, vocab_size=300), folder, "nf4-lora")
    assert "quantization_config" not in json.loads((folder.final_dir / "config.json").read_text())
    saved, _ = load_chat_model(folder.final_dir)
    for name, w in expected.items():
        layer = saved.get_submodule(name)
        assert type(layer) is torch.nn.Linear
        torch.testing.assert_close(layer.weight, w, atol=1e-6, rtol=0)
    gate = "gpt_neox.layers.0.attention.constitutional_gate"
    torch.testing.assert_close(saved.get_parameter(gate), peft_model.get_base_model().get_parameter(gate).float())


def test_a_16_bit_model_chats_in_fp32_on_the_cpu(tmp_path):
    """An NF4 run saves in its compute dtype (fp16 on a P100); the CPU computes in fp32."""
    from kala_engine.data.tokenizer import train_tokenizer
    from kala_engine.generate.session import load_chat_model
    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    config = KALAConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64,
                        vocab_size=320, max_position_embeddings=64)
    KALAForCausalLM(config).half().save_pretrained(tmp_path / "m")
    train_tokenizer(["hello world"] * 10, vocab_size=300).save_pretrained(tmp_path / "m")
    model, _ = load_chat_model(tmp_path / "m")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    half, _ = load_chat_model(tmp_path / "m", dtype=torch.float16)  # asked for: kept
    assert {p.dtype for p in half.parameters()} == {torch.float16}
