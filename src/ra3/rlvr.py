"""Stage `ra3 rlvr`: GRPO post-training whose reward is the sandboxed verifier's verdict (method.md §6).

From any checkpoint (NTP, RA3, base), sample G completions per task, run each program against the task's
unit tests in the sandbox (`rewards.VerifierReward`: 1 if all pass, else 0), and take a group-relative
policy-gradient step. Every `eval_every` steps the policy is evaluated on held-out tasks (greedy and
sampled pass@1, with `ra3 evaluate`'s checker and the one pass@k estimator). Files in `out_dir`:
`curves.csv` / `curves.jsonl` (one row per evaluation: the RLVR curves of method.md §8.3), `model/` (the
final policy), `checkpoints/`, `tb/` (TensorBoard), `config.yaml`, `compute.json` (step time split
into generation, reward and update; tokens; provenance) and, with the task filter, `task_filter.jsonl`.

Built on TRL's GRPOTrainer (transformers' Trainer underneath), as `sft.py` is on SFTTrainer: it brings
group advantages, the clipped loss and its variants (`loss_type`), the KL to a reference (`beta`), vLLM
rollouts (`use_vllm`; untested here), gradient accumulation, multi-process runs, a progress bar and
checkpoints with optimizer and RNG state. A hand-written loop would save nothing measurable: on the test's
2M-parameter model a 0.85 s step spent 0.65 s in the sandbox, 0.08 s sampling and 0.12 s in TRL's
log-prob pass, backward and optimiser step together. What this module adds:
- Stop rules. TRL ends a rollout only at EOS or `max_completion_length`; `ra3 generate` also stops where
  the function body ends (`sampling.stop_rule`). The subclass cuts the *sampled tokens* there, so the
  reward is computed on the program `ra3 evaluate` would run and the policy gradient acts on exactly its
  tokens (cutting only the text would reinforce whatever the model wrote after the body). HF rollouts
  still run to EOS before the cut; vLLM ones stop early on the rule's stop strings.
- A task filter (`filter_samples`): before training, keep the tasks the starting policy solves sometimes
  but not always, the only ones whose GRPO group has a gradient (`filter_tasks`).
- Complete-checkpoint resume (`sft.last_complete_checkpoint`), evaluation rows that survive a `kill -9`
  (rows past the resumed checkpoint are dropped and recomputed), and `compute.json`.

Departures from the paper (each a config field where it is a choice):
1. Tasks are the synthetic world's RL tasks or MBPP train/validation, not the paper's ~7.7K
   competitive-programming problems. MBPP's sets leave out every task evaluation uses (test ids 11-510,
   and the MBPP+ and sanitized-MBPP tasks among ids 511-974): 254 train and 47 validation tasks. They are
   put in the RLVR template, the world's own: the prompt is a code prefix (the reference solution's
   imports, classes and constants, then the signature and the statement as a docstring) and the
   completion is the body, indented `# rationale` lines included. Curves on mbpp-validation therefore use
   this template, not the EvalPlus prompt of `ra3 evaluate --benchmark mbpp`.
2. The reward is binary by default; `partial_credit` gives the fraction of test cases passed.
3. TRL's `dapo` token-level loss aggregation is the default (`loss_type`), against GRPO's per-sequence
   mean, whose length bias the DAPO and Dr. GRPO papers document; `beta` = 0 (no reference model) by default.
4. A completion the stop rules cut does not end in EOS, so TRL counts it in `completions/clipped_ratio`;
   `rlvr/stop_rule_rate` separates the two. Keep `mask_truncated_completions` off for that reason.

Tested with TRL 1.16; the stop-rule cut overrides GRPOTrainer's `_generate_single_turn`, a private method.
"""

from __future__ import annotations

import ast
import csv
import functools
import io
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from ra3.benchmarks import (
    WHERE,
    Problem,
    check_completions,
    default_data_dir,
    load_mbpp,
    load_mbpp_sanitized,
    load_problems,
)
from ra3.config import Config, ConfigError, option, save_config
from ra3.files import DataError, atomic_write_text, iter_jsonl, provenance, read_jsonl, write_jsonl
from ra3.models import encodes_line_by_line, load_pretrained, save_pretrained
from ra3.passk import count_passes, pass_at_k_table
from ra3.rewards import VerifierReward
from ra3.sampling import BODY_STOP_SEQUENCES, StopRule, generate_completions, stop_completion, stop_rule
from ra3.sft import last_complete_checkpoint, remove_incomplete_checkpoints

logger = logging.getLogger(__name__)
TASK_SETS = {"mbpp-train": "train", "mbpp-validation": "validation"}  # name -> MBPP split
MBPP_TEST_IDS = range(11, 511)  # MBPP's test split: evaluation only, never RL
MBPP_PLUS_FILE = Path("evalplus") / "MbppPlus-v0.2.0.jsonl.gz"  # under benchmarks.default_data_dir()
CURVE_FIELDS = ("step", "pass@1_greedy", "pass@1_sampled", "train_reward", "eval_tasks", "eval_samples",
                "time_generation_s", "time_reward_s", "time_update_s")
SPLIT = ("generation", "reward", "update")
FILTER_FIELDS = ("task_id", "samples", "passes", "kept")


@dataclass
class RLVRConfig(Config):
    """RLVR: GRPO with the sandboxed verifier's verdict as the reward."""

    model: str = option("", "policy to start from: an HF model directory (NTP, RA3 or base checkpoint)")
    tasks: str = option("runs/world/rl_tasks.jsonl", "RL tasks: a Problem JSONL file (the world's "
                        "rl_tasks.jsonl) or a task set: mbpp-train (ids 601-974), mbpp-validation (511-600), "
                        "both without MBPP+/sanitized tasks")
    eval_tasks: str = option("runs/world/eval_tasks.jsonl", "held-out tasks for the curves (same forms as "
                             "`tasks`; disjoint from them)")
    out_dir: Path = option(Path("runs/rlvr"), "output directory (model, checkpoints, curves, logs)")
    seed: int = option(0, "random seed (task order, sampling)")
    max_steps: int = option(100, "optimiser steps", at_least=1)
    num_generations: int = option(8, "G: completions sampled per task (the GRPO group)", at_least=2)
    batch_size: int = option(32, "completions per device per micro-step (batch_size * grad_accum must be a "
                             "multiple of num_generations)", at_least=1)
    grad_accum: int = option(1, "micro-steps per optimiser step", at_least=1)
    lr: float = option(3e-5, "learning rate (AdamW, constant); set for the 2M-parameter CPU models (1e-4 "
                       "lost half the held-out pass@1 in 30 steps; BENCHMARKS.md); 1B+ models want ~1e-6")
    beta: float = option(0.0, "KL coefficient to the starting policy (0: no reference model)", at_least=0)
    epsilon: float = option(0.2, "clipping range of the importance ratio")
    loss_type: str = option("dapo", "TRL loss aggregation", choices=("grpo", "dapo", "dr_grpo", "bnpo"))
    scale_rewards: str = option("group", "advantage scaling: group std, batch std or none",
                                choices=("group", "batch", "none"))
    temperature: float = option(1.0, "sampling temperature of the RL rollouts", above=0)
    max_completion_length: int = option(256, "longest completion, in tokens", at_least=1)
    partial_credit: bool = option(False, "reward = fraction of test cases passed instead of all-or-nothing")
    eval_every: int = option(10, "evaluate on eval_tasks every N steps, and at the start and the end (0: only "
                             "then)", at_least=0)
    eval_n: int = option(4, "samples per eval task for sampled pass@1", at_least=1)
    eval_temperature: float = option(0.8, "temperature of the sampled pass@1", above=0)
    filter_samples: int = option(0, "before training, sample this many completions per RL task from the "
                                 "starting policy and keep only tasks it solves sometimes but not always (a "
                                 "group whose rewards are all equal has no GRPO gradient); 0: keep every task", at_least=0)
    max_tasks: int = option(0, "use at most this many RL tasks (0: all)")
    max_eval_tasks: int = option(0, "use at most this many eval tasks (0: all)")
    workers: int = option(0, "parallel sandbox runs (0: one per CPU core)", at_least=0)
    save_steps: int = option(25, "checkpoint every N optimiser steps", at_least=1)
    logging_steps: int = option(1, "log scalars every N optimiser steps", at_least=1)
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    bf16: bool = option(False, "train in bfloat16 mixed precision")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (large models)")
    use_vllm: bool = option(False, "sample rollouts with vLLM (GPU; `pip install ra3[vllm]`)")
    vllm_mode: str = option("colocate", "vLLM beside training on the same GPUs, or a `trl vllm-serve` server",
                            choices=("colocate", "server"))
    vllm_gpu_memory_utilization: float = option(0.3, "GPU memory share of colocated vLLM")

    def __post_init__(self):
        super().__post_init__()
        if (self.batch_size * self.grad_accum) % self.num_generations:
            raise ConfigError(f"batch_size * grad_accum = {self.batch_size * self.grad_accum} must be a "
                              f"multiple of num_generations = {self.num_generations}")
        if self.filter_samples == 1:
            raise ConfigError("filter_samples must be 0 (no filter) or >= 2 (one sample cannot be both a "
                              "pass and a fail)")


# --------------------------------------------------------------------------------------------- tasks

def _parse(code: str) -> ast.Module | None:
    """The module's syntax tree, or None; MBPP's invalid escapes (`"\\d"`) warn, which must not fail."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(code)
        except SyntaxError:
            return None


def code_prefix_problem(problem: Problem) -> Problem | None:
    """An MBPP problem (whole-program format) in the RLVR template, or None when its reference solution
    does not parse. The prompt, which is also the program prefix, is the reference solution's setup (its
    imports, classes and constants, which the tests may use: `Pair`, `Node`), the entry point's signature
    and the statement (task text and first assert) as its docstring. The reference's other functions are
    solution, not setup, and stay out."""
    tree = _parse(problem.metadata.get("canonical_solution", "").replace("\r\n", "\n"))
    if tree is None:
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == problem.entry_point), None)
    statement = problem.prompt.strip().removeprefix('"""').removesuffix('"""').strip()
    if fn is None or '"""' in statement:
        return None
    setup = "".join(ast.unparse(n) + "\n" for n in tree.body
                    if isinstance(n, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.Assign)))
    doc = "\n    ".join(statement.splitlines())
    header = setup + "\n" if setup else ""
    raw = "r" if "\\" in doc else ""  # regex tasks: keep `\d` as written, without an invalid-escape warning
    prompt = f'{header}def {fn.name}({ast.unparse(fn.args)}):\n    {raw}"""{doc}\n    """\n'
    if _parse(prompt + "    pass\n") is None:
        return None
    return replace(problem, prompt=prompt, program_prefix=prompt)


def _mbpp_id(problem: Problem) -> int | None:
    source = str(problem.metadata.get("source", ""))
    head, _, tail = problem.task_id.partition("/")
    if source.startswith("mbpp") or head.lower() in ("mbpp", "mbpp_plus", "mbppplus"):
        return int(tail) if tail.isdigit() else None
    return None


def evaluation_mbpp_ids() -> set[int]:
    """MBPP task ids that evaluation uses: the test split (11-510), and every MBPP+ and sanitized-MBPP task,
    some of which carry train or validation ids. RL and its curves must stay off all of them (the data
    README's rule for anything used in training)."""
    plus = default_data_dir() / MBPP_PLUS_FILE
    if not plus.is_file():
        raise DataError(f"{plus}: needed to keep MBPP+ tasks out of RL (pass RA3_DATA_DIR, or get it from "
                        f"{WHERE['mbpp_plus']})")
    ids = {int(r["task_id"].rsplit("/", 1)[1]) for r in iter_jsonl(plus, required=("task_id",))}
    return ids | {_mbpp_id(p) for p in load_mbpp_sanitized(split="all")} | set(MBPP_TEST_IDS)


def _load_task_set(name: str) -> list[Problem]:
    if name in TASK_SETS:
        held_out = evaluation_mbpp_ids()
        loaded = [p for p in load_mbpp(split=TASK_SETS[name]) if _mbpp_id(p) not in held_out]
        problems = [p for p in map(code_prefix_problem, loaded) if p is not None]
        logger.info("%s: %d tasks (MBPP+ and sanitized-MBPP tasks left out; %d whose reference does not "
                    "parse)", name, len(problems), len(loaded) - len(problems))
        assert not any(_mbpp_id(p) in MBPP_TEST_IDS for p in problems), "an MBPP test id reached RL"
        return problems
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"tasks: '{name}' is neither a task set ({', '.join(TASK_SETS)}) nor a Problem "
                          f"JSONL file")
    problems = load_problems(path)
    if any(_mbpp_id(p) is not None for p in problems):
        held_out = evaluation_mbpp_ids()
        leaked = [p.task_id for p in problems if _mbpp_id(p) in held_out]
        if leaked:
            raise DataError(f"{path}: holds MBPP tasks that evaluation uses ({', '.join(leaked[:3])}, ...): "
                            f"the test split and MBPP+/sanitized tasks are evaluation only")
    return problems


def load_tasks(name: str, max_tasks: int = 0, seed: int = 0) -> list[Problem]:
    """Problems of a task set or file; with `max_tasks`, a seeded subset in the original order."""
    problems = _load_task_set(name)
    if not problems:
        raise DataError(f"tasks: '{name}' holds no tasks")
    if 0 < max_tasks < len(problems):
        keep = sorted(random.Random(seed).sample(range(len(problems)), max_tasks))
        problems = [problems[i] for i in keep]
    return problems


# --------------------------------------------------------------------------- generation with stop rules

def stop_length(decode: Callable[[Sequence[int]], str], ids: Sequence[int],
                stop: StopRule = stop_completion) -> int:
    """How many of the sampled `ids` to keep: the longest prefix whose text fits in `stop(text)`, at least 1
    (TRL needs a non-empty completion). Binary search over prefixes: decoded length grows with k."""
    text = decode(ids)
    target = len(stop(text))
    if target == len(text):
        return len(ids)
    lo, hi = 0, len(ids)  # invariant: len(decode(ids[:lo])) <= target < len(decode(ids[:hi]))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(decode(ids[:mid])) <= target:
            lo = mid
        else:
            hi = mid
    return max(lo, 1)


def _trainer_class():
    """GRPOTrainer whose rollouts end where `ra3 generate` stops, and which times its sampling."""
    from trl import GRPOTrainer

    class StopRuleGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, **kwargs):
            self.generation_s, self.tokens_generated = 0.0, 0  # running totals, read by StepClock
            self.pending_logs: dict[str, float] = {}  # merged into the next log (RLVRCallback fills it)
            super().__init__(*args, **kwargs)

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            start = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            self.generation_s += time.perf_counter() - start
            self.tokens_generated += sum(map(len, completion_ids))
            decode = functools.partial(self.processing_class.decode, skip_special_tokens=True,
                                       clean_up_tokenization_spaces=False)
            # one prompt row per completion: TRL has already repeated each prompt num_generations times
            keep = [stop_length(decode, ids, stop_rule(decode(prompt)))
                    for prompt, ids in zip(prompt_ids, completion_ids, strict=True)]
            cut = sum(k < len(ids) for k, ids in zip(keep, completion_ids, strict=True))
            self._log_metric("rlvr/stop_rule_rate", cut / len(keep))
            completion_ids = [ids[:k] for ids, k in zip(completion_ids, keep, strict=True)]
            if logprobs is not None:  # vLLM's sampling log-probs, one per kept token
                logprobs = [lp[:k] for lp, k in zip(logprobs, keep, strict=True)]
            return completion_ids, logprobs

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            logs.update(self.pending_logs)
            self.pending_logs.clear()
            super().log(logs, start_time)

    return StopRuleGRPOTrainer


# ------------------------------------------------------------------------------- in-training evaluation

def _pass_counts(problems: Sequence[Problem], completions: Sequence[Sequence[str]],
                 workers: int | None) -> dict[str, tuple[int, int]]:
    """task_id -> (samples, passes), through `ra3 evaluate`'s checker."""
    samples = [{"task_id": p.task_id, "completion": c}
               for p, cs in zip(problems, completions, strict=True) for c in cs]
    verdicts = check_completions({p.task_id: p for p in problems}, samples, workers)
    return count_passes((s["task_id"] for s in samples), (v.passed for v in verdicts))


def _pass_at_1(problems: Sequence[Problem], completions: Sequence[Sequence[str]], workers: int | None) -> float:
    """Mean over tasks of the unbiased pass@1 (the one estimator)."""
    return pass_at_k_table(_pass_counts(problems, completions, workers), [1])["pass@1"]["value"]


def evaluate_policy(model, tokenizer, problems: Sequence[Problem], cfg: RLVRConfig,
                    step: int) -> dict[str, float]:
    """Held-out pass@1 of the current policy: greedy (one sample) and sampled (`eval_n` at `eval_temperature`).

    Samples are seeded by (seed, step) in a forked RNG (`sampling.generate_completions`): reproducible, and
    the training run's random stream (and so a resumed run) is left untouched.
    """
    was_training = model.training
    model.eval()
    prompts = [p.prompt for p in problems]
    common = {"max_new_tokens": cfg.max_completion_length, "batch_size": cfg.batch_size}
    greedy = generate_completions(model, tokenizer, prompts, n=1, temperature=0.0,
                                  desc=f"eval step {step}: greedy", **common)
    sampled = generate_completions(model, tokenizer, prompts, n=cfg.eval_n, temperature=cfg.eval_temperature,
                                   seed=cfg.seed * 1_000_003 + step, desc=f"eval step {step}: sampled",
                                   **common)
    model.train(was_training)
    workers = cfg.workers or None
    return {"pass@1_greedy": _pass_at_1(problems, greedy, workers),
            "pass@1_sampled": _pass_at_1(problems, sampled, workers)}


def filter_tasks(tasks: Sequence[Problem], cfg: RLVRConfig) -> list[Problem]:
    """The RL tasks that the starting policy solves sometimes but not always: 0 < passes < `filter_samples`.

    A GRPO group whose G rewards are all equal has zero advantage, so it costs a rollout and moves nothing;
    from the world's NTP checkpoint about 60% of groups are so, nearly all of them all-fail (BENCHMARKS.md).
    The filter samples each task once before training, at the rollout temperature, and keeps the tasks with
    a gradient. It is offline because TRL's GRPOTrainer has no hook for DAPO's per-batch dynamic sampling.
    The counts go to `task_filter.jsonl` (task_id, samples, passes, kept), which a rerun reads instead of
    sampling again. The main process samples (HF generate, also under `use_vllm`); the others wait and read.
    """
    path = Path(cfg.out_dir) / "task_filter.jsonl"
    state = PartialState()
    ids = [p.task_id for p in tasks]
    done = path.is_file() and [(r["task_id"], r["samples"]) for r in read_jsonl(path, required=FILTER_FIELDS)] \
        == [(t, cfg.filter_samples) for t in ids]
    if state.is_main_process and not done:
        model, tokenizer = load_pretrained(cfg.model, dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
                                           device=state.device)
        completions = generate_completions(model, tokenizer, [p.prompt for p in tasks], n=cfg.filter_samples,
                                           temperature=cfg.temperature, max_new_tokens=cfg.max_completion_length,
                                           batch_size=cfg.batch_size, seed=cfg.seed, desc="task filter")
        counts = _pass_counts(tasks, completions, cfg.workers or None)
        write_jsonl(path, [{"task_id": t, "samples": n, "passes": c, "kept": 0 < c < n}
                           for t, (n, c) in counts.items()])
        del model
    state.wait_for_everyone()
    kept = {r["task_id"] for r in read_jsonl(path, required=FILTER_FIELDS) if r["kept"]}
    prompts_per_step = cfg.batch_size * cfg.grad_accum // cfg.num_generations
    if len(kept) < prompts_per_step:
        raise DataError(f"{path}: the starting policy solves only {len(kept)} of {len(tasks)} tasks sometimes "
                        f"but not always, fewer than one step's {prompts_per_step} prompts; use easier tasks "
                        f"or filter_samples 0")
    logger.info("task filter: %d of %d tasks are solved sometimes but not always (%s)", len(kept), len(tasks), path)
    return [p for p in tasks if p.task_id in kept]


class Curves:
    """`curves.jsonl` and `curves.csv`: one row per evaluation, both rewritten atomically after each row.

    Rows past `up_to_step` (written by a run killed after its last complete checkpoint) are dropped: the
    resumed run recomputes them.
    """

    def __init__(self, out_dir: Path, up_to_step: int):
        self.jsonl, self.csv = out_dir / "curves.jsonl", out_dir / "curves.csv"
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


def _mean(rows: Sequence[dict], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None


class StepClock:
    """Splits each optimiser step's wall time: generation (TRL's sampling, vLLM weight sync included), reward
    (the sandbox) and update (the rest: log-prob passes, backward, optimiser). Evaluation runs after the clock
    stops. Also counts the step's generated tokens, programs run and reward."""

    def __init__(self, trainer, reward: VerifierReward):
        self.trainer, self.reward = trainer, reward
        self.start: dict[str, float] = {}

    def _totals(self) -> dict[str, float]:
        return {"wall": time.perf_counter(), "generation": self.trainer.generation_s,
                "reward": self.reward.seconds, "tokens_generated": self.trainer.tokens_generated,
                "programs": self.reward.programs, "reward_sum": self.reward.reward_sum}

    def begin(self) -> None:
        self.start = self._totals()

    def end(self) -> dict[str, float]:
        step = {k: v - self.start[k] for k, v in self._totals().items()}
        step["update"] = step.pop("wall") - step["generation"] - step["reward"]
        return step


class RLVRCallback(TrainerCallback):
    """Times every step, evaluates every `eval_every` steps (and at the start and the end), and hands the
    results to the trainer's next log (TensorBoard, trainer_state.json) and to the curves files."""

    def __init__(self, cfg: RLVRConfig, eval_problems: Sequence[Problem], curves: Curves):
        self.cfg, self.eval_problems, self.curves = cfg, eval_problems, curves
        self.trainer = None  # set by _build_trainer once the trainer exists
        self.clock: StepClock | None = None
        self.since_log: list[dict] = []  # step splits not yet logged
        self.since_eval: list[dict] = []  # step splits since the last curve row
        self.timed: list[dict] = []  # every step this process ran, for compute.json
        self.eval_s = 0.0

    def _evaluate(self, step: int) -> None:
        start = time.perf_counter()
        if self.trainer.is_world_process_zero():
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
            result = evaluate_policy(model, self.trainer.processing_class, self.eval_problems, self.cfg, step)
            window, programs = self.since_eval, sum(s["programs"] for s in self.since_eval)
            train_reward = sum(s["reward_sum"] for s in window) / programs if programs else None
            self.curves.add({"step": step, **result, "train_reward": train_reward,
                             "eval_tasks": len(self.eval_problems),
                             "eval_samples": len(self.eval_problems) * (1 + self.cfg.eval_n),
                             **{f"time_{k}_s": _mean(window, k) for k in SPLIT}})
            self.trainer.pending_logs.update({f"rlvr/eval_{k}": v for k, v in result.items()})
        self.since_eval = []
        self.trainer.accelerator.wait_for_everyone()
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
        every = self.cfg.eval_every
        if state.global_step == state.max_steps or (every and state.global_step % every == 0):
            self._evaluate(state.global_step)
            control.should_log = True
        if control.should_log:
            self.trainer.pending_logs.update({f"rlvr/time_{k}_s": _mean(self.since_log, k) for k in SPLIT})
            self.trainer.pending_logs["rlvr/tokens_generated"] = _mean(self.since_log, "tokens_generated")
            self.since_log = []
        return control


# ------------------------------------------------------------------------------------------------ run

def _grpo_args(cfg: RLVRConfig, ckpt_dir: Path, vllm_stop: Sequence[str]):
    """TRL's config from ours. `vllm_stop` ends vLLM rollouts early (the stop rule still makes the cut); HF
    rollouts run to EOS or `max_completion_length` and are cut afterwards."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(ckpt_dir), seed=cfg.seed, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        num_generations=cfg.num_generations, learning_rate=cfg.lr, lr_scheduler_type="constant",
        beta=cfg.beta, epsilon=cfg.epsilon, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
        temperature=cfg.temperature, max_completion_length=cfg.max_completion_length,
        max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16, gradient_checkpointing=cfg.gradient_checkpointing,
        disable_dropout=True, mask_truncated_completions=False,
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        generation_kwargs={"stop": list(vllm_stop)} if cfg.use_vllm and vllm_stop else None,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2, logging_steps=cfg.logging_steps,
        report_to="none",  # TensorBoard: our callback, writing to out_dir/tb
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=False,
    )


def _build_trainer(cfg: RLVRConfig, tasks: Sequence[Problem], eval_tasks: Sequence[Problem],
                   reward: VerifierReward, resume_step: int):
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    model, tokenizer = load_pretrained(cfg.model, dtype=torch.float32)
    tokenizer.clean_up_tokenization_spaces = False  # TRL decodes rewarded text with it: never rewrite code
    if not encodes_line_by_line(tokenizer, tasks[0].prompt):
        logger.warning("TRL encodes prompts as whole text, which for this tokenizer differs from the "
                       "line-level `models.encode` that mid-training and evaluation use")
    body_only = all(stop_rule(p.prompt) is stop_completion for p in tasks)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in tasks], "task_id": [p.task_id for p in tasks]})
    callback = RLVRCallback(cfg, eval_tasks, Curves(Path(cfg.out_dir), resume_step))
    tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(Path(cfg.out_dir) / "tb")))
    args = _grpo_args(cfg, Path(cfg.out_dir) / "checkpoints", BODY_STOP_SEQUENCES if body_only else ())
    trainer = _trainer_class()(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                               processing_class=tokenizer, callbacks=[callback, tensorboard])
    callback.trainer, callback.clock = trainer, StepClock(trainer, reward)
    return trainer, callback


def _compute_record(trainer, callback: RLVRCallback, cfg: RLVRConfig, resume: Path | None,
                    wall_s: float) -> dict:
    """compute.json. Token counts of the teacher-forced passes cover the whole run (TRL keeps them in the
    checkpoint); the step-time split and the other counts cover the `steps_timed` steps this process ran
    (all of them unless it resumed)."""
    timed = callback.timed
    split = {k: _mean(timed, k) for k in SPLIT}
    rollout_tokens = int(trainer.state.num_input_tokens_seen)  # prompt + kept completion tokens
    final = callback.curves.rows[-1] if callback.curves.rows else {}
    return {"optimizer_steps": trainer.state.global_step, "resumed_from": str(resume) if resume else None,
            "wall_s": round(wall_s, 2), "eval_s": round(callback.eval_s, 2), "steps_timed": len(timed),
            "step_time_s": {**split, "total": sum(v for v in split.values() if v is not None)},
            "tokens_generated": sum(s["tokens_generated"] for s in timed),
            "programs_run": sum(s["programs"] for s in timed),
            "tokens_forward": rollout_tokens * (2 if cfg.beta else 1),  # policy, + reference if beta > 0
            "tokens_backward": rollout_tokens,
            "final_pass@1_greedy": final.get("pass@1_greedy"),
            "final_pass@1_sampled": final.get("pass@1_sampled")}


def run(cfg: RLVRConfig) -> Path:
    """GRPO on `cfg.tasks` from `cfg.model` with the verifier's reward; returns the trained HF model directory.

    A rerun after a kill resumes from the last complete checkpoint; a finished run returns at once.
    """
    if not cfg.model:
        raise ConfigError("model is required (--model DIR: the checkpoint RLVR starts from)")
    out = Path(cfg.out_dir)
    final = out / "model"
    if (out / "compute.json").is_file() and final.is_dir():
        logger.info("%s is finished; skipping", out)
        return final
    tasks = load_tasks(cfg.tasks, cfg.max_tasks, cfg.seed)
    eval_tasks = load_tasks(cfg.eval_tasks, cfg.max_eval_tasks, cfg.seed)
    shared = {p.task_id for p in tasks} & {p.task_id for p in eval_tasks}
    if shared:
        raise ConfigError(f"tasks and eval_tasks share {len(shared)} tasks (e.g. {min(shared)}); "
                          f"held-out tasks must be disjoint from the RL tasks")
    save_config(cfg, out / "config.yaml")
    filter_start = time.monotonic()
    if cfg.filter_samples:
        tasks = filter_tasks(tasks, cfg)
    filter_s = time.monotonic() - filter_start
    ckpt_dir = out / "checkpoints"
    remove_incomplete_checkpoints(ckpt_dir)
    resume = last_complete_checkpoint(ckpt_dir)
    resume_step = json.loads((resume / "trainer_state.json").read_text())["global_step"] if resume else 0
    reward = VerifierReward({p.task_id: p for p in tasks}, partial_credit=cfg.partial_credit,
                            workers=cfg.workers or None)
    trainer, callback = _build_trainer(cfg, tasks, eval_tasks, reward, resume_step)
    if resume:
        logger.info("resuming from %s", resume)
    start = time.monotonic()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        save_pretrained(trainer.accelerator.unwrap_model(trainer.model), trainer.processing_class, final)
        data = {k: v for k, v in (("tasks", cfg.tasks), ("eval_tasks", cfg.eval_tasks)) if os.path.isfile(v)}
        compute = {**_compute_record(trainer, callback, cfg, resume, time.monotonic() - start),
                   "filter_s": round(filter_s, 2), "tasks_trained": len(tasks), **provenance(cfg.seed, **data)}
        atomic_write_text(out / "compute.json", json.dumps(compute, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return final
