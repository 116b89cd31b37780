"""The house rules that keep the package readable (style.md, issue 15): components never import stages,
every stage has one `run` and a CLI name, docs/architecture.md names only what exists and lists the CLI's
stages in its order, no function over 60 lines, no module over 400."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ra3.cli import STAGES as CLI_STAGES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ra3"


def _module_name(path: Path) -> str:
    """`world/build.py` -> "world.build"; a package's `__init__.py` -> the package's name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"}
MODULES = {name: ast.parse(path.read_text()) for name, path in FILES.items()}
STAGES = {name for name, tree in MODULES.items()
          if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body)}


def _imports(tree: ast.Module) -> set[str]:
    """The ra3 modules a module imports, by dotted name relative to the package."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ra3":
            module = node.module.removeprefix("ra3").removeprefix(".")
            if module:
                found.add(module)
            found |= {f"{module}.{a.name}".lstrip(".") for a in node.names} & set(FILES)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("ra3.") for a in node.names if a.name.startswith("ra3.")}
    return found & set(FILES)


def test_there_are_components_and_stages():
    assert {"sandbox", "models", "objectives", "latents", "ntp_trainer", "sampling", "layout"} <= set(MODULES) - STAGES
    assert {"ntp", "pretrain", "estep", "em", "generate", "world", "demo"} <= STAGES


@pytest.mark.parametrize("name", sorted(set(MODULES) - STAGES - {"cli"}))
def test_components_never_import_stages(name):
    assert _imports(MODULES[name]) & STAGES == set()


def test_every_stage_is_a_cli_stage_and_back():
    """The CLI names a module per stage (`midtrain` names two, one per method); every module with a
    `run` is reachable from the CLI."""
    from ra3.cli import METHODS

    reachable = {module for module, _, _ in CLI_STAGES.values() if module} | {m for m, _ in METHODS.values()}
    assert {f"ra3.{name}" for name in STAGES} == reachable


@pytest.mark.parametrize("name", sorted(MODULES))
def test_size_limits(name):
    source = FILES[name].read_text()
    assert source.count("\n") < 400, f"{name} has {source.count(chr(10))} lines"
    for node in ast.walk(MODULES[name]):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{name}.{node.name} is {length} lines"


# --------------------------------------------------------------------------- docs/architecture.md

ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def test_architecture_lists_the_cli_stages_in_the_cli_order():
    """Its pipeline table's first column is `ra3 <stage>` for every CLI stage, in `ra3 --help` order."""
    listed = re.findall(r"^\| `ra3 ([a-z-]+)[` ]", ARCHITECTURE, flags=re.MULTILINE)
    assert list(dict.fromkeys(listed)) == list(CLI_STAGES)  # `midtrain` has a row per method


def test_every_file_the_architecture_names_exists():
    """Every `src/ra3/...`, `tests/...`, `scripts/...`, `configs/...` or `docs/...` path it names is in the tree,
    and every `ra3.<module>` it names is a module."""
    paths = set(re.findall(r"`((?:src/ra3|tests|scripts|configs|docs)/[\w./-]+)`", ARCHITECTURE))
    assert paths and [p for p in sorted(paths) if not (ROOT / p).exists()] == []
    modules = set(re.findall(r"`ra3\.([a-z_]+(?:\.[a-z_]+)*)", ARCHITECTURE))
    assert modules and [m for m in sorted(modules) if m not in FILES and m.rsplit(".", 1)[0] not in FILES] == []
