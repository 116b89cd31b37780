"""`WorldConfig`: the settings of `ra3 world` (its CLI flags and YAML keys)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ra3.config import Config, ConfigError, option


@dataclass
class WorldConfig(Config):
    """Build the synthetic code world: pretraining corpus, demonstrations, RL and held-out tasks."""

    out_dir: Path = option(Path("runs/world"), "output directory")
    seed: int = option(0, "world seed: same seed and config give byte-identical files")
    pretrain_programs: int = option(30000, "programs in the pretraining corpus", at_least=0)
    demos: int = option(4000, "mid-training demonstrations (raw expert code)", at_least=0)
    rl_tasks: int = option(500, "RL training tasks (with tests)", at_least=0)
    eval_tasks: int = option(400, "held-out evaluation tasks (with tests; >= 300 for statistical power)", at_least=0)
    min_steps: int = option(2, "fewest idioms per program", at_least=1)
    max_steps: int = option(3, "most idioms per program (at the CPU budget, 3-5 left no measurable room: "
                            "BENCHMARKS.md)")
    max_lines: int = option(25, "longest function body, in lines (longer plans are redrawn)")
    final_rate: float = option(0.75, "share of programs whose last idiom reduces the list (total, join, ...); "
                               "the others return the list", at_least=0, at_most=1)
    goal_fraction: float = option(0.3, "share of goal-style statements (one nested phrase; the plan must be "
                                  "inferred); the others list the steps in order", at_least=0, at_most=1)
    comment_rate: float = option(0.5, "share of pretraining programs with a comment before each idiom "
                                 "(world-notes: keep near 1/2 so the scorer still uses comments)", at_least=0, at_most=1)
    tests: int = option(5, "test cases per task", at_least=2)
    candidate_inputs: int = option(20, "random inputs per RL/held-out task from which its tests are chosen")
    time_limit: float = option(5.0, "wall seconds a program gets for all of a task's tests", above=0)
    verify_tasks: int = option(200, "RL/held-out tasks whose expert solution is run through Problem.job in "
                               "the sandbox for the pass@1 statistic (0: all)", at_least=0)
    workers: int = option(0, "parallel sandbox runs (0: one per CPU core)", at_least=0)

    def __post_init__(self):
        super().__post_init__()
        if self.min_steps > self.max_steps or self.tests > self.candidate_inputs:
            raise ConfigError(f"need min_steps <= max_steps and tests <= candidate_inputs, got {self.min_steps}, "
                              f"{self.max_steps}, {self.tests}, {self.candidate_inputs}")
        if self.max_lines < 4 * self.min_steps:
            raise ConfigError(f"max_lines={self.max_lines} leaves no room for {self.min_steps} idioms")
