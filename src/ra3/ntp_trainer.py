"""Next-token-prediction training of a causal LM on text or prompt/completion records (a component).

Built on TRL's SFTTrainer (transformers' Trainer underneath) rather than a hand-written accelerate loop,
because it already does what every NTP stage needs: completion-only loss, packing, warmup + cosine LR,
gradient accumulation and clipping, bf16, TensorBoard, a progress bar, checkpoints that carry optimizer,
scheduler and RNG state, and multi-process / multi-node runs under `accelerate launch` (DDP, FSDP,
DeepSpeed configs). What it does not do, and this module adds:

1. Atomic checkpoints. Trainer writes `checkpoint-N/` in place and `trainer_state.json` last. We count a
   checkpoint as complete only when that file parses, and remove incomplete ones before resuming, so a
   `kill -9` mid-save costs at most the interval since the last complete checkpoint.
2. The final model is saved by Trainer (so FSDP/DeepSpeed shards are gathered) into a staging directory
   that `models.publish_model_dir` completes and renames into place.
3. Compute accounting (`compute.json`): tokens forward/backward, optimiser steps, wall time, so that the
   NTP and RA3 arms can be compared at stated, checkable equal compute.

Tokenisation is TRL's: prompt + completion encoded as one text, which gives `models.encode`'s ids (line
pieces never merge; unit pieces matched whole-text ids on 2276 of 2276 MBPP and HumanEval texts). Where
a BPE glues the prompt's final line end to the completion's first indentation (SmolLM2), TRL warns that
the prompt is not a token prefix and starts the loss at the glued token; that is the context generation
gives the model too (`models.prompt_to_continue`), so the warning is expected there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset

from ra3 import layout
from ra3.config import Config, option
from ra3.files import atomic_write_text, provenance
from ra3.models import load_pretrained, publish_model_dir

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainConfig(Config):
    """Optimisation fields shared by every next-token-prediction stage (pretrain, ntp, the M-step)."""

    model: str = option("", "input model: a local HF model directory or a hub id")
    out_dir: Path = option(Path("runs/train"), "output directory (model, checkpoints, logs)")
    seed: int = option(0, "random seed (data order, dropout)")
    max_steps: int = option(200, "optimiser steps", at_least=1)
    batch_size: int = option(16, "sequences per device per micro-step", at_least=1)
    grad_accum: int = option(1, "micro-steps per optimiser step", at_least=1)
    lr: float = option(1e-3, "peak learning rate")
    warmup_ratio: float = option(0.05, "fraction of steps of linear warmup before the cosine decay", at_least=0, below=1)
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    max_length: int = option(512, "tokens per (packed) sequence", at_least=1)
    packing: bool = option(True, "pack several examples into each sequence")
    bf16: bool = option(False, "train in bfloat16 mixed precision")
    save_steps: int = option(50, "checkpoint every N optimiser steps", at_least=1)
    logging_steps: int = option(10, "log scalars every N optimiser steps", at_least=1)


def _is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return True
    except (OSError, json.JSONDecodeError):
        return False


def last_complete_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest `checkpoint-N` whose trainer_state.json, which Trainer writes last, parses (a pure query)."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CHECKPOINT.match(p.name)))
    return next((path for _, path in reversed(found) if _is_complete(path)), None)


def remove_incomplete_checkpoints(ckpt_dir: Path) -> None:
    """Delete checkpoints a killed run left half-written (call only when no run is writing here)."""
    if ckpt_dir.is_dir():
        for path in ckpt_dir.iterdir():
            if _CHECKPOINT.match(path.name) and not _is_complete(path):
                logger.warning("removing incomplete checkpoint %s (the run was killed while saving it)", path)
                shutil.rmtree(path, ignore_errors=True)


def _sft_args(cfg: TrainConfig, ckpt_dir: Path, completion_only: bool):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(ckpt_dir), seed=cfg.seed, data_seed=cfg.seed, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16,
        max_length=cfg.max_length, packing=cfg.packing, packing_strategy="wrapped",
        completion_only_loss=completion_only, save_strategy="steps", save_steps=cfg.save_steps,
        logging_steps=cfg.logging_steps, report_to="none",  # TensorBoard: our callback, writing to out_dir/tb
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, dataset_num_proc=None, save_total_limit=2,
        include_num_input_tokens_seen="non_padding", disable_tqdm=False,
    )


def _audited_trainer_class():
    """SFTTrainer that digests every batch it trains on, so each rank can show which data it saw."""
    from trl import SFTTrainer

    class AuditedSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.data_digest = hashlib.sha256()

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.data_digest.update(inputs["input_ids"].cpu().numpy().tobytes())
            return super().training_step(model, inputs, num_items_in_batch)

    return AuditedSFTTrainer


def _write_rank_audit(trainer, out_dir: Path) -> None:
    """ranks/rank{i}.json: digests of the data this rank trained on and of its final weights."""
    weights = hashlib.sha256()
    for tensor in trainer.accelerator.unwrap_model(trainer.model).state_dict().values():
        weights.update(tensor.detach().float().cpu().numpy().tobytes())
    rank = trainer.args.process_index
    audit = {"rank": rank, "world_size": trainer.args.world_size,
             "data_sha256": trainer.data_digest.hexdigest(), "weights_sha256": weights.hexdigest()}
    atomic_write_text(out_dir / "ranks" / f"rank{rank}.json", json.dumps(audit) + "\n")


def train(cfg: TrainConfig, dataset: Dataset, completion_only: bool, data_path: Path | None = None) -> Path:
    """Train `cfg.model` on `dataset` ("text" records, or "prompt"/"completion" records whose loss is on
    the completion only when `completion_only`); returns `layout.model_dir(cfg.out_dir)`, an HF model dir.

    A rerun after a kill resumes from the last complete checkpoint; a finished run returns at once.
    """
    out_dir = Path(cfg.out_dir)
    final = layout.model_dir(out_dir)
    if layout.compute_file(out_dir).is_file() and final.is_dir():
        logger.info("%s is finished; skipping", out_dir)
        return final
    model, tokenizer = load_pretrained(cfg.model, dtype=torch.float32)
    ckpt_dir = layout.checkpoints_dir(out_dir)
    remove_incomplete_checkpoints(ckpt_dir)
    resume = last_complete_checkpoint(ckpt_dir)
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    tensorboard = TensorBoardCallback(SummaryWriter(log_dir=str(out_dir / "tb")))
    trainer = _audited_trainer_class()(model=model, args=_sft_args(cfg, ckpt_dir, completion_only), train_dataset=dataset,
                                       processing_class=tokenizer, callbacks=[tensorboard])
    start = time.monotonic()
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    _write_rank_audit(trainer, out_dir)
    staging = out_dir / ".model.staging"
    trainer.save_model(str(staging))  # on every rank: under FSDP/DeepSpeed the ranks gather the weights
    if trainer.is_world_process_zero():
        publish_model_dir(staging, tokenizer, final)
        state = trainer.state
        tokens = int(state.num_input_tokens_seen)
        compute = {"optimizer_steps": state.global_step, "tokens_forward": tokens, "tokens_backward": tokens,
                   "wall_s": round(time.monotonic() - start, 2), "resumed_from": str(resume) if resume else None,
                   "tokens_per_s": round(tokens / max(result.metrics.get("train_runtime", 1e-9), 1e-9), 1),
                   "final_loss": _last_loss(state.log_history),
                   **provenance(cfg.seed, **({"data": data_path} if data_path else {}))}
        atomic_write_text(layout.compute_file(out_dir), json.dumps(compute, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return final


def _last_loss(history: list[dict]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return losses[-1] if losses else None
