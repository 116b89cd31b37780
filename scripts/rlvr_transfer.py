"""Learning or transfer? Greedy pass@1 of checkpoints on the tasks RLVR trained on, on held-out tasks of
the same compositions, and on the world's held-out split (compositions no stage has seen).

    ra3 world --config configs/world.yaml --rl-tasks 2000 --out-dir runs/world-more   # more tasks, same world
    python scripts/rlvr_transfer.py split --tasks runs/world/rl_tasks.jsonl \
        --more runs/world-more/rl_tasks.jsonl --out runs/rl-split
    ra3 rlvr --tasks runs/rl-split/train.jsonl --filter-samples 8 --out-dir runs/rlvr ...
    python scripts/rlvr_transfer.py table --tasks runs/rl-split/train.jsonl \\
        --filter runs/rlvr/task_filter.jsonl --same-compositions runs/rl-split/held_out.jsonl \\
        --eval-tasks runs/world/eval_tasks.jsonl runs/ntp/model runs/rlvr/model

`split` holds out one task of every composition that has several in the RL tasks, and tops the held-out
set up with new tasks of the trained compositions from a larger draw of the same world (`--more`): each
held-out task has a trained sibling with the same plan and other parameters. A rise on the trained tasks with none on the
held-out ones means RLVR learns what it is rewarded for but the gain does not carry to new tasks.
Each cell is greedy pass@1 and the tasks gained/lost against the first model. `--filter` keeps the trained tasks a task filter kept (`ra3 rlvr --filter-samples`: those the starting
policy solves sometimes, where GRPO has a gradient).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from ra3.benchmarks import check_completions, load_problems
from ra3.files import read_jsonl, write_jsonl
from ra3.models import load_pretrained
from ra3.sampling import generate_completions


def composition(row: dict) -> tuple[str, ...]:
    return tuple(row["metadata"]["idioms"])


def split_by_composition(rows: list[dict], more: list[dict], size: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out): the last task of each composition with two or more tasks is held out, then tasks
    of `more` whose composition is trained and whose code is new, up to `size` held-out tasks."""
    by_plan = defaultdict(list)
    for row in rows:
        by_plan[composition(row)].append(row["task_id"])
    held = {ids[-1] for ids in by_plan.values() if len(ids) > 1}
    train, held_out = [r for r in rows if r["task_id"] not in held], [r for r in rows if r["task_id"] in held]
    trained, known = {composition(r) for r in train}, {r["metadata"]["canonical_solution"] for r in rows}
    extra = [{**r, "task_id": f"{r['task_id']}/more"} for r in more
             if composition(r) in trained and r["metadata"]["canonical_solution"] not in known]
    return train, (held_out + extra)[:size]


def greedy_passes(model, tokenizer, problems) -> list[bool]:
    completions = generate_completions(model, tokenizer, [p.prompt for p in problems], n=1, temperature=0.0,
                                       batch_size=64)
    samples = [{"task_id": p.task_id, "completion": c[0]} for p, c in zip(problems, completions, strict=True)]
    return [v.passed for v in check_completions({p.task_id: p for p in problems}, samples)]


def cell(was: list[bool], now: list[bool]) -> str:
    """pass@1 (+tasks gained/−tasks lost against `was`)."""
    pairs = list(zip(was, now, strict=True))
    gained, lost = sum(b and not a for a, b in pairs), sum(a and not b for a, b in pairs)
    return f"{sum(now) / len(now):.3f} (+{gained}/−{lost})"


def table(args: argparse.Namespace) -> None:
    trained = load_problems(args.tasks)
    if args.filter:
        kept = {r["task_id"] for r in read_jsonl(args.filter, required=("task_id", "kept")) if r["kept"]}
        trained = [p for p in trained if p.task_id in kept]
    sets = {"trained": trained, "same compositions": load_problems(args.same_compositions),
            "held-out split": load_problems(args.eval_tasks)}
    print("| model | " + " | ".join(f"{name} ({len(ps)})" for name, ps in sets.items()) + " |")
    print("|---" * (len(sets) + 1) + "|")
    first = None
    for path in args.models:
        model, tokenizer = load_pretrained(path, dtype=torch.float32)
        passes = [greedy_passes(model, tokenizer, ps) for ps in sets.values()]
        first = first or passes
        cells = [cell(was, now) for was, now in zip(first, passes, strict=True)]
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    split = commands.add_parser("split", help="write train.jsonl and held_out.jsonl from the RL tasks")
    split.add_argument("--tasks", required=True, help="the world's rl_tasks.jsonl")
    split.add_argument("--more", help="rl_tasks.jsonl of the same world built with more RL tasks")
    split.add_argument("--held-out", type=int, default=400, help="most held-out tasks")
    split.add_argument("--out", type=Path, required=True, help="output folder")
    tab = commands.add_parser("table", help="greedy pass@1 of each model on the three task sets")
    tab.add_argument("models", nargs="+", help="HF model directories (the starting checkpoint first)")
    tab.add_argument("--tasks", required=True, help="the RL tasks trained on (Problem JSONL)")
    tab.add_argument("--filter", help="task_filter.jsonl of an `ra3 rlvr --filter-samples` run")
    tab.add_argument("--same-compositions", required=True, help="held_out.jsonl written by `split`")
    tab.add_argument("--eval-tasks", required=True, help="the world's held-out split (Problem JSONL)")
    args = parser.parse_args()
    if args.command == "split":
        more = read_jsonl(args.more, required=("task_id", "metadata")) if args.more else []
        train, held_out = split_by_composition(read_jsonl(args.tasks, required=("task_id", "metadata")), more,
                                               args.held_out)
        write_jsonl(args.out / "train.jsonl", train)
        write_jsonl(args.out / "held_out.jsonl", held_out)
        print(f"{args.out}: {len(train)} train tasks, {len(held_out)} held out (a trained sibling each)")
    else:
        table(args)


if __name__ == "__main__":
    main()
