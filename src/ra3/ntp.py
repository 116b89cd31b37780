"""Stage `ra3 midtrain --method ntp`: next-token prediction on expert demonstrations (the baseline).

The loss is on the completion (the code) only; the prompt (task statement and signature) is conditioned
on. RA3's M-step calls the same `sft.train` on annotated traces, so the two arms differ only in data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from ra3.config import option, save_config
from ra3.files import DataError, read_records
from ra3.sft import TrainConfig, train


@dataclass
class NTPConfig(TrainConfig):
    """NTP mid-training on demonstrations (JSONL records with 'prompt' and 'completion')."""

    data: Path = option(Path("runs/world/demos.jsonl"), "demonstrations with 'prompt' and 'completion': a JSONL file "
                        "or an HF dataset hf:NAME[:SPLIT]")


def load_demonstrations(path: Path) -> Dataset:
    """Prompt/completion records as a datasets.Dataset (errors name the file and line)."""
    records = read_records(path, required=("prompt", "completion"))
    if not records:
        raise DataError(f"{path}: no demonstrations")
    return Dataset.from_dict({"prompt": [r["prompt"] for r in records],
                              "completion": [r["completion"] for r in records]})


def run(cfg: NTPConfig) -> Path:
    """Mid-train `cfg.model` on `cfg.data` with loss on the code tokens; returns the HF model directory."""
    save_config(cfg, Path(cfg.out_dir) / "config.yaml")
    return train(cfg, load_demonstrations(cfg.data), completion_only=True, data_path=cfg.data)
