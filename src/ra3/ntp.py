"""Stage `ra3 midtrain --method ntp`: next-token prediction on expert demonstrations (the baseline).

The loss is on the completion (the code) only; the prompt (task statement and signature) is conditioned
on. RA3's M-step calls the same `ntp_trainer.train` on annotated traces, so the two arms differ only in data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from ra3 import layout
from ra3.config import option, save_config
from ra3.demonstrations import FIELDS, read_demonstrations
from ra3.ntp_trainer import TrainConfig, train


@dataclass
class NTPConfig(TrainConfig):
    """NTP mid-training on demonstrations (JSONL records with 'prompt' and 'completion')."""

    data: Path = option(Path("runs/world/demos.jsonl"), "demonstrations with 'prompt' and 'completion': a JSONL file "
                        "or an HF dataset hf:NAME[:SPLIT]")


def run(cfg: NTPConfig) -> Path:
    """Mid-train `cfg.model` on `cfg.data` with loss on the code tokens; returns the HF model directory."""
    save_config(cfg, layout.config_file(cfg.out_dir))
    records = read_demonstrations(cfg.data)
    dataset = Dataset.from_dict({field: [r[field] for r in records] for field in FIELDS})
    return train(cfg, dataset, completion_only=True, data_path=cfg.data)
