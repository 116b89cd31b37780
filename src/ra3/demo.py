"""Stage `ra3 demo`: the embedded-default study in one command.

Not built yet (issue "ra3 demo: the whole experiment in one command, with a report"): the chained run
world → base model → NTP and RA3 mid-training at equal compute → RLVR from both → held-out pass@k →
report. Until it is, `ra3 demo` runs what a fresh machine can check in seconds, the verifier on
HumanEval's canonical solutions through `ra3 evaluate` (expect 164/164 and the isolation in force),
and prints the stage-by-stage commands that run the study by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ra3 import evaluate
from ra3.benchmarks import load_benchmark
from ra3.config import option, save_config
from ra3.files import write_jsonl

logger = logging.getLogger(__name__)

BY_HAND = """\
The full demo is not built yet. The study's stages, by hand (embedded default, 2-core CPU):
  ra3 world      --config configs/world.yaml --out-dir runs/world              # ~15 s
  ra3 init-model --out-dir runs/init --corpus runs/world/pretrain.jsonl       # ~10 s
  ra3 pretrain   --config configs/pretrain.yaml --model runs/init --out-dir runs/base   # ~10-20 min
  ra3 midtrain --method ntp --config configs/ntp.yaml --model runs/base/model --out-dir runs/ntp
  ra3 midtrain --method ra3 --config configs/ntp.yaml --model runs/base/model --out-dir runs/ra3
  ra3 generate --model runs/ntp/model --benchmark world --data-path runs/world --n 1 --temperature 0
  ra3 evaluate --benchmark world --data-path runs/world --samples <the generated file> --k 1
  ra3 rlvr     --model runs/ntp/model --out-dir runs/rlvr-ntp
"""


@dataclass
class DemoConfig:
    """The embedded-default study (for now: a verifier self-check and the by-hand commands)."""

    out_dir: Path = option(Path("runs/demo"), "output directory")
    workers: int | None = option(None, "parallel sandbox runs (default: one per CPU core)")


def run(cfg: DemoConfig) -> Path:
    """Check the verifier on HumanEval's canonical solutions; print what the demo does not do yet."""
    out = Path(cfg.out_dir)
    save_config(cfg, out / "config.yaml")
    problems = load_benchmark("humaneval")
    samples = write_jsonl(out / "humaneval_canonical.jsonl",
                          [{"task_id": p.task_id, "completion": p.metadata["canonical_solution"]}
                           for p in problems])
    results = evaluate.run(evaluate.EvaluateConfig(benchmark="humaneval", samples=samples, k=[1],
                                                   workers=cfg.workers))
    print(BY_HAND)
    return results
