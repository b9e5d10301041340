"""The app never reaches torch or transformers itself (issue 14, item 1).

``lint-imports`` (pyproject.toml) catches ``import torch`` in kala_app; this catches what it cannot
see: a module named by a string (``importlib.import_module("torch")``, ``__import__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "kala_app"
FORBIDDEN = ("torch", "transformers")


def _names_forbidden(value: object) -> bool:
    return isinstance(value, str) and any(value == f or value.startswith(f + ".") for f in FORBIDDEN)


def test_no_app_module_names_torch_or_transformers_as_a_module_string():
    found = []
    for p in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in ("import_module", "__import__") and _names_forbidden(node.args[0].value):
                    found.append(f"{p.relative_to(APP.parent)}:{node.lineno}")
    assert found == []


def test_device_summary_comes_from_the_engine(monkeypatch):
    """The status bar line is the engine's (kala_engine.doctor.device_summary), not worked out in the app."""
    import kala_engine.doctor as doctor
    from kala_app import engine_api

    monkeypatch.setattr(doctor, "device_summary", lambda: "CPU (from the engine)")
    assert engine_api.device_summary() == "CPU (from the engine)"


def test_engine_api_has_no_string_lookups():
    """Go-to-definition works: engine_api imports the engine functions it calls, none is looked up by
    name (the old ``_attr``/``_module``/``_call_with_supported`` guessing layer is gone)."""
    tree = ast.parse((APP / "engine_api.py").read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert names.isdisjoint({"_attr", "_module", "_call_with_supported", "_get", "getattr"})


def test_no_app_module_looks_up_an_engine_function_by_name():
    """``importlib.import_module("kala_engine...")`` hides the call from go-to-definition and turns a
    rename into a silent fallback; the app imports the engine's functions instead."""
    found = []
    for p in sorted(APP.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str) and node.args[0].value.startswith("kala_engine")
                    and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
                found.append(f"{p.relative_to(APP.parent)}:{node.lineno}")
    assert found == []


def test_doctor_report_is_the_engines_plan(monkeypatch):
    """The doctor panel shows the engine's Plan field for field (no guessing over field names)."""
    import kala_engine.doctor as engine_doctor
    from kala_app import engine_api

    plan = engine_doctor.diagnose("kala-tiny")
    monkeypatch.setattr(engine_doctor, "diagnose", lambda base: plan)  # one plan: free memory moves
    rep = engine_api.doctor("kala-tiny")
    assert (rep.device, rep.precision, rep.mode, rep.fits, rep.reason, rep.base_problem) == (
        plan.device.name, plan.precision, plan.mode, plan.fits, plan.reason, plan.base_problem)
    assert rep.estimate_bytes == plan.estimate_bytes and rep.available_bytes == plan.available_bytes
    assert rep.lines == plan.lines
    if plan.device.kernels_present is None:
        assert (rep.kernels, rep.compute_capability) == ("-", "-")
