"""Benchmark data installed with the package: found without $RA3_DATA_DIR, checked against SHA256SUMS."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pytest

from ra3.benchmarks import load_mbpp, load_mbpp_sanitized
from ra3.benchmarks.problem import (
    PACKAGED_DATA_DIR,
    SUMS_FILE,
    _sha256sums,
    default_data_dir,
    verify_data_file,
)
from ra3.files import DataError, file_sha256, read_jsonl

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the workspace's offline copy, when there is one
FILES = {  # relative path → records
    "mbpp/mbpp.jsonl": 974,
    "mbpp/sanitized-mbpp.json": 427,
    "evalplus/HumanEvalPlus-v0.1.10.jsonl.gz": 164,
    "evalplus/MbppPlus-v0.2.0.jsonl.gz": 378,
}


@pytest.fixture
def no_override(monkeypatch) -> None:
    monkeypatch.delenv("RA3_DATA_DIR", raising=False)


def test_packaged_files_load_without_ra3_data_dir(no_override):
    assert default_data_dir() == PACKAGED_DATA_DIR
    assert sorted(_sha256sums(PACKAGED_DATA_DIR)) == sorted(FILES)
    assert len(load_mbpp(split="all")) == FILES["mbpp/mbpp.jsonl"]
    assert len(load_mbpp_sanitized(split="all")) == FILES["mbpp/sanitized-mbpp.json"]
    for name in ("evalplus/HumanEvalPlus-v0.1.10.jsonl.gz", "evalplus/MbppPlus-v0.2.0.jsonl.gz"):
        # The EvalPlus loaders record ground truth in the sandbox (minutes); their file check is the same one.
        path = verify_data_file(PACKAGED_DATA_DIR / name)
        assert len(read_jsonl(path, required=("task_id", "prompt", "canonical_solution"))) == FILES[name]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no offline data folder at {SHARED_DATA} to compare")
def test_packaged_files_are_the_shared_folders_bytes():
    for name in [*FILES, SUMS_FILE]:
        assert (PACKAGED_DATA_DIR / name).read_bytes() == (SHARED_DATA / name).read_bytes(), name


def test_every_packaged_file_goes_into_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = REPO / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["ra3"]
    package = PACKAGED_DATA_DIR.parents[1]  # src/ra3
    shipped = {p.relative_to(package).as_posix() for p in PACKAGED_DATA_DIR.rglob("*")
               if p.is_file() and p.name != ".gitattributes" and "__pycache__" not in p.parts}
    missed = sorted(f for f in shipped if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns))
    assert not missed, f"not in [tool.setuptools.package-data]: {missed}"
    assert {"benchmarks/data/README.md", "benchmarks/data/SHA256SUMS"} <= shipped


def _tampered_copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / "data"
    shutil.copytree(PACKAGED_DATA_DIR, root)
    target = root / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return root


def test_a_tampered_file_is_a_one_line_error_naming_it_and_the_fix(tmp_path, monkeypatch):
    root = _tampered_copy(tmp_path, "mbpp/mbpp.jsonl")
    target = root / "mbpp" / "mbpp.jsonl"
    with pytest.raises(DataError, match="SHA-256") as err:
        verify_data_file(target, root)
    message = str(err.value)
    assert "\n" not in message and str(target) in message and str(root / SUMS_FILE) in message
    assert "restore the original file" in message
    verify_data_file(root / "mbpp" / "sanitized-mbpp.json", root)  # the untouched files still pass
    # A loader reading the default file checks it too (here through $RA3_DATA_DIR).
    monkeypatch.setenv("RA3_DATA_DIR", str(root))
    with pytest.raises(DataError, match="mbpp.jsonl: SHA-256"):
        load_mbpp(split="train")


def test_the_packaged_folder_error_says_to_reinstall(tmp_path, monkeypatch):
    root = _tampered_copy(tmp_path, "evalplus/MbppPlus-v0.2.0.jsonl.gz")
    monkeypatch.setattr("ra3.benchmarks.problem.PACKAGED_DATA_DIR", root)
    target = root / "evalplus" / "MbppPlus-v0.2.0.jsonl.gz"
    with pytest.raises(DataError, match="reinstall ra3 .*RA3_DATA_DIR"):
        verify_data_file(target, root)


def test_a_file_is_hashed_once_per_process(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(PACKAGED_DATA_DIR / "mbpp", root / "mbpp")
    (root / SUMS_FILE).write_text(f"{file_sha256(root / 'mbpp' / 'mbpp.jsonl')}  mbpp/mbpp.jsonl\n")
    target = root / "mbpp" / "mbpp.jsonl"
    assert verify_data_file(target, root) == target
    target.write_text("edited after the first check\n")
    assert verify_data_file(target, root) == target  # cached: not hashed again
    verify_data_file.cache_clear()
    with pytest.raises(DataError, match="SHA-256"):
        verify_data_file(target, root)


def test_ra3_data_dir_overrides_the_packaged_copy(tmp_path, monkeypatch):
    lines = (PACKAGED_DATA_DIR / "mbpp" / "mbpp.jsonl").read_text().splitlines()[600:603]
    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("\n".join(lines) + "\n")  # no SHA256SUMS: not checked
    monkeypatch.setenv("RA3_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert [p.task_id for p in load_mbpp(split="train")] == ["Mbpp/601", "Mbpp/602", "Mbpp/603"]
    with pytest.raises(DataError, match=r"not found: .*sanitized-mbpp.json .*RA3_DATA_DIR"):
        load_mbpp_sanitized()  # the override folder is used alone, never mixed with the packaged copy


def test_an_explicit_path_wins_and_is_not_checked(tmp_path, no_override):
    path = tmp_path / "mine.jsonl"
    path.write_text((PACKAGED_DATA_DIR / "mbpp" / "mbpp.jsonl").read_text().splitlines()[9] + "\n")
    assert [p.task_id for p in load_mbpp(path, split="all")] == ["Mbpp/10"]


def test_a_malformed_sums_file_names_its_line(tmp_path):
    (tmp_path / SUMS_FILE).write_text("not a digest  mbpp/mbpp.jsonl\n")
    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match=rf"{SUMS_FILE}:1: expected"):
        verify_data_file(tmp_path / "mbpp" / "mbpp.jsonl", tmp_path)
