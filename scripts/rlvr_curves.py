"""RLVR curves with seed spread: `ra3 rlvr` from one checkpoint for several seeds, then the pass@1-vs-step
table (mean ± sample std over seeds, each seed's value beside it) and the step-time split.

    python scripts/rlvr_curves.py --model runs/ntp/model --tasks runs/world/rl_tasks.jsonl \\
        --eval-tasks runs/world/eval_tasks.jsonl --out runs/bench/rlvr_ntp -- --max-steps 100 --eval-every 10

Everything after `--` goes to `ra3 rlvr` unchanged. Each seed runs in its own process in `OUT/seed<k>`; a
finished seed is not rerun (`ra3 rlvr` skips a finished run), so rerunning the script only reprints, and
a killed script resumes where it stopped. Run it once per checkpoint (NTP, RA3, base) and compare the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run_seed(args: argparse.Namespace, seed: int, extra: list[str]) -> Path:
    out = args.out / f"seed{seed}"
    cmd = [sys.executable, "-m", "ra3.cli", "rlvr", "--model", args.model, "--tasks", args.tasks,
           "--eval-tasks", args.eval_tasks, "--out-dir", str(out), "--seed", str(seed), *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def spread(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def curves_table(outs: list[Path]) -> str:
    """One line per eval step: greedy and sampled pass@1 over seeds, then each seed's (greedy, sampled)."""
    runs = [{r["step"]: r for r in map(json.loads, (o / "curves.jsonl").read_text().splitlines())}
            for o in outs]
    header = ["step", "pass@1 greedy", "pass@1 sampled", "train reward"]
    lines = [f"{header[0]:>6}  {header[1]:>15}  {header[2]:>15}  {header[3]:>14}  per seed (greedy/sampled)"]
    for step in sorted(set().union(*runs)):
        rows = [run[step] for run in runs if step in run]
        seeds = "  ".join(f"{r['pass@1_greedy']:.3f}/{r['pass@1_sampled']:.3f}" for r in rows)
        lines.append(f"{step:>6}  {spread([r['pass@1_greedy'] for r in rows]):>15}  "
                     f"{spread([r['pass@1_sampled'] for r in rows]):>15}  "
                     f"{spread([r['train_reward'] for r in rows]):>14}  {seeds}")
    return "\n".join(lines)


def time_split(outs: list[Path]) -> str:
    """Mean seconds per optimiser step in generation, reward (sandbox) and update, over seeds."""
    computes = [c for c in (json.loads((o / "compute.json").read_text()) for o in outs) if c["steps_timed"]]
    if not computes:
        return "step time: n/a (every run resumed from its last checkpoint with no step left to time)"
    total = statistics.mean(c["step_time_s"]["total"] for c in computes)
    parts = []
    for key in ("generation", "reward", "update"):
        seconds = statistics.mean(c["step_time_s"][key] for c in computes)
        parts.append(f"{key} {seconds:.3f} s ({seconds / total:.0%})")
    evals = statistics.mean(c["eval_s"] for c in computes)
    return f"step time {total:.3f} s = " + ", ".join(parts) + f"; evaluation {evals:.1f} s per run"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint to start RLVR from (HF model directory)")
    parser.add_argument("--tasks", required=True, help="RL tasks (task set name or Problem JSONL)")
    parser.add_argument("--eval-tasks", required=True, help="held-out tasks (task set name or Problem JSONL)")
    parser.add_argument("--out", type=Path, required=True, help="output folder; one run per seed inside")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    args = parser.parse_args(own)
    outs = [run_seed(args, int(seed), extra) for seed in args.seeds.split(",")]
    print(f"\nRLVR from {args.model}, {len(outs)} seeds (mean ± std over seeds)\n{curves_table(outs)}\n"
          f"{time_split(outs)}")


if __name__ == "__main__":
    main()
