"""The constitution file and the size presets / estimates."""

from __future__ import annotations

import re

import pytest
import torch

from kala_engine.constitution import ConstitutionError, load_constitution, parse_constitution
from kala_engine.model.modeling_kala import preset_config
from kala_engine.model.presets import PRESETS, count_parameters, estimate_memory, get_preset
from kala_engine.resources import resource_path

SHIPPED = resource_path("constitution.toml").read_text(encoding="utf-8")


def test_shipped_constitution_has_five_laws_in_hierarchy_order():
    c = load_constitution()
    assert [law.index for law in c] == [0, 1, 2, 3, 4]
    assert len(set(c.names)) == 5
    assert c.weights == sorted(c.weights, reverse=True)  # Law 0 weighs most
    assert all(0 <= t <= 1 for t in c.thresholds)
    assert c[1].title.startswith("Law 1 ")


def _write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConstitutionError, match=re.escape(str(tmp_path / "none.toml"))):
        parse_constitution(tmp_path / "none.toml")


def test_four_laws_rejected(tmp_path):
    text = SHIPPED[: SHIPPED.rindex("[[laws]]")]
    with pytest.raises(ConstitutionError, match=r"c\.toml: field 'laws' must hold exactly 5 laws, found 4"):
        parse_constitution(_write(tmp_path, text))


def test_duplicate_names_rejected(tmp_path):
    c = load_constitution()
    text = SHIPPED.replace(f'name = "{c[3].name}"', f'name = "{c[2].name}"')
    with pytest.raises(ConstitutionError, match=r"laws\[3\]: duplicate name"):
        parse_constitution(_write(tmp_path, text))


@pytest.mark.parametrize("bad", ["weight = 0.0", "weight = 11.0", 'weight = "high"'])
def test_weights_out_of_range_rejected(tmp_path, bad):
    text = SHIPPED.replace("weight = 1.0", bad, 1)
    with pytest.raises(ConstitutionError, match=r"c\.toml: laws\[4\]: field 'weight'"):
        parse_constitution(_write(tmp_path, text))


def test_threshold_out_of_range_and_missing_field(tmp_path):
    with pytest.raises(ConstitutionError, match=r"laws\[0\]: field 'threshold' must be in \[0, 1\]"):
        parse_constitution(_write(tmp_path, SHIPPED.replace("threshold = 0.5", "threshold = 1.5", 1)))
    with pytest.raises(ConstitutionError, match=r"laws\[0\]: missing field 'text'"):
        parse_constitution(_write(tmp_path, SHIPPED.replace("text = ", "txt = ", 1)))


def test_parameter_counter_reproduces_published_pythia_totals():
    pythia = [p for p in PRESETS if p["published_params"]]
    assert len(pythia) == 8
    for p in pythia:
        pc = count_parameters(p["name"])
        assert pc.base == p["published_params"], p["name"]
        assert pc.added_fraction < 0.02, (p["name"], pc.added_fraction)


@pytest.mark.parametrize("name", ["kala-tiny", "pythia-70m", "pythia-1b"])
def test_counter_matches_a_real_model_on_the_meta_device(name):
    from kala_engine.model.modeling_kala import KALAForCausalLM

    cfg = preset_config(name)
    with torch.device("meta"):
        model = KALAForCausalLM(cfg)
    names = set(model.constitutional_parameter_names())
    real_total = sum(p.numel() for p in model.parameters())
    real_added = sum(p.numel() for n, p in model.named_parameters() if n in names)
    pc = count_parameters(cfg)
    assert (pc.total, pc.constitutional) == (real_total, real_added)


def test_memory_estimates_tell_p100_plans_apart():
    full = estimate_memory("pythia-6.9b", "fp16", batch_size=4, seq_len=512, gradient_checkpointing=True)
    qlora = estimate_memory("pythia-6.9b", "nf4-lora", batch_size=4, seq_len=512, gradient_checkpointing=True)
    assert full.total > 100 * 1024**3  # a full fine-tune of 6.9B needs 100+ GB
    assert qlora.total < 14 * 1024**3  # NF4 + LoRA fits a 16 GB P100 with room to spare
    assert estimate_memory("pythia-70m", "fp32").total < estimate_memory("pythia-160m", "fp32").total
    with pytest.raises(ValueError, match="mode"):
        estimate_memory("pythia-70m", "int3")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="pythia-70m"):
        get_preset("pythia-13b")
