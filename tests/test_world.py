"""The synthetic world: determinism, disjoint splits, ground-truth plans, and expert solutions that pass
their own tests in the real sandbox."""

from __future__ import annotations

import ast
import json
import random
import shutil
from dataclasses import replace

import pytest

from ra3 import layout
from ra3.benchmarks import load_world
from ra3.config import ConfigError
from ra3.demonstrations import read_demonstrations
from ra3.files import read_jsonl
from ra3.sandbox import run_jobs
from ra3.world import WorldConfig, run
from ra3.world.build import build_world, to_problem
from ra3.world.idioms import IDIOMS, Step
from ra3.world.suites import choose_tests
from ra3.world.tasks import annotate

SMALL = dict(pretrain_programs=400, demos=60, rl_tasks=30, eval_tasks=40, verify_tasks=0, workers=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = WorldConfig(out_dir=tmp_path_factory.mktemp("world") / "w", seed=3, **SMALL)
    return cfg, run(cfg)


def _compositions(out) -> dict[str, set[tuple[str, ...]]]:
    found = {s: {tuple(r["idioms"]) for r in read_jsonl(layout.world_file(out, s))} for s in ("pretrain", "demos")}
    found.update({s: {tuple(p.metadata["idioms"]) for p in load_world(out, s)} for s in ("rl", "eval")})
    return found


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    cfg = WorldConfig(out_dir=tmp_path / "w", seed=1, pretrain_programs=200, demos=20, rl_tasks=10,
                      eval_tasks=10, verify_tasks=4, workers=2)
    names = sorted([*layout.WORLD_FILES.values(), "world.json"])
    first = {n: (run(cfg) / n).read_bytes() for n in names}
    shutil.rmtree(cfg.out_dir)
    assert {n: (run(cfg) / n).read_bytes() for n in names} == first
    other = run(replace(cfg, seed=2, out_dir=tmp_path / "other"))
    assert all((other / n).read_bytes() != first[n] for n in layout.WORLD_FILES.values())


def test_rerun_keeps_a_complete_world(world):
    cfg, out = world
    before = {n: (out / n).stat().st_mtime_ns for n in layout.WORLD_FILES.values()}
    run(cfg)
    assert {n: (out / n).stat().st_mtime_ns for n in layout.WORLD_FILES.values()} == before


def test_splits_have_disjoint_compositions_and_the_configured_sizes(world):
    cfg, out = world
    found = _compositions(out)
    splits = sorted(found)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not found[a] & found[b], (a, b)
    assert [len(read_jsonl(layout.world_file(out, s))) for s in ("pretrain", "demos")] == [cfg.pretrain_programs, cfg.demos]
    assert [len(load_world(out, s)) for s in ("rl", "eval")] == [cfg.rl_tasks, cfg.eval_tasks]


def test_every_idiom_appears(world):
    _, out = world
    used = {name for comps in _compositions(out).values() for comp in comps for name in comp}
    assert used == set(IDIOMS) and len(IDIOMS) >= 12


def test_expert_solutions_parse_and_pass_their_tests_in_the_sandbox(world):
    cfg, out = world
    problems = load_world(out, "rl") + load_world(out, "eval")
    for p in problems:
        ast.parse(p.program(p.metadata["canonical_solution"]))
        assert p.prompt.endswith('"""\n') and p.program_prefix == p.prompt and p.entry_point == "f"
        assert len(p.tests.inputs) == cfg.tests
    verdicts = run_jobs([p.job(p.metadata["canonical_solution"]) for p in problems], workers=2)
    assert [v.status for v in verdicts] == ["pass"] * len(problems)
    stats = json.loads((out / "world.json").read_text())["stats"]
    assert stats["expert_pass@1"] == {"tasks": len(problems), "passed": len(problems), "pass@1": 1.0}


def test_a_wrong_plan_fails_the_tests(world):
    """Tests are informative: leaving out any one step of the expert plan fails some test."""
    _, out = world
    problems = load_world(out, "eval")[:10]
    jobs = []
    for p in problems:
        lines = p.metadata["canonical_solution"].splitlines(keepends=True)
        for step in p.metadata["plan"][:-1]:  # dropping a transform keeps the program valid
            jobs.append(p.job("".join(lines[:step["start"]] + lines[step["end"]:])))
    assert jobs and not any(v.passed for v in run_jobs(jobs, workers=2))


def test_plan_spans_tile_the_solution_and_hold_each_idiom_code(world):
    _, out = world
    records = [(r["completion"], r["plan"]) for r in read_demonstrations(layout.world_file(out, "demos"), also=("plan",))]
    records += [(p.metadata["canonical_solution"], p.metadata["plan"]) for p in load_world(out, "eval")]
    for completion, plan in records:
        lines = completion.splitlines()
        assert [s["start"] for s in plan] == [0] + [s["end"] for s in plan[:-1]]
        assert plan[-1]["end"] == len(lines)
        for i, s in enumerate(plan):
            step = Step(IDIOMS[s["idiom"]], s["variant"], tuple(sorted(s["params"].items())))
            expected = ["    " + line for line in step.lines(last=i == len(plan) - 1)]
            assert lines[s["start"]:s["end"]] == expected


def test_comments_keep_programs_valid_and_passing(world):
    _, out = world
    rng = random.Random(0)
    problems = load_world(out, "eval")[:12]
    jobs = []
    for p in problems:
        body = p.metadata["canonical_solution"]
        n = len(body.splitlines())
        for where in ([s["start"] for s in p.metadata["plan"]], range(n), rng.sample(range(n), 3)):
            annotated = annotate(body, {t: f"{p.metadata['plan'][0]['idiom']} step {t}" for t in where})
            ast.parse(p.program(annotated))
            lines = annotated.splitlines()
            for i, line in enumerate(lines[:-1]):
                if line.lstrip().startswith("#"):
                    nxt = lines[i + 1]
                    assert line[: len(line) - len(line.lstrip())] == nxt[: len(nxt) - len(nxt.lstrip())]
            jobs.append(p.job(annotated))
    assert all(v.passed for v in run_jobs(jobs, workers=2))
    with pytest.raises(ValueError):
        annotate("    return 1\n", {1: "past the end"})


def test_pretraining_comments_name_the_idioms_in_about_half_the_programs(world):
    _, out = world
    records = read_jsonl(layout.world_file(out, "pretrain"))
    commented = [r for r in records if r["commented"]]
    assert 0.4 < len(commented) / len(records) < 0.6
    named = total = 0
    for r in records:
        comments = [line.strip()[2:] for line in r["text"].splitlines() if line.lstrip().startswith("#")]
        assert len(comments) == (len(r["idioms"]) if r["commented"] else 0)
        named += sum(name in c for name, c in zip(r["idioms"], comments, strict=False))
        total += len(comments)
    assert 0.6 < named / total < 0.9  # 3 of 4 wordings carry the canonical name
    stats = json.loads((out / "world.json").read_text())["stats"]
    assert stats["pretrain_comment_rate"] == round(len(commented) / len(records), 4)


def test_loader_round_trips_the_problems(world):
    cfg, out = world
    built = build_world(cfg)
    for split in ("rl", "eval"):
        expected = [to_problem(t, inputs, outputs, cfg.time_limit)
                    for t, (inputs, outputs) in zip(built.tasks[split], built.tests[split], strict=True)]
        assert load_world(out, split) == expected
        assert load_world(layout.world_file(out, split)) == expected
    assert [r["completion"] for r in read_demonstrations(layout.world_file(out, "demos"), also=("plan",))] == [t.completion for t in built.tasks["demos"]]


def test_statements_give_the_plan(world):
    """Steps statements list every step in order; goal statements nest one bracket level per step."""
    _, out = world
    for p in load_world(out, "eval"):
        statement, plan = p.metadata["statement"], p.metadata["plan"]
        if p.metadata["style"] == "steps":
            assert statement.startswith("Steps: ") and statement.count("; then ") >= len(plan) - 1
        else:
            assert statement.startswith("Return ")
            assert statement.count("(") - statement.count("(-1") - statement.count("(0 if") == len(plan) - 1


def test_choose_tests_covers_every_ablation_and_needs_two_distinct_outputs():
    outputs, ablated = [1, 1, 2], [[1, 5, 2], [3, 1, 2]]  # input 1 catches ablation 0, input 0 ablation 1
    assert choose_tests(outputs, ablated, 3) == [0, 1, 2]
    assert choose_tests(outputs, ablated, 2) is None  # inputs 0 and 1 both give 1: a constant passes
    assert choose_tests(outputs, [[1, 1, 2]], 3) is None  # a step that changes nothing
    assert choose_tests([True, 2], [[1, 2]], 2) == [0, 1]  # True is not 1: compared type-strictly


@pytest.mark.parametrize("bad", [{"min_steps": 0}, {"min_steps": 4, "max_steps": 3}, {"comment_rate": 1.5},
                                 {"tests": 1}, {"eval_tasks": -1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        WorldConfig(**bad)
