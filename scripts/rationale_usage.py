"""Do a model's own rationales help it? Pass rate of held-out world samples split by whether the completion
writes comment lines, and (with comments) whether every comment names the idiom of the step it precedes
in the true plan order, and whether each also agrees with its step's detail (`estep.states_detail`).

    python scripts/rationale_usage.py runs/demo/world/eval_tasks.jsonl runs/demo/eval/ra3-s0/world-greedy_results.jsonl ...
"""

from __future__ import annotations

import sys
from collections import Counter

from ra3.benchmarks import load_problems
from ra3.estep_metrics import names_idiom, states_detail
from ra3.files import read_jsonl


def comments(completion: str) -> list[str]:
    return [line.strip()[1:].strip() for line in completion.splitlines() if line.strip().startswith("#")]


def names_plan(texts: list[str], plan: list[dict]) -> bool:
    """The comments are the plan: one per step, in order, each containing its idiom's name."""
    return len(texts) == len(plan) and all(names_idiom(t, p["idiom"]) for t, p in zip(texts, plan, strict=True))


def states_plan(texts: list[str], plan: list[dict]) -> bool:
    """names_plan, and every comment agrees with its step's detail (constant or comparison)."""
    return names_plan(texts, plan) and all(states_detail(t, p["detail"], tuple(p["params"].values()))
                                           for t, p in zip(texts, plan, strict=True))


def group(texts: list[str], plan: list[dict]) -> str:
    if not texts:
        return "no comments"
    if states_plan(texts, plan):
        return "comments = plan with details"
    return "comments = plan, a detail wrong or missing" if names_plan(texts, plan) else "comments, other"


def main(tasks_file: str, *results_files: str) -> None:
    plans = {p.task_id: p.metadata["plan"] for p in load_problems(tasks_file)}
    for path in results_files:
        groups: Counter = Counter()
        passed: Counter = Counter()
        for r in read_jsonl(path):
            g = group(comments(r["completion"]), plans[r["task_id"]])
            groups[g] += 1
            passed[g] += bool(r["passed"])
        total = sum(groups.values())
        cells = [f"{g}: {groups[g]}/{total} samples, pass {passed[g] / groups[g]:.3f}" for g in sorted(groups)]
        print(f"{path}: " + "; ".join(cells))


if __name__ == "__main__":
    main(*sys.argv[1:])
