"""Do a model's own rationales help it? Pass rate of held-out world samples split by whether the completion
writes comment lines, and (with comments) whether every comment names the idiom of the step it precedes
in the true plan order.

    python benchmarks/rationale_usage.py runs/demo/world/eval_tasks.jsonl runs/demo/eval/ra3-s0/world-greedy_results.jsonl ...
"""

from __future__ import annotations

import sys
from collections import Counter

from ra3.benchmarks import load_problems
from ra3.files import read_jsonl


def comments(completion: str) -> list[str]:
    return [line.strip()[1:].strip() for line in completion.splitlines() if line.strip().startswith("#")]


def names_plan(texts: list[str], plan: list[dict]) -> bool:
    """The comments are the plan: one per step, in order, each containing its idiom's name."""
    names = [p["idiom"].replace("_", " ") for p in plan]
    return len(texts) == len(names) and all(n in t for n, t in zip(names, texts, strict=True))


def main(tasks_file: str, *results_files: str) -> None:
    plans = {p.task_id: p.metadata["plan"] for p in load_problems(tasks_file)}
    for path in results_files:
        groups: Counter = Counter()
        passed: Counter = Counter()
        for r in read_jsonl(path):
            texts = comments(r["completion"])
            group = "no comments" if not texts else ("comments = plan" if names_plan(texts, plans[r["task_id"]])
                                                     else "comments, other")
            groups[group] += 1
            passed[group] += bool(r["passed"])
        total = sum(groups.values())
        cells = [f"{g}: {groups[g]}/{total} samples, pass {passed[g] / groups[g]:.3f}" for g in sorted(groups)]
        print(f"{path}: " + "; ".join(cells))


if __name__ == "__main__":
    main(*sys.argv[1:])
