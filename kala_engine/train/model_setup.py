"""Building what a run trains: the tokenizer, the KALA model (from a preset, a Pythia base or a
KALA checkpoint), LoRA adapters and the learning-rate schedule - shared by every training method."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from kala_engine.jobs import Emit, JobError, LogLine
from kala_engine.model.loading import SAFE_KWARGS  # trust_remote_code=False, local files only
from kala_engine.train.config import TrainConfig
from kala_engine.train.run_folder import RunFolder


def is_main() -> bool:
    """True in the process that writes (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def build_tokenizer(cfg: TrainConfig, records: list[dict], folder: RunFolder, emit: Emit):
    from kala_engine.data.tokenizer import load_tokenizer, prepare_tokenizer, record_texts, train_tokenizer

    tok_dir = folder.tokenizer_dir
    if (tok_dir / "tokenizer.json").is_file():
        return load_tokenizer(tok_dir)
    if cfg.tokenizer_from:  # e.g. a distillation student speaks its teacher's tokenizer
        try:
            tok = prepare_tokenizer(load_tokenizer(cfg.tokenizer_from))
        except (OSError, ValueError) as e:
            raise JobError(f"{cfg.tokenizer_from}: cannot load its tokenizer ({e})") from None
    elif cfg.base == "kala-tiny":
        emit(LogLine(f"training a {cfg.vocab_size}-token BPE tokenizer on {len(records)} records"))
        tok = train_tokenizer(record_texts(records), out_dir=None, vocab_size=cfg.vocab_size)
    else:
        src = base_dir(cfg.base, cfg.revision)
        try:
            tok = prepare_tokenizer(load_tokenizer(src))
        except (OSError, ValueError) as e:
            raise JobError(f"{src}: cannot load its tokenizer ({e}); a Pythia folder holds tokenizer.json") from None
    if is_main():
        with folder.writing_tokenizer() as tmp:
            tok.save_pretrained(tmp)
    return tok


def base_dir(base: str, revision: str | None = None) -> str:
    """The base's local folder, found by the one resolver (kala_engine.model.hub, through
    doctor.check_base: a folder, else the Hugging Face cache) and checked as a base (config,
    tokenizer, the loading policy). Never downloads: `kala train` and the app's Models page
    download before a run starts."""
    from kala_engine.doctor import check_base

    found = check_base(base, revision)
    if not found.ok or found.folder is None:
        raise JobError(found.problem or f"base {base!r}: nothing to load (kala-tiny is trained from scratch)")
    return found.folder


def build_model(cfg: TrainConfig, tokenizer, plan, emit: Emit):
    """The model to train, per the plan: kala-tiny from scratch, a Pythia base, or a KALA model."""
    from kala_engine.model.modeling_kala import KALAForCausalLM, load_from_pythia, preset_config

    overrides = dict(ethics_loss_weight=cfg.ethics_weight, deep_supervision_weight=cfg.deep_supervision_weight)
    if cfg.base == "kala-tiny":
        torch.manual_seed(cfg.seed)
        config = preset_config(
            "kala-tiny", vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            **overrides, **cfg.tiny_overrides,
        )
        return KALAForCausalLM(config)
    src = base_dir(cfg.base, cfg.revision)
    # fp32 master weights whatever the checkpoint's dtype: Pythia's are stored in fp16, and an fp16
    # parameter takes AdamW's small updates as rounding error (and fp16 autocast refuses to unscale it)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    model_type = json.loads((Path(src) / "config.json").read_text(encoding="utf-8")).get("model_type")
    if plan.mode == "nf4-lora":
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if plan.precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True, llm_int8_skip_modules=unquantized_modules(src, model_type),
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}  # this process's GPU
    if model_type == "kala":
        emit(LogLine(f"continuing from the KALA model in {src}"))
        model = KALAForCausalLM.from_pretrained(src, use_safetensors=True, **SAFE_KWARGS, **kwargs)
        for k, v in overrides.items():
            setattr(model.config, k, v)
    else:
        emit(LogLine(f"loading Pythia weights from {src}"))
        model = load_from_pythia(src, kala_overrides=overrides, **kwargs)
    if len(tokenizer) > model.config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    return model


def unquantized_modules(src: str | Path, model_type: str | None) -> list[str]:
    """The full names of the Linear layers an NF4 base keeps in full precision: every one of the
    constitutional parts (trained in full, and new: no quantised weights to load) and the LM head.

    Full names, because transformers matches these as name prefixes or suffixes
    (``should_convert_module``): "value_head" alone matches neither "gpt_neox.layers.0.value_head.fc1"
    nor its end, and the head would be made a 4-bit layer around weights never quantised."""
    from transformers import GPTNeoXConfig

    from kala_engine.model.modeling_kala import (
        CONSTITUTIONAL_KEYS,
        KALAConfig,
        KALAForCausalLM,
        kala_config_from_gpt_neox,
    )

    config = (KALAConfig.from_pretrained(str(src), **SAFE_KWARGS) if model_type == "kala"
              else kala_config_from_gpt_neox(GPTNeoXConfig.from_pretrained(str(src), **SAFE_KWARGS)))
    with torch.device("meta"):
        model = KALAForCausalLM(config)
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and (n == "embed_out" or any(k in n.split(".") for k in CONSTITUTIONAL_KEYS))]


def apply_lora(model, cfg: TrainConfig, quantized: bool):
    """LoRA adapters (peft) on the base; the constitutional parts stay fully trainable."""
    from peft import LoraConfig, get_peft_model

    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
    names = set(model.constitutional_parameter_names())
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0,
                      target_modules=["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for n, p in model.named_parameters():
        if any(n.endswith(c) for c in names):
            p.requires_grad_(True)
    return model


def lr_at(step: int, total: int, cfg: TrainConfig, warmup: int) -> float:
    """Linear warm-up, then cosine to learning_rate * min_lr_ratio (nanoGPT's get_lr)."""
    peak = cfg.learning_rate
    if step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * cfg.min_lr_ratio
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def fresh_accelerator(mixed_precision: str, cpu: bool):
    """An Accelerator for this run's precision. accelerate keeps one AcceleratorState per process
    and refuses a second Accelerator of another precision, so a run started in a process that ran
    one before (the app, a test session: an fp16 run, then an NF4 one in bf16) resets it first.
    Single-process runs only: a distributed run is a process of its own, started by torchrun."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # noqa: SLF001 - accelerate's own tests reset it the same way
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def merged_model(model):
    """The model a run saves: LoRA adapters merged into a plain KALA model.

    An NF4 base is dequantized layer by layer and each adapter's update added in fp32, into a new
    model in the run's compute dtype on the CPU. peft's own merge into a 4-bit layer re-quantizes
    W + update, which rounds a small LoRA update away, and a 4-bit folder loads only where
    bitsandbytes runs (tests/engine/train/test_precision.py).
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    base = model.get_base_model()
    if getattr(base.config, "quantization_config", None) is None:
        return model.merge_and_unload()
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_bnb_weight
    from transformers.initialization import no_init_weights

    from kala_engine.model.modeling_kala import KALAConfig, KALAForCausalLM

    dtype = _compute_dtype(base.config.quantization_config)
    config = KALAConfig.from_dict({k: v for k, v in base.config.to_dict().items() if k != "quantization_config"})
    with no_init_weights():
        plain = KALAForCausalLM._from_config(config, dtype=dtype)  # empty tensors: every one is filled below
    filled: set[str] = set()

    def put(name: str, tensor: torch.Tensor) -> None:
        plain.get_parameter(name).data.copy_(tensor.detach().to(device="cpu", dtype=dtype))
        filled.add(name)

    with torch.no_grad():
        for name, module in base.named_modules():
            layer = module.get_base_layer() if isinstance(module, LoraLayer) else module
            if module is not layer or (type(module).__name__ == "Linear4bit" and ".base_layer" not in name):
                w = layer.weight
                full = dequantize_bnb_weight(w, state=w.quant_state).float() if hasattr(w, "quant_state") else w.float()
                for adapter in (module.active_adapters if module is not layer else ()):
                    if adapter in module.lora_A:
                        full = full + module.get_delta_weight(adapter).float()
                put(f"{name}.weight", full)
                if layer.bias is not None:
                    put(f"{name}.bias", layer.bias)
        for name, p in base.named_parameters():
            plain_name = name.replace(".base_layer.", ".")
            if "lora_" not in name and plain_name not in filled:
                put(plain_name, p)
    missing = {n for n, _ in plain.named_parameters()} - filled
    if missing:
        raise RuntimeError(f"merging the NF4 run left parameters unset: {sorted(missing)[:5]}")
    plain.generation_config = base.generation_config
    return plain


def _compute_dtype(quantization_config) -> torch.dtype:
    """The compute dtype of a bitsandbytes config (an object, or its dict in a saved config)."""
    d = (quantization_config if isinstance(quantization_config, dict) else quantization_config.to_dict()).get(
        "bnb_4bit_compute_dtype", "float32")
    return d if isinstance(d, torch.dtype) else getattr(torch, str(d).removeprefix("torch."))
