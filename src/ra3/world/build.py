"""Building the world in memory: every split sampled from its own seeded stream, RL and held-out tasks
with informative tests, the records each file holds, and the world's statistics."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

from ra3.benchmarks import Problem
from ra3.config import ConfigError
from ra3.sandbox import FunctionalTest, run_jobs
from ra3.world.config import WorldConfig
from ra3.world.suites import choose_tests, record_functions
from ra3.world.tasks import (
    ENTRY_POINT,
    Task,
    annotate,
    function_source,
    pretraining_comments,
    sample_inputs,
    sample_task,
)


def _rng(cfg: WorldConfig, split: str) -> random.Random:
    # one stream per split: changing one split's size never changes another split's tasks
    return random.Random(f"ra3-world/{cfg.seed}/{split}")


def _sample(cfg: WorldConfig, split: str, rng: random.Random, index: int) -> Task:
    return sample_task(rng, split, index, cfg.seed, min_steps=cfg.min_steps, max_steps=cfg.max_steps,
                       final_rate=cfg.final_rate, goal_fraction=cfg.goal_fraction, max_lines=cfg.max_lines)


def tested_tasks(cfg: WorldConfig, split: str, n: int) -> tuple[list[tuple[Task, list, list]], int]:
    """`n` tasks of `split` with informative tests: [(task, inputs, outputs)], and how many were rejected.

    Each candidate is run on `candidate_inputs` random inputs, with its whole plan and with each one-step
    ablation (in batched sandbox runs); its `tests` inputs are chosen among them (`choose_tests`).
    """
    rng, accepted, seen, drawn = _rng(cfg, split), [], set(), 0
    while len(accepted) < n:
        if drawn > 20 * n + 1000:
            raise ConfigError(f"{split}: only {len(accepted)} of {drawn} plans had informative tests; allow "
                              "longer plans (max_steps) or more candidate_inputs")
        candidates = []
        while len(candidates) < (n - len(accepted)) * 5 // 4 + 8:
            task = _sample(cfg, split, rng, drawn)
            drawn += 1
            if task.completion not in seen:
                seen.add(task.completion)
                candidates.append((task, sample_inputs(rng, cfg.candidate_inputs)))
        functions = []
        for task, inputs in candidates:
            plans = [task.steps] + [task.steps[:i] + task.steps[i + 1:] for i in range(len(task.steps))]
            functions += [(function_source(ENTRY_POINT, plan), inputs) for plan in plans]
        outputs = iter(record_functions(functions, cfg.workers or None))
        for task, inputs in candidates:
            full, ablated = next(outputs), [next(outputs) for _ in task.steps]
            chosen = choose_tests(full, ablated, cfg.tests)
            if len(accepted) < n and chosen is not None:
                accepted.append((replace(task, task_id=f"world/{split}/{len(accepted)}"),
                                 [inputs[i] for i in chosen], [full[i] for i in chosen]))
    return accepted, drawn - n


# --------------------------------------------------------------------------- records

def to_problem(task: Task, inputs: list, outputs: list, time_limit: float) -> Problem:
    """A task as a `Problem`: the prompt is the code prefix (signature and docstring), the completion the
    body; the metadata holds the expert solution and the true plan."""
    meta = {"source": "world", "split": task.split, "style": task.style, "statement": task.statement,
            "canonical_solution": task.completion,
            "idioms": list(task.composition), "plan": task.plan}
    return Problem(task.task_id, task.prompt, ENTRY_POINT, FunctionalTest(inputs, outputs), time_limit,
                   program_prefix=task.prompt, metadata=meta)


def demo_record(task: Task) -> dict:
    """A mid-training demonstration: prompt and raw expert completion (no comments), with the true plan."""
    return {"task_id": task.task_id, "prompt": task.prompt, "completion": task.completion, "plan": task.plan,
            "idioms": list(task.composition), "style": task.style}


def pretrain_program(task: Task, commented: bool, rng: random.Random) -> str:
    """A corpus program: prompt and body, with a comment before each idiom when `commented`."""
    return task.prompt + (annotate(task.completion, pretraining_comments(task, rng)) if commented
                          else task.completion)


# --------------------------------------------------------------------------- the world and its statistics

@dataclass
class World:
    """Every split's tasks; pretraining texts; the RL/held-out tests [(inputs, outputs)] per task."""

    tasks: dict[str, list[Task]]
    texts: list[str]
    commented: list[bool]
    tests: dict[str, list[tuple[list, list]]]
    rejected: dict[str, int]


def build_world(cfg: WorldConfig) -> World:
    """Sample every split, each from its own seeded stream; RL and held-out tasks get informative tests."""
    rng = _rng(cfg, "pretrain")
    pretrain, texts, commented = [], [], []
    for i in range(cfg.pretrain_programs):
        task = _sample(cfg, "pretrain", rng, i)
        commented.append(rng.random() < cfg.comment_rate)
        texts.append(pretrain_program(task, commented[-1], rng))
        pretrain.append(task)
    demo_rng = _rng(cfg, "demos")
    demos = [_sample(cfg, "demos", demo_rng, i) for i in range(cfg.demos)]
    tasks, tests, rejected = {"pretrain": pretrain, "demos": demos}, {}, {}
    for split, n in (("rl", cfg.rl_tasks), ("eval", cfg.eval_tasks)):
        accepted, rejected[split] = tested_tasks(cfg, split, n)
        tasks[split] = [task for task, _, _ in accepted]
        tests[split] = [(inputs, outputs) for _, inputs, outputs in accepted]
    return World(tasks, texts, commented, tests, rejected)


def _summary(values: list[int]) -> dict:
    if not values:
        return {}
    hist = Counter(values)
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values),
            "histogram": {str(k): hist[k] for k in sorted(hist)}}


def world_stats(world: World) -> dict:
    """Sizes, program lengths (body lines), idioms per program, idiom frequencies, statement styles and the
    pretraining comment rate; per split and over all splits."""
    stats: dict = {"splits": {}}
    everything = [t for tasks in world.tasks.values() for t in tasks]
    for split, tasks in [*world.tasks.items(), ("all", everything)]:
        stats["splits"][split] = {
            "programs": len(tasks), "body_lines": _summary([len(t.lines) for t in tasks]),
            "idioms_per_program": _summary([len(t.steps) for t in tasks]),
            "styles": dict(sorted(Counter(t.style for t in tasks).items())),
            "distinct_compositions": len({t.composition for t in tasks}),
            "idiom_frequency": dict(Counter(s.name for t in tasks for s in t.steps).most_common())}
    n_commented = sum(world.commented)
    stats["pretrain_comment_rate"] = round(n_commented / max(len(world.commented), 1), 4)
    stats["comments_per_commented_program"] = round(
        sum(len(t.steps) for t, c in zip(world.tasks["pretrain"], world.commented, strict=True) if c)
        / max(n_commented, 1), 3)
    stats["rejected_uninformative_tests"] = world.rejected
    return stats


def verify_experts(problems: list[Problem], n: int, seed: int, workers: int | None = None) -> dict:
    """pass@1 of the expert solutions through `Problem.job` in the real sandbox (a seeded sample of `n`
    problems; n=0: all). The world is broken unless it is 1.0."""
    if 0 < n < len(problems):
        problems = random.Random(f"ra3-world/{seed}/verify").sample(problems, n)
    verdicts = run_jobs([p.job(p.metadata["canonical_solution"]) for p in problems], workers=workers)
    failed = [f"{p.task_id}: {v.result}" for p, v in zip(problems, verdicts, strict=True) if not v.passed]
    return {"tasks": len(problems), "passed": len(problems) - len(failed),
            "pass@1": (len(problems) - len(failed)) / max(len(problems), 1), "failures": failed[:5],
            "isolation": list(verdicts[0].isolation) if verdicts else []}
