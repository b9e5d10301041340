"""Plans over several devices (issue 19 item 1): DDP, FSDP full-shard (+ CPU offload), NF4 + LoRA per
model size and card memory, with mocked device properties; the README's table is this code's."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest

from kala_engine.doctor import DeviceInfo
from kala_engine.doctor_multi import (
    TABLE_CARDS,
    TABLE_DEVICES,
    TABLE_HOST_GIB,
    TABLE_SIZES,
    _estimate,
    make_cluster_plan,
    mock_card,
    plans_table,
)
from kala_engine.model.presets import GiB, count_parameters, get_preset
from tests.engine.cli.cli_harness import run_cli

ROOT = Path(__file__).resolve().parents[2]
P100, A100 = mock_card(16, "Tesla P100-PCIE-16GB", (6, 0)), mock_card(80, "NVIDIA A100-SXM4-80GB", (8, 0))
HOST = TABLE_HOST_GIB * GiB


def test_readme_table_is_the_one_the_code_makes():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- plans-table -->\n(.*?)\n<!-- /plans-table -->", text, re.S)
    assert found, "README.md lost its plans table markers"
    assert found.group(1).strip() == plans_table().strip()


CELLS = [(size, gib, n) for size in TABLE_SIZES for gib, _, _ in TABLE_DEVICES for n in TABLE_CARDS]


@pytest.mark.parametrize(("size", "gib", "cards"), CELLS, ids=[f"{s}-{n}x{g}" for s, g, n in CELLS])
def test_every_table_cell_is_the_simplest_plan_that_fits(size, gib, cards):
    card = P100 if gib == 16 else A100
    plan = make_cluster_plan(size, card, gpus=cards, host_bytes=HOST)
    assert plan.fits and plan.estimate_bytes <= plan.card_budget == int(gib * GiB * 0.9)
    assert plan.precision == ("fp16" if gib == 16 else "bf16")
    if cards == 1:
        assert plan.strategy == "single" and plan.per_card == plan.single.estimate
        return
    world, prec = cards, plan.precision

    def lightest(s):  # what a strategy needs at its smallest (micro-batch 1, checkpointing)
        return _estimate(s, get_preset(size), prec, world, 1, 512, True).total

    order = ["ddp", "fsdp", "fsdp-offload", "nf4-lora"]
    chosen = order.index(plan.strategy)
    for simpler in order[:chosen]:  # each simpler strategy was refused for a reason
        too_big = lightest(simpler) > plan.card_budget
        no_host = simpler == "fsdp-offload" and plan.host_budget < 16 * count_parameters(size).total
        assert too_big or no_host, f"{simpler} would have fit"
    assert plan.reason
    if plan.strategy == "fsdp":
        assert f"over {cards} processes" in plan.reason and plan.per_card.optimizer < lightest("ddp") / cards


def test_sharding_divides_the_state_and_the_reasons_say_why():
    p = make_cluster_plan("pythia-6.9b", A100, gpus=2, host_bytes=HOST)
    assert p.strategy == "fsdp" and "DDP) needs 164" in p.reason  # a full copy: 18 B/param, activations, slack
    p4 = make_cluster_plan("pythia-6.9b", A100, gpus=4, host_bytes=HOST)
    assert p4.strategy == "fsdp" and p4.per_card.optimizer * 2 == pytest.approx(p.per_card.optimizer, rel=1e-6)
    off = make_cluster_plan("pythia-2.8b", P100, gpus=2, host_bytes=HOST)
    assert off.strategy == "fsdp-offload" and off.per_card.optimizer == 0
    assert off.host_need == pytest.approx(16 * 2.8e9, rel=0.05) and "host" in off.report()
    small_host = make_cluster_plan("pythia-2.8b", P100, gpus=2, host_bytes=32 * GiB)  # no room to offload
    assert small_host.strategy == "nf4-lora" and "host RAM" in small_host.reason
    four_nodes = make_cluster_plan("pythia-2.8b", P100, gpus=2, nodes=4, host_bytes=HOST)
    assert four_nodes.world == 8 and four_nodes.strategy == "fsdp"  # 8 shards fit where 2 did not


def test_nothing_fits_is_refused_with_the_numbers_and_how_many_cards_would_do():
    p = make_cluster_plan("pythia-12b", P100, gpus=2, strategy="fsdp", host_bytes=HOST)
    assert not p.fits and "nothing fits 14.4 GiB per card" in p.reason and "FSDP" in p.reason
    assert p.alternative and "FSDP full-shard over 32 cards" in p.alternative
    assert "DOES NOT FIT" in p.report()
    tiny_card = mock_card(2, "small GPU", (7, 5))
    none = make_cluster_plan("pythia-12b", tiny_card, gpus=8, host_bytes=HOST)
    assert not none.fits and "NF4+LoRA" in none.reason


def test_cpu_processes_run_ddp_only_and_share_the_machine_s_ram():
    cpu = DeviceInfo(kind="cpu", name="x86_64", total_bytes=24 * GiB, available_bytes=22 * GiB)
    p = make_cluster_plan("kala-tiny", cpu, gpus=2, host_bytes=22 * GiB)
    assert p.fits and p.strategy == "ddp" and p.card_budget == int(22 * GiB * 0.8) // 2
    refused = make_cluster_plan("kala-tiny", cpu, gpus=2, strategy="fsdp", host_bytes=22 * GiB)
    assert not refused.fits and "needs CUDA GPUs" in refused.reason


def _fake_cuda(monkeypatch, count: int, gib: int, cc: tuple[int, int]):
    import torch

    props = types.SimpleNamespace(name=f"Mock GPU {gib}GB", major=cc[0], minor=cc[1], total_memory=gib * GiB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: [f"sm_{cc[0]}{cc[1]}"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (gib * GiB, gib * GiB))


def test_kala_doctor_gpus_plans_over_the_mocked_cards(monkeypatch):
    _fake_cuda(monkeypatch, 4, 16, (6, 0))
    code, out, err, exc = run_cli(["doctor", "--base", "pythia-1b", "--gpus", "4", "--json"])
    assert exc is None, exc
    plan = json.loads(out)["plan"]
    assert (plan["strategy"], plan["gpus"], plan["precision"]) == ("fsdp", 4, "fp16")
    assert plan["fits"] and plan["estimate_bytes"] <= 16 * GiB * 0.9
    code, out, err, exc = run_cli(["doctor", "--base", "pythia-1b", "--gpus", "8", "--nodes", "2"])
    assert "FSDP over 8 card(s) x 2 machine(s) = 16 processes" in out
    assert "this machine shows 4 GPU(s); the plan is for 8" in out
    code, out, err, exc = run_cli(["doctor", "--base", "pythia-1b", "--gpus", "0"])
    assert code == 2 and "--gpus and --nodes must be >= 1" in err
