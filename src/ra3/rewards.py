"""The RLVR reward: what the sandboxed verifier says about a completion (method.md §6). A component.

    r(x, y) = 1 if every unit test of task x passes on program(x, y), else 0
    r(x, y) = 1 on a pass, else min(cases passed, n - 1) / n     (partial credit, off by default; n cases)

`program(x, y)` is `Problem.program(y)`, the program `ra3 evaluate` runs for the same task record and
completion, under the same time limit, so a reward of 1 during training is a pass at evaluation. A pass is
the verdict of the sandbox's judge, a process outside the program's (`ra3.sandbox`), never an exit code:
a completion that calls `sys.exit(0)`, `os._exit(0)`, prints "passed", rebinds builtins or lies in
`__eq__` ends in `error`/`fail` and earns 0. The reward uses the strongest mode there is: every job gets
`Limits(namespaces=True)` (bubblewrap; without it the sandbox warns once and runs with limits only, as an
unprivileged uid when root), and every judge mode is out of process; `judges` and `isolations` count
which judge and isolation made the verdicts. Partial credit counts only cases the judge reported passed,
and it stops at the first failing case, so a program earns the fraction of leading cases it passes; an
assert block (`ScriptTest`) is one case, all or nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from ra3.benchmarks import Problem
from ra3.sandbox import ScriptTest, Tests, Verdict, run_jobs


def count_cases(tests: Tests) -> int:
    """Number of cases a verdict's `tests_passed` counts: one per input, one for an assert block."""
    return 1 if isinstance(tests, ScriptTest) else len(tests.inputs)


def verdict_reward(verdict: Verdict, cases: int, partial_credit: bool = False) -> float:
    """r = 1 for a pass; otherwise 0, or tests_passed / cases with partial credit (never 1 without a pass)."""
    if verdict.passed:
        return 1.0
    if not partial_credit or cases <= 0:
        return 0.0
    return min(verdict.tests_passed, cases - 1) / cases  # a non-pass must score below a pass


class VerifierReward:
    """A TRL reward function: each completion is run against its task's tests in the sandbox, in parallel.

    Called by TRL as `reward(prompts=..., completions=..., task_id=[...], log_metric=..., **columns)`:
    the `task_id` column of the prompt dataset names each completion's `Problem`. Completions arrive
    already cut by the stop rules of `ra3 generate` (the trainer truncates the sampled tokens), so the
    program run here is the program the policy gradient is computed on.
    """

    __name__ = "verifier"  # TRL logs this reward as `rewards/verifier/mean`

    def __init__(self, problems: Mapping[str, Problem], *, partial_credit: bool = False,
                 workers: int | None = None):
        self.problems = dict(problems)
        self.partial_credit = partial_credit
        self.workers = workers
        self.seconds = 0.0  # wall time in the sandbox; these three running totals feed the step-time split
        self.programs = 0
        self.reward_sum = 0.0
        self.judges: Counter[str] = Counter()  # which judge made the verdicts, and under which isolation
        self.isolations: Counter[str] = Counter()

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], task_id: Sequence[str],
                 log_metric: Callable[[str, float], None] | None = None, **_: object) -> list[float]:
        start = time.perf_counter()
        problems = [self.problems[t] for t in task_id]
        jobs = [p.job(c) for p, c in zip(problems, completions, strict=True)]  # default limits: namespaces on
        verdicts = run_jobs(jobs, workers=self.workers)
        self.judges.update(v.judge for v in verdicts)
        self.isolations.update(v.isolation[0] if v.isolation else "" for v in verdicts)
        rewards = [verdict_reward(v, count_cases(p.tests), self.partial_credit)
                   for v, p in zip(verdicts, problems, strict=True)]
        self.seconds += time.perf_counter() - start
        self.programs += len(verdicts)
        self.reward_sum += sum(rewards)
        if log_metric is not None:
            for name, value in verdict_rates(verdicts).items():
                log_metric(name, value)
        return rewards


def verdict_rates(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Fraction of verdicts in each status: `rlvr/pass_rate`, `rlvr/fail_rate`, `rlvr/error_rate`, ..."""
    counts = Counter(v.status for v in verdicts)
    n = max(len(verdicts), 1)
    return {f"rlvr/{status}_rate": counts[status] / n for status in ("pass", "fail", "error", "timeout")}
