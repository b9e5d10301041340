"""The one violation rule and the one threshold resolution (kala_engine.constitution owns both)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kala_engine.constitution import (
    NUM_LAWS,
    first_layer_under,
    first_violated,
    is_violated,
    law_titles,
    load_constitution,
    resolve_thresholds,
    saved_thresholds,
    thresholds_in_force,
    violated_laws,
)


def test_a_law_is_violated_strictly_under_its_threshold_and_priority_is_the_lowest_index():
    assert violated_laws([0.5, 0.49, 0.9, 0.1, 0.5], [0.5] * 5) == [1, 3]
    assert first_violated([0.9, 0.49, 0.9, 0.1, 0.5], [0.5] * 5) == 1  # not Law 3, the lowest score
    assert first_violated([0.9] * 5, [0.5] * 5) is None
    # a threshold of 0 never fires; 1.0 always does (a float32 sigmoid can round to exactly 1.0)
    assert violated_laws([1.0, 1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.5, 0.5]) == [1]


def test_the_rule_is_the_same_on_tensors_as_on_numbers():
    scores = torch.tensor([[0.2, 0.7, 0.5, 0.49, 1.0], [1.0, 1.0, 0.0, 0.3, 0.9]])
    thr = torch.tensor([0.0, 1.0, 0.5, 0.3, 0.9])
    got = is_violated(scores, thr)  # what the batched stopping criteria evaluate
    for b in range(2):
        expected = violated_laws(scores[b].tolist(), thr.tolist())
        assert got[b].nonzero().flatten().tolist() == expected


def test_first_layer_under_names_the_decision_paths_first_layer():
    assert first_layer_under([0.9, 0.4, 0.2], 0.5) == 1
    assert first_layer_under([0.9, 0.8], 0.5) is None


def test_resolution_explicit_then_calibrated_then_the_constitutions():
    con = load_constitution().thresholds
    assert resolve_thresholds(None) == tuple(con)
    assert resolve_thresholds(None, [None, 0.8, None, 0.2, None]) == (con[0], 0.8, con[2], 0.2, con[4])
    assert resolve_thresholds(0.3, [None, 0.8, None, 0.2, None]) == (0.3,) * NUM_LAWS  # explicit wins
    assert resolve_thresholds([0.1, 0.2, 0.3, 0.4, 0.5]) == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert resolve_thresholds([0.4]) == (0.4,) * NUM_LAWS
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_thresholds(1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        resolve_thresholds(float("nan"))
    with pytest.raises(ValueError, match="one per law"):
        resolve_thresholds([0.5, 0.5])


def test_thresholds_in_force_for_a_saved_model_folder(tmp_path):
    con = load_constitution().thresholds
    model = tmp_path / "final"
    model.mkdir()
    assert thresholds_in_force(None, model) == tuple(con)  # no config.json: the constitution's
    (model / "config.json").write_text("{not json", encoding="utf-8")
    assert thresholds_in_force(None, model) == tuple(con)  # damaged: the constitution's, no crash
    (model / "config.json").write_text(json.dumps({"law_thresholds": [0.31, None, "x", 1.7, 0.66]}),
                                       encoding="utf-8")
    assert saved_thresholds(model) == [0.31, None, None, None, 0.66]  # bad entries: the constitution's
    assert thresholds_in_force(None, model) == (0.31, con[1], con[2], con[3], 0.66)
    assert thresholds_in_force(0.2, model) == (0.2,) * NUM_LAWS
    assert thresholds_in_force(None, None) == tuple(con)


def test_law_titles_come_from_the_constitution():
    assert law_titles() == tuple(law.title for law in load_constitution())
    assert len(law_titles()) == NUM_LAWS


def test_the_rule_module_does_not_import_torch():
    """The app imports it (the gauge, the chat page): it must stay torch-free."""
    code = "import sys, kala_engine.constitution; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_num_laws_has_one_definition():
    from kala_engine import constitution
    from kala_engine.model import modeling_kala

    assert modeling_kala.NUM_LAWS is constitution.NUM_LAWS
