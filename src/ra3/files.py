"""Files that stages hand each other: atomic writes, JSONL with line-numbered errors, content hashes."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A user-facing problem with an input file; the message names the file, the line and the field."""


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; artifacts are for anyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Atomically write one JSON object per line."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def iter_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Yield the records of a (optionally gzipped) JSONL file; bad lines raise DataError naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in required if k not in record]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field '{missing[0]}'")
            yield record


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """All records of a JSONL file (see `iter_jsonl`)."""
    return list(iter_jsonl(path, required))


HF_PREFIX = "hf:"


def read_records(source: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Records of a JSONL file, or of a Hugging Face dataset named `hf:NAME[:SPLIT]` (NAME: a hub id or a
    local dataset directory; SPLIT default train), read with `datasets.load_dataset`."""
    spec = str(source)
    if not spec.startswith(HF_PREFIX):
        return read_jsonl(source, required)
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(f"{spec}: cannot load the dataset ({str(e).splitlines()[0]})") from None
    missing = [k for k in required if k not in dataset.column_names]
    if missing:
        raise DataError(f"{spec}: missing field '{missing[0]}' (columns: {', '.join(dataset.column_names)})")
    return list(dataset)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, recorded beside artifacts so a reader knows which data made them."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.cache
def git_sha() -> str | None:
    """The commit of the ra3 checkout that is running, if it is one (recorded beside every artifact)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def provenance(seed: int, **data: str | Path) -> dict[str, Any]:
    """What made an artifact: ra3 version, git SHA, seed, the SHA-256 of each named input file, and the
    name of each input that is not a local file (an `hf:` dataset)."""
    from ra3 import __version__

    hashes = {name: file_sha256(path) for name, path in data.items() if Path(path).is_file()}
    sources = {name: str(path) for name, path in data.items() if name not in hashes}
    return {"ra3_version": __version__, "git_sha": git_sha(), "seed": seed, "data_sha256": hashes,
            **({"data_sources": sources} if sources else {})}
