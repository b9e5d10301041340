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


def _string_lookups() -> set[str]:
    """Engine modules kala_app/engine_api.py still reaches by string (``_attr``/``_module``)."""
    tree = ast.parse((APP / "engine_api.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_attr", "_module")
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def test_engine_api_imports_the_engine_functions_it_calls():
    """Go-to-definition works: these engine modules are imported directly, never looked up by name."""
    assert _string_lookups().isdisjoint({"kala_engine.hub", "kala_engine.doctor", "kala_engine.training"})
