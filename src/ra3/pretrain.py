"""Stage `ra3 pretrain`: scratch pretraining of a tiny model on text (the embedded default only).

Departures from the paper:
1. The paper starts from released pretrained models. No weights can be downloaded at CPU scale, so the
   base model is pretrained here, on the synthetic world's corpus (programs, about half of them with
   comment lines naming the next idiom) optionally mixed with real Python (the standard library).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from ra3 import layout
from ra3.config import option, save_config
from ra3.files import DataError, read_records
from ra3.ntp_trainer import TrainConfig, train

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig(TrainConfig):
    """Next-token prediction on every token of a text corpus."""

    max_steps: int = option(120, "optimiser steps (the default, ~1M tokens, runs in about 4 min on 2 CPU "
                            "cores; configs/pretrain.yaml's 366 steps make the benchmarked base)")
    data: Path = option(Path("runs/world/pretrain.jsonl"), "corpus: JSONL records with a 'text' field")
    stdlib_fraction: float = option(0.0, "extra real Python: standard-library files amounting to this "
                                    "fraction of the corpus's characters")


def _stdlib_texts(n_chars: int, seed: int) -> list[str]:
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    random.Random(seed).shuffle(files)
    texts, total = [], 0
    for path in files:
        if total >= n_chars:
            break
        text = path.read_text(errors="replace")
        texts.append(text)
        total += len(text)
    return texts


def run(cfg: PretrainConfig) -> Path:
    """Pretrain `cfg.model` on `cfg.data`; returns the HF model directory."""
    texts = [r["text"] for r in read_records(cfg.data, required=("text",))]
    if not texts:
        raise DataError(f"{cfg.data}: no records")
    if cfg.stdlib_fraction > 0:
        texts += _stdlib_texts(int(cfg.stdlib_fraction * sum(map(len, texts))), cfg.seed)
    save_config(cfg, layout.config_file(cfg.out_dir))
    return train(cfg, Dataset.from_dict({"text": texts}), completion_only=False, data_path=cfg.data)
