"""Stage `ra3 rlvr`: GRPO post-training whose reward is the sandboxed verifier's verdict (method.md §6).

From any checkpoint (NTP, RA3, base), sample G completions per task, run each program against the task's
unit tests in the sandbox (`rewards.VerifierReward`: 1 if all pass, else 0), and take a group-relative
policy-gradient step. Every `eval_every` steps the policy is evaluated on held-out tasks (greedy and
sampled pass@1, with `ra3 evaluate`'s checker and the one pass@k estimator). Files in `out_dir`:
`curves.csv` / `curves.jsonl` (one row per evaluation: the RLVR curves of method.md §8.3), `model/` (the
final policy), `checkpoints/`, `tb/` (TensorBoard), `config.yaml`, `compute.json` (step time split
into generation, reward and update; tokens; provenance) and, with the task filter, `task_filter.jsonl`.

Built on TRL's GRPOTrainer (transformers' Trainer underneath), as `ntp_trainer` is on SFTTrainer: it brings
group advantages, the clipped loss and its variants (`loss_type`), the KL to a reference (`beta`), vLLM
rollouts (`use_vllm`; untested here), gradient accumulation, multi-process runs, a progress bar and
checkpoints with optimizer and RNG state. A hand-written loop would save nothing measurable: on the test's
2M-parameter model a 0.85 s step spent 0.65 s in the sandbox, 0.08 s sampling and 0.12 s in TRL's
log-prob pass, backward and optimiser step together. What ra3 adds:
- `rlvr_trainer`: stop rules (rollouts end where `ra3 generate` stops; the sampled tokens are cut there).
- `rlvr_eval`: held-out pass@1 every `eval_every` steps, the curves files, the step-time split.
- `benchmarks.rl_tasks`: the MBPP task sets, kept off every task evaluation uses.
- here: a task filter (`filter_samples`): before training, keep the tasks the starting policy solves
  sometimes but not always, the only ones whose GRPO group has a gradient (`filter_tasks`); resume from the
  last complete checkpoint (`ntp_trainer.last_complete_checkpoint`), evaluation rows that survive a
  `kill -9` (rows past the resumed checkpoint are dropped and recomputed), and `compute.json`.

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
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from ra3 import layout
from ra3.benchmarks import Problem
from ra3.benchmarks.rl_tasks import load_task_set
from ra3.config import Config, ConfigError, option, save_config
from ra3.files import DataError, atomic_write_text, provenance, read_jsonl, write_jsonl
from ra3.models import encodes_as_a_whole, load_pretrained, save_pretrained
from ra3.ntp_trainer import last_complete_checkpoint, remove_incomplete_checkpoints
from ra3.rewards import VerifierReward
from ra3.rlvr_eval import SPLIT, Curves, PolicyEval, RLVRCallback, StepClock, mean, pass_counts
from ra3.rlvr_trainer import RolloutStats, stop_rule_trainer_class
from ra3.sampling import BODY_STOP_SEQUENCES, generate_completions, stop_completion, stop_rule

logger = logging.getLogger(__name__)
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



def filter_tasks(tasks: Sequence[Problem], cfg: RLVRConfig) -> list[Problem]:
    """The RL tasks that the starting policy solves sometimes but not always: 0 < passes < `filter_samples`.

    A GRPO group whose G rewards are all equal has zero advantage, so it costs a rollout and moves nothing;
    from the world's NTP checkpoint about 60% of groups are so, nearly all of them all-fail (BENCHMARKS.md).
    The filter samples each task once before training, at the rollout temperature, and keeps the tasks with
    a gradient. It is offline because TRL's GRPOTrainer has no hook for DAPO's per-batch dynamic sampling.
    The counts go to `task_filter.jsonl` (task_id, samples, passes, kept), which a rerun reads instead of
    sampling again. The main process samples (HF generate, also under `use_vllm`); the others wait and read.
    """
    path = layout.task_filter_file(cfg.out_dir)
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
        counts = pass_counts(tasks, completions, cfg.workers or None)
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
    """The stop-rule GRPO trainer, and the callback that times and evaluates it (both share one
    `RolloutStats`)."""
    from datasets import Dataset
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    model, tokenizer = load_pretrained(cfg.model, dtype=torch.float32)
    tokenizer.clean_up_tokenization_spaces = False  # TRL decodes rewarded text with it: never rewrite code
    if not encodes_as_a_whole(tokenizer, tasks[0].prompt):
        logger.warning("TRL encodes prompts as whole text, which for this tokenizer differs from the "
                       "piecewise `models.encode` that mid-training and evaluation use")
    body_only = all(stop_rule(p.prompt) is stop_completion for p in tasks)
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in tasks], "task_id": [p.task_id for p in tasks]})
    tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(Path(cfg.out_dir) / "tb")))
    args = _grpo_args(cfg, layout.checkpoints_dir(cfg.out_dir), BODY_STOP_SEQUENCES if body_only else ())
    stats = RolloutStats()
    trainer = stop_rule_trainer_class()(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                                        processing_class=tokenizer, callbacks=[tensorboard], stats=stats)
    evaluate = PolicyEval(eval_tasks, n=cfg.eval_n, temperature=cfg.eval_temperature,
                          max_new_tokens=cfg.max_completion_length, batch_size=cfg.batch_size, seed=cfg.seed,
                          workers=cfg.workers or None)
    callback = RLVRCallback(trainer, evaluate, cfg.eval_every, Curves(Path(cfg.out_dir), resume_step),
                            StepClock(stats, reward))
    trainer.add_callback(callback)
    return trainer, callback


def _compute_record(trainer, callback: RLVRCallback, cfg: RLVRConfig, resume: Path | None,
                    wall_s: float) -> dict:
    """compute.json. Token counts of the teacher-forced passes cover the whole run (TRL keeps them in the
    checkpoint); the step-time split and the other counts cover the `steps_timed` steps this process ran
    (all of them unless it resumed)."""
    timed = callback.timed
    split = {k: mean(timed, k) for k in SPLIT}
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
    final = layout.model_dir(out)
    if layout.compute_file(out).is_file() and final.is_dir():
        logger.info("%s is finished; skipping", out)
        return final
    tasks = load_task_set(cfg.tasks, cfg.max_tasks, cfg.seed)
    eval_tasks = load_task_set(cfg.eval_tasks, cfg.max_eval_tasks, cfg.seed)
    shared = {p.task_id for p in tasks} & {p.task_id for p in eval_tasks}
    if shared:
        raise ConfigError(f"tasks and eval_tasks share {len(shared)} tasks (e.g. {min(shared)}); "
                          f"held-out tasks must be disjoint from the RL tasks")
    save_config(cfg, layout.config_file(out))
    filter_start = time.monotonic()
    if cfg.filter_samples:
        tasks = filter_tasks(tasks, cfg)
    filter_s = time.monotonic() - filter_start
    ckpt_dir = layout.checkpoints_dir(out)
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
        atomic_write_text(layout.compute_file(out), json.dumps(compute, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return final
