"""Stage `ra3 init-model`: a byte-level BPE tokenizer trained on a corpus + a fresh tiny Llama, as one HF dir.

Departures from the paper:
1. The paper mid-trains released models (Llama-3.2-1B, Qwen-2.5-1.5B, Llama-3.1-8B). At CPU scale we start
   from a tiny Llama of a size preset (`ra3.models.PRESETS`), which `ra3 pretrain` then trains; real-scale
   runs skip this stage and give a hub id or a local directory to the later stages instead.
2. The tokenizer keeps every newline a token of its own, so inserting a rationale comment line never
   changes the ids of the code lines (world-notes.md); released tokenizers are used line by line instead.

Output: `out_dir` holds config.json, model.safetensors, generation_config.json, tokenizer files,
`ra3_config.yaml` (the resolved config; `--config` reads it back) and `ra3_meta.json` (parameter count,
vocabulary size, corpus size and SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ra3.config import Config, ConfigError, config_to_dict, option
from ra3.files import DataError, iter_jsonl
from ra3.models import PRESETS, count_parameters, init_tiny_model, save_pretrained, train_tokenizer

log = logging.getLogger(__name__)

STDLIB = "stdlib"


@dataclass
class InitModelConfig(Config):
    """Train a tokenizer on a corpus and initialise a tiny Llama from a size preset."""

    out_dir: Path = option(Path("runs/init-model"), "HF model directory to write (replaced atomically)")
    preset: str = option("2m", "model size preset, named by its parameter count at vocab_size 1024",
                         choices=tuple(PRESETS))
    vocab_size: int = option(1024, "BPE vocabulary size: the 256 bytes, the 3 special tokens and at least one merge", above=259)
    corpus: list[str] = option([STDLIB], "tokenizer training text: .jsonl(.gz) files (every string field of "
                               "every record), other text files, directories of .py files, or 'stdlib' "
                               "(this Python's standard library source)")
    max_chars: int = option(4_000_000, "read at most this many corpus characters (files in seeded order)", at_least=1)
    max_positions: int = option(2048, "context length of the model (max_position_embeddings)", at_least=1)
    seed: int = option(0, "seed of the corpus file order and of the weight initialisation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.corpus:
            raise ConfigError("corpus is empty: give at least one file, directory or 'stdlib'")


def _python_files(root: Path) -> Iterator[Path]:
    """The .py files under `root`, not descending into installed packages (the stdlib holds site-packages)."""
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        yield from (Path(folder, n) for n in names if n.endswith(".py"))


def _source_files(source: str) -> list[Path]:
    """The files one corpus source stands for (sorted, so the seeded shuffle is reproducible)."""
    path = Path(sysconfig.get_paths()["stdlib"]) if source == STDLIB else Path(source).expanduser()
    if path.is_dir():
        return sorted(_python_files(path))
    if path.is_file():
        return [path]
    raise DataError(f"corpus source not found: {source} "
                    f"(give a file, a directory of .py files, or '{STDLIB}')")


def _documents(path: Path, explicit: bool) -> list[str]:
    """Texts of one file: each string field of each JSONL record, or the whole file.

    A file found inside a directory that is not UTF-8 is skipped (the stdlib ships a few on purpose);
    a file named explicitly must decode.
    """
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return [v for record in iter_jsonl(path) for v in record.values() if isinstance(v, str) and v]
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        if explicit:
            raise DataError(f"{path}: not UTF-8 text") from None
        log.debug("skipping non-UTF-8 file %s", path)
        return []


def read_corpus(sources: list[str], max_chars: int, seed: int) -> list[str]:
    """Documents from `sources`, files in a seeded random order, until `max_chars` characters are read.

    The order is shuffled so that a cap samples the whole corpus (e.g. all of the stdlib), not the
    alphabetically first modules.
    """
    files = [(f, Path(s).expanduser().is_file()) for s in sources for f in _source_files(s)]
    random.Random(seed).shuffle(files)
    texts, n_chars = [], 0
    for path, explicit in files:
        for text in _documents(path, explicit):
            if n_chars >= max_chars:
                return texts
            texts.append(text[: max_chars - n_chars])
            n_chars += len(texts[-1])
    return texts


def run(cfg: InitModelConfig) -> Path:
    """Read the corpus, train the tokenizer, initialise the model, write the HF directory; return its path."""
    texts = read_corpus(cfg.corpus, cfg.max_chars, cfg.seed)
    if not texts:
        raise DataError(f"corpus {cfg.corpus} has no text to train a tokenizer on")
    corpus_sha = hashlib.sha256()
    for text in texts:
        corpus_sha.update(text.encode() + b"\0")
    log.info("training a %d-token BPE on %d documents (%d chars)", cfg.vocab_size, len(texts),
             sum(map(len, texts)))
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.max_positions)
    model = init_tiny_model(cfg.preset, tokenizer, cfg.seed, cfg.max_positions)
    meta = {"parameters": count_parameters(model), "vocab_size": len(tokenizer), "preset": cfg.preset,
            "corpus_documents": len(texts), "corpus_chars": sum(map(len, texts)),
            "corpus_sha256": corpus_sha.hexdigest(), "seed": cfg.seed}
    log.info("preset %s: %d parameters, vocabulary %d", cfg.preset, meta["parameters"], meta["vocab_size"])
    extra = {"ra3_config.yaml": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
             "ra3_meta.json": json.dumps(meta, indent=2) + "\n"}
    return save_pretrained(model, tokenizer, cfg.out_dir, extra)
