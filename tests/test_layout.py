"""The house rules that keep the package readable (style.md): components never import stages, every stage
has one `run`, no function over 80 lines, no module over 600."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ra3"
FILES = {(p.parent.name if p.stem == "__init__" else p.stem): p
         for p in sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("*/*.py")) if p != PACKAGE / "__init__.py"}
MODULES = {name: ast.parse(path.read_text()) for name, path in FILES.items()}
STAGES = {name for name, tree in MODULES.items()
          if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body)}


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ra3"):
            parts = node.module.split(".")
            found |= {parts[-1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[-1] for a in node.names if a.name.startswith("ra3.")}
    return found


def test_there_are_components_and_stages():
    assert {"sandbox", "models", "objectives", "latents", "sft", "sampling"} <= set(MODULES) - STAGES
    assert {"ntp", "pretrain", "estep", "ra3", "generate"} <= STAGES


@pytest.mark.parametrize("name", sorted(set(MODULES) - STAGES - {"cli"}))
def test_components_never_import_stages(name):
    assert _imports(MODULES[name]) & STAGES == set()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_size_limits(name):
    source = FILES[name].read_text()
    assert source.count("\n") <= 600, f"{name}.py has {source.count(chr(10))} lines"
    for node in ast.walk(MODULES[name]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{name}.{node.name} is {length} lines"
