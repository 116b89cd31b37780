"""Stage `ra3 world`: the synthetic code world, the embedded default of the whole pipeline.

Tasks are Python functions `f(xs)` over a list of ints whose expert solutions compose 2-3 (configurable) multi-line
idioms (`idioms.py`); the true plan (idiom sequence and line spans) is stored with each task, as ground
truth for latent recovery. Files written to `out_dir`:
- `pretrain.jsonl`: {task_id, text, commented}: whole programs; in about half of them (`comment_rate`) a
  comment line before each idiom describes it (its canonical name in 3 of 4 wordings).
- `demos.jsonl`: {task_id, prompt, completion, plan, ...}: mid-training demonstrations, raw expert code.
- `rl_tasks.jsonl`, `eval_tasks.jsonl`: `Problem` records (`benchmarks.save_problems`) with functional
  tests whose expected outputs come from running the expert solution in the sandbox.
- `world.json`: config, statistics, SHA-256 of every file (deterministic given the config);
  `compute.json`: build wall time and sandbox use (varies run to run).

Design choices (world-notes.md) and departures from the paper:
1. The paper mid-trains on real Python; at CPU scale the world is synthetic so that the plan is known and
   a 2M-parameter model can learn it. Its design makes the plan the bottleneck: goal-style statements
   (`goal_fraction`) from which the plan must be inferred, 2-3 steps per program by default, fixed variable names and
   few constants, so detail errors are rare.
2. Compositions (idiom sequences) are disjoint between splits, so held-out tasks need unseen plans.
3. RL and held-out tasks have informative tests, chosen among random inputs: the outputs are not all
   equal and leaving out any one step changes some output, so a program that skips a step fails. Plans
   with a step that changes nothing (a sort before a total) are redrawn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ra3.benchmarks import Problem, load_world, save_problems
from ra3.config import Config, ConfigError, config_to_dict, option
from ra3.files import atomic_write_text, provenance, read_jsonl, write_jsonl
from ra3.sandbox import FunctionalTest, Job, Limits, record_outputs, run_jobs
from ra3.world.tasks import (
    ENTRY_POINT,
    Task,
    annotate,
    function_source,
    pretraining_comments,
    sample_inputs,
    sample_task,
)

logger = logging.getLogger(__name__)
FILES = {"pretrain": "pretrain.jsonl", "demos": "demos.jsonl", "rl": "rl_tasks.jsonl", "eval": "eval_tasks.jsonl"}
RECORD_BATCH = 400  # functions per recording job: one job (and one sandbox round trip) per batch


@dataclass
class WorldConfig(Config):
    """Build the synthetic code world: pretraining corpus, demonstrations, RL and held-out tasks."""

    out_dir: Path = option(Path("runs/world"), "output directory")
    seed: int = option(0, "world seed: same seed and config give byte-identical files")
    pretrain_programs: int = option(30000, "programs in the pretraining corpus", at_least=0)
    demos: int = option(4000, "mid-training demonstrations (raw expert code)", at_least=0)
    rl_tasks: int = option(500, "RL training tasks (with tests)", at_least=0)
    eval_tasks: int = option(400, "held-out evaluation tasks (with tests; >= 300 for statistical power)", at_least=0)
    min_steps: int = option(2, "fewest idioms per program", at_least=1)
    max_steps: int = option(3, "most idioms per program (at the CPU budget, 3-5 left no measurable room: "
                            "BENCHMARKS.md)")
    max_lines: int = option(25, "longest function body, in lines (longer plans are redrawn)")
    final_rate: float = option(0.75, "share of programs whose last idiom reduces the list (total, join, ...); "
                               "the others return the list", at_least=0, at_most=1)
    goal_fraction: float = option(0.3, "share of goal-style statements (one nested phrase; the plan must be "
                                  "inferred); the others list the steps in order", at_least=0, at_most=1)
    comment_rate: float = option(0.5, "share of pretraining programs with a comment before each idiom "
                                 "(world-notes: keep near 1/2 so the scorer still uses comments)", at_least=0, at_most=1)
    tests: int = option(5, "test cases per task", at_least=2)
    candidate_inputs: int = option(20, "random inputs per RL/held-out task from which its tests are chosen")
    time_limit: float = option(5.0, "wall seconds a program gets for all of a task's tests", above=0)
    verify_tasks: int = option(200, "RL/held-out tasks whose expert solution is run through Problem.job in "
                               "the sandbox for the pass@1 statistic (0: all)", at_least=0)
    workers: int = option(0, "parallel sandbox runs (0: one per CPU core)", at_least=0)

    def __post_init__(self):
        super().__post_init__()
        if self.min_steps > self.max_steps or self.tests > self.candidate_inputs:
            raise ConfigError(f"need min_steps <= max_steps and tests <= candidate_inputs, got {self.min_steps}, "
                              f"{self.max_steps}, {self.tests}, {self.candidate_inputs}")
        if self.max_lines < 4 * self.min_steps:
            raise ConfigError(f"max_lines={self.max_lines} leaves no room for {self.min_steps} idioms")


def _rng(cfg: WorldConfig, split: str) -> random.Random:
    # one stream per split: changing one split's size never changes another split's tasks
    return random.Random(f"ra3-world/{cfg.seed}/{split}")


def _sample(cfg: WorldConfig, split: str, rng: random.Random, index: int) -> Task:
    return sample_task(rng, split, index, cfg.seed, min_steps=cfg.min_steps, max_steps=cfg.max_steps,
                       final_rate=cfg.final_rate, goal_fraction=cfg.goal_fraction, max_lines=cfg.max_lines)


# --------------------------------------------------------------------------- recording expected outputs

def record_functions(functions: list[tuple[str, list[list]]], workers: int | None = None) -> list[list]:
    """Return values of trusted function sources on their argument lists, through `sandbox.record_outputs`.

    Each item is (source of `def f(xs): ...`, argument lists). Functions are renamed and batched, many
    per sandbox run, behind one dispatching entry point: starting an interpreter costs more than running
    a few hundred of these functions.
    """
    jobs, sizes = [], []
    for lo in range(0, len(functions), RECORD_BATCH):
        batch = functions[lo:lo + RECORD_BATCH]
        sources = [src.replace(f"def {ENTRY_POINT}(", f"def _f{j}(", 1) for j, (src, _) in enumerate(batch)]
        program = "\n".join(sources) + (f"\n_FUNCTIONS = [{', '.join(f'_f{j}' for j in range(len(batch)))}]\n\n\n"
                                        "def _ra3_world(j, *args):\n    return _FUNCTIONS[j](*args)\n")
        inputs = [[j, *args] for j, (_, cases) in enumerate(batch) for args in cases]
        jobs.append(Job(program, FunctionalTest(inputs, [None] * len(inputs)), "_ra3_world", Limits(timeout=120.0)))
        sizes.append([len(cases) for _, cases in batch])
    outputs = []
    for rec, batch_sizes in zip(record_outputs(jobs, workers=workers), sizes, strict=True):
        if rec.outputs is None:
            raise RuntimeError(f"an expert solution did not run (a bug in the idiom library): {rec.verdict.detail}")
        it = iter(rec.outputs)
        outputs += [[next(it) for _ in range(n)] for n in batch_sizes]
    return outputs


def choose_tests(outputs: list, ablated: list[list], n: int) -> list[int] | None:
    """Indices of at most `n` candidate inputs making an informative test suite, or None if there is none.

    Informative: for every ablation (the plan with one step left out) some chosen input's output differs
    from the expert's, and the chosen outputs are not all equal, so a program that skips a step, or one
    that returns a constant, fails. Greedy set cover over the ablations, then inputs with new outputs.
    Outputs are compared by repr, type-strictly (True is not 1), as the sandbox compares them.
    """
    key = [repr(o) for o in outputs]
    catches = [{i for i, o in enumerate(a) if repr(o) != key[i]} for a in ablated]
    if not all(catches):
        return None
    chosen: list[int] = []
    uncovered = list(range(len(ablated)))
    while uncovered:
        best = max(sorted(set().union(*(catches[j] for j in uncovered))),
                   key=lambda i: sum(i in catches[j] for j in uncovered))
        chosen.append(best)
        uncovered = [j for j in uncovered if best not in catches[j]]
    for i in range(len(key)):  # fill with inputs whose output is new, then with any
        if len(chosen) < n and i not in chosen and key[i] not in {key[c] for c in chosen}:
            chosen.append(i)
    chosen += [i for i in range(len(key)) if i not in chosen][: max(n - len(chosen), 0)]
    if len(chosen) > n or len({key[i] for i in chosen}) < 2:
        return None
    return sorted(chosen)


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


# --------------------------------------------------------------------------- records and files

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


def load_tasks(path: str | Path, split: str = "eval") -> list[Problem]:
    """The world's RL (`split="rl"`) or held-out (`"eval"`) tasks (`benchmarks.load_world`)."""
    return load_world(path, split)


def load_demos(path: str | Path) -> list[dict]:
    """The world's demonstrations (from a world directory or `demos.jsonl`)."""
    path = Path(path)
    return read_jsonl(path / FILES["demos"] if path.is_dir() else path,
                      required=("task_id", "prompt", "completion", "plan"))


# --------------------------------------------------------------------------- building, statistics, the stage

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


def _complete(out: Path, cfg: WorldConfig) -> bool:
    """A world with this config was written here and its files are unchanged."""
    meta = out / "world.json"
    if not meta.is_file():
        return False
    written = json.loads(meta.read_text())
    hashes = written.get("provenance", {}).get("data_sha256", {})
    return (written.get("config") == config_to_dict(cfg) and set(hashes) == set(FILES)
            and provenance(cfg.seed, **{k: out / f for k, f in FILES.items()})["data_sha256"] == hashes)


def write_world(world: World, cfg: WorldConfig, out: Path) -> None:
    """The four data files (atomic writes)."""
    write_jsonl(out / FILES["pretrain"], ({"task_id": t.task_id, "text": text, "commented": c,
                                           "idioms": list(t.composition)}
                                          for t, text, c in zip(world.tasks["pretrain"], world.texts,
                                                                world.commented, strict=True)))
    write_jsonl(out / FILES["demos"], map(demo_record, world.tasks["demos"]))
    for split in ("rl", "eval"):
        save_problems(out / FILES[split], [to_problem(t, inputs, outputs, cfg.time_limit)
                                           for t, (inputs, outputs) in zip(world.tasks[split], world.tests[split],
                                                                           strict=True)])


def run(cfg: WorldConfig) -> Path:
    """Build the world into `cfg.out_dir` (or keep the one there if it has this config); returns the dir."""
    out = Path(cfg.out_dir)
    if _complete(out, cfg):
        logger.info("%s already holds this world; keeping it", out)
        return out
    start = time.time()
    world = build_world(cfg)
    built = time.time()
    write_world(world, cfg, out)
    # verify what a user loads back, so that the serialisation is checked too
    loaded = load_tasks(out, "rl") + load_tasks(out, "eval")
    verification = verify_experts(loaded, cfg.verify_tasks, cfg.seed, cfg.workers or None)
    if verification["pass@1"] < 1.0:
        raise RuntimeError(f"expert solutions fail their own tests: {verification['failures']}")
    stats = world_stats(world)
    stats["expert_pass@1"] = {k: v for k, v in verification.items() if k not in ("failures", "isolation")}
    prov = provenance(cfg.seed, **{k: out / f for k, f in FILES.items()})
    world_hash = hashlib.sha256(json.dumps(prov["data_sha256"], sort_keys=True).encode()).hexdigest()
    atomic_write_text(out / "world.json", json.dumps({"config": config_to_dict(cfg), "stats": stats,
                                                      "world_sha256": world_hash, "provenance": prov}, indent=2) + "\n")
    compute = {"wall_s": round(time.time() - start, 2), "build_s": round(built - start, 2),
               "verify_s": round(time.time() - built, 2), "sandbox_isolation": verification["isolation"]}
    atomic_write_text(out / "compute.json", json.dumps(compute, indent=2) + "\n")
    logger.info("world: %s", json.dumps({s: v["programs"] for s, v in stats["splits"].items()}))
    return out
