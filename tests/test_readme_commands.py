"""The README's command table names every `kala` command the parser has (and nothing it lacks)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kala_engine.cli.main import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(parser: argparse.ArgumentParser, prefix: str = "kala") -> list[str]:
    out = []
    for action in parser._actions:  # argparse has no public walk over sub-parsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _commands(sub, f"{prefix} {name}")
                out.extend(nested or [f"{prefix} {name}"])
    return out


def _table_commands() -> set[str]:
    section = README[README.index("## Command line"):]
    section = section[:section.index("\n## ", 1)]
    found = set()
    for cell in re.findall(r"^\| (.+?) \| ", section, re.M):
        for code in re.findall(r"`(kala [^`]*)`", cell):
            words = [w for w in code.split() if re.fullmatch(r"[a-z][a-z-]*", w)]
            found.add(" ".join(words[:3]))
    return found


def test_every_command_is_in_the_readme_table():
    missing = sorted(set(_commands(build_parser())) - _table_commands())
    assert missing == [], f"commands missing from README's command table: {missing}"


def test_the_readme_table_names_no_command_the_parser_lacks():
    ghosts = sorted(_table_commands() - set(_commands(build_parser())))
    assert ghosts == [], f"README's command table names commands that do not exist: {ghosts}"
