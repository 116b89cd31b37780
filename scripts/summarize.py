"""Print the markdown tables of scripts/ntp_baseline.sh's output directory (pass@k, mean ± std over seeds,
and each stage's wall time and tokens/s). Reads only the files the stages wrote.

    python scripts/summarize.py runs/bench-ntp
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _metric(path: Path, key: str) -> float | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())["pass_at_k"].get(key, {}).get("value")


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def main(out: Path) -> None:
    arms = {"base": ["base"], "NTP": sorted(p.name for p in out.glob("ntp-s*") if p.is_dir())}
    print("| model | pass@1 greedy (all held-out tasks) | pass@1 T=0.8 (n=10) | pass@10 T=0.8 | seeds |")
    print("|---|---|---|---|---|")
    for arm, prefixes in arms.items():
        cols = [[_metric(out / f"{p}-greedy_metrics.json", "pass@1") for p in prefixes],
                [_metric(out / f"{p}-t08_metrics.json", "pass@1") for p in prefixes],
                [_metric(out / f"{p}-t08_metrics.json", "pass@10") for p in prefixes]]
        print(f"| {arm} | " + " | ".join(_mean_std(c) for c in cols) + f" | {len(prefixes)} |")
    print("\n| stage | wall s | tokens | tokens/s |\n|---|---|---|---|")
    for run in sorted(out.glob("ntp-s*/compute.json")):
        c = json.loads(run.read_text())
        print(f"| NTP {run.parent.name} ({c['optimizer_steps']} steps) | {c['wall_s']} | {c['tokens_forward']} | "
              f"{c['tokens_per_s']} |")
    for gen in sorted(out.glob("*.compute.json")):
        c = json.loads(gen.read_text())
        wall = c.get("wall_s", 0)
        tokens = c.get("completion_tokens", 0)
        print(f"| generate {gen.name.removesuffix('.compute.json')} ({c.get('samples', '?')} samples) | {wall} | "
              f"{tokens} | {round(tokens / wall, 1) if wall else '-'} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench-ntp"))
