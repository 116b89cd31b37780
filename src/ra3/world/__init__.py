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
import time
from pathlib import Path

from ra3 import layout
from ra3.benchmarks import load_world, save_problems
from ra3.config import config_to_dict
from ra3.files import atomic_write_text, provenance, write_jsonl
from ra3.world.build import World, build_world, demo_record, to_problem, verify_experts, world_stats
from ra3.world.config import WorldConfig

__all__ = ["WorldConfig", "run"]
logger = logging.getLogger(__name__)


def _complete(out: Path, cfg: WorldConfig) -> bool:
    """A world with this config was written here and its files are unchanged."""
    meta = layout.world_record(out)
    if not meta.is_file():
        return False
    written = json.loads(meta.read_text())
    hashes = written.get("provenance", {}).get("data_sha256", {})
    return (written.get("config") == config_to_dict(cfg) and set(hashes) == set(layout.WORLD_FILES)
            and provenance(cfg.seed, **_files(out))["data_sha256"] == hashes)


def _files(out: Path) -> dict[str, Path]:
    return {part: layout.world_file(out, part) for part in layout.WORLD_FILES}


def write_world(world: World, cfg: WorldConfig, out: Path) -> None:
    """The four data files (atomic writes)."""
    write_jsonl(layout.world_file(out, "pretrain"), ({"task_id": t.task_id, "text": text, "commented": c,
                                           "idioms": list(t.composition)}
                                          for t, text, c in zip(world.tasks["pretrain"], world.texts,
                                                                world.commented, strict=True)))
    write_jsonl(layout.world_file(out, "demos"), map(demo_record, world.tasks["demos"]))
    for split in ("rl", "eval"):
        save_problems(layout.world_file(out, split), [to_problem(t, inputs, outputs, cfg.time_limit)
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
    loaded = load_world(out, "rl") + load_world(out, "eval")
    verification = verify_experts(loaded, cfg.verify_tasks, cfg.seed, cfg.workers or None)
    if verification["pass@1"] < 1.0:
        raise RuntimeError(f"expert solutions fail their own tests: {verification['failures']}")
    stats = world_stats(world)
    stats["expert_pass@1"] = {k: v for k, v in verification.items() if k not in ("failures", "isolation")}
    prov = provenance(cfg.seed, **_files(out))
    world_hash = hashlib.sha256(json.dumps(prov["data_sha256"], sort_keys=True).encode()).hexdigest()
    atomic_write_text(layout.world_record(out), json.dumps({"config": config_to_dict(cfg), "stats": stats,
                                                      "world_sha256": world_hash, "provenance": prov}, indent=2) + "\n")
    compute = {"wall_s": round(time.time() - start, 2), "build_s": round(built - start, 2),
               "verify_s": round(time.time() - built, 2), "sandbox_isolation": verification["isolation"]}
    atomic_write_text(layout.compute_file(out), json.dumps(compute, indent=2) + "\n")
    logger.info("world: %s", json.dumps({s: v["programs"] for s, v in stats["splits"].items()}))
    return out
