"""RLVR's in-training evaluation: held-out pass@1 of the policy, the curves files, the step-time split.

`RLVRCallback` times every optimiser step (`StepClock`: generation, reward, update), evaluates the policy
every `every` steps and at the start and the end (`PolicyEval`: greedy and sampled pass@1 through `ra3
evaluate`'s checker and the one pass@k estimator), appends a row to `curves.csv`/`curves.jsonl` (`Curves`)
and hands the numbers to the trainer's next log (TensorBoard, trainer_state.json).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from ra3 import layout
from ra3.benchmarks import Problem, check_completions
from ra3.files import atomic_write_text, read_jsonl, write_jsonl
from ra3.passk import count_passes, pass_at_k_table
from ra3.rewards import VerifierReward
from ra3.rlvr_trainer import RolloutStats
from ra3.sampling import generate_completions

CURVE_FIELDS = ("step", "pass@1_greedy", "pass@1_sampled", "train_reward", "eval_tasks", "eval_samples",
                "time_generation_s", "time_reward_s", "time_update_s")
SPLIT = ("generation", "reward", "update")


def pass_counts(problems: Sequence[Problem], completions: Sequence[Sequence[str]],
                workers: int | None) -> dict[str, tuple[int, int]]:
    """task_id -> (samples, passes), through `ra3 evaluate`'s checker."""
    samples = [{"task_id": p.task_id, "completion": c}
               for p, cs in zip(problems, completions, strict=True) for c in cs]
    verdicts = check_completions({p.task_id: p for p in problems}, samples, workers)
    return count_passes((s["task_id"] for s in samples), (v.passed for v in verdicts))


def pass_at_1(problems: Sequence[Problem], completions: Sequence[Sequence[str]], workers: int | None) -> float:
    """Mean over tasks of the unbiased pass@1 (the one estimator)."""
    return pass_at_k_table(pass_counts(problems, completions, workers), [1])["pass@1"]["value"]


@dataclass(frozen=True)
class PolicyEval:
    """Held-out pass@1 of a policy: greedy (one sample) and sampled (`n` at `temperature`).

    Samples are seeded by (seed, step) in a forked RNG (`sampling.generate_completions`): reproducible, and
    the training run's random stream (and so a resumed run) is left untouched."""

    problems: Sequence[Problem]
    n: int
    temperature: float
    max_new_tokens: int
    batch_size: int
    seed: int
    workers: int | None

    def __call__(self, model, tokenizer, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        prompts = [p.prompt for p in self.problems]
        common = {"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size}
        greedy = generate_completions(model, tokenizer, prompts, n=1, temperature=0.0,
                                      desc=f"eval step {step}: greedy", **common)
        sampled = generate_completions(model, tokenizer, prompts, n=self.n, temperature=self.temperature,
                                       seed=self.seed * 1_000_003 + step, desc=f"eval step {step}: sampled",
                                       **common)
        model.train(was_training)
        return {"pass@1_greedy": pass_at_1(self.problems, greedy, self.workers),
                "pass@1_sampled": pass_at_1(self.problems, sampled, self.workers)}


class Curves:
    """`curves.jsonl` and `curves.csv`: one row per evaluation, both rewritten atomically after each row.

    Rows past `up_to_step` (written by a run killed after its last complete checkpoint) are dropped: the
    resumed run recomputes them.
    """

    def __init__(self, out_dir: Path, up_to_step: int):
        self.jsonl, self.csv = layout.curves_file(out_dir, "jsonl"), layout.curves_file(out_dir, "csv")
        rows = read_jsonl(self.jsonl, required=("step",)) if self.jsonl.is_file() else []
        self.rows = [r for r in rows if r["step"] <= up_to_step]

    def has(self, step: int) -> bool:
        return any(r["step"] == step for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        write_jsonl(self.jsonl, self.rows)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CURVE_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv, text.getvalue())


def mean(rows: Sequence[dict], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None


class StepClock:
    """Splits each optimiser step's wall time: generation (TRL's sampling, vLLM weight sync included), reward
    (the sandbox) and update (the rest: log-prob passes, backward, optimiser). Evaluation runs after the clock
    stops. Also counts the step's generated tokens, programs run and reward."""

    def __init__(self, stats: RolloutStats, reward: VerifierReward):
        self.stats, self.reward = stats, reward
        self.start: dict[str, float] = {}

    def _totals(self) -> dict[str, float]:
        return {"wall": time.perf_counter(), "generation": self.stats.generation_s,
                "reward": self.reward.seconds, "tokens_generated": self.stats.tokens_generated,
                "programs": self.reward.programs, "reward_sum": self.reward.reward_sum}

    def begin(self) -> None:
        self.start = self._totals()

    def end(self) -> dict[str, float]:
        step = {k: v - self.start[k] for k, v in self._totals().items()}
        step["update"] = step.pop("wall") - step["generation"] - step["reward"]
        return step


class RLVRCallback(TrainerCallback):
    """Times every step, evaluates every `every` steps (0: only at the start and the end), and hands the
    results to the trainer's next log and to the curves files. Added to the trainer it observes
    (`trainer.add_callback`)."""

    def __init__(self, trainer, evaluate: PolicyEval, every: int, curves: Curves, clock: StepClock):
        self.trainer, self.evaluate, self.every, self.curves, self.clock = trainer, evaluate, every, curves, clock
        self.since_log: list[dict] = []  # step splits not yet logged
        self.since_eval: list[dict] = []  # step splits since the last curve row
        self.timed: list[dict] = []  # every step this process ran, for compute.json
        self.eval_s = 0.0

    def _evaluate(self, step: int) -> None:
        start, trainer = time.perf_counter(), self.trainer
        if trainer.is_world_process_zero():
            result = self.evaluate(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, step)
            window, programs = self.since_eval, sum(s["programs"] for s in self.since_eval)
            train_reward = sum(s["reward_sum"] for s in window) / programs if programs else None
            problems = len(self.evaluate.problems)
            self.curves.add({"step": step, **result, "train_reward": train_reward, "eval_tasks": problems,
                             "eval_samples": problems * (1 + self.evaluate.n),
                             **{f"time_{k}_s": mean(window, k) for k in SPLIT}})
            trainer.stats.pending_logs.update({f"rlvr/eval_{k}": v for k, v in result.items()})
        self.since_eval = []
        trainer.accelerator.wait_for_everyone()
        self.eval_s += time.perf_counter() - start

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.curves.has(state.global_step):
            self._evaluate(state.global_step)
            self.trainer.log({})  # step-0 results reach TensorBoard before the first step

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.begin()

    def on_step_end(self, args, state, control, **kwargs):
        split = self.clock.end()
        for window in (self.since_log, self.since_eval, self.timed):
            window.append(split)
        if state.global_step == state.max_steps or (self.every and state.global_step % self.every == 0):
            self._evaluate(state.global_step)
            control.should_log = True
        if control.should_log:
            logs = self.trainer.stats.pending_logs
            logs.update({f"rlvr/time_{k}_s": mean(self.since_log, k) for k in SPLIT})
            logs["rlvr/tokens_generated"] = mean(self.since_log, "tokens_generated")
            self.since_log = []
        return control
