"""RL task sets: MBPP train/validation in the RLVR template, kept off every task evaluation uses.

`ra3 rlvr --tasks` takes a task set name or a Problem JSONL file (`load_task_set`). MBPP's sets leave out
every task evaluation uses (test ids 11-510, and the MBPP+ and sanitized-MBPP tasks among ids 511-974):
254 train and 47 validation tasks. They are put in the RLVR template, the world's own: the prompt is a code
prefix (the reference solution's imports, classes and constants, then the signature and the statement as a
docstring) and the completion is the body. A Problem file holding an MBPP task that evaluation uses is
refused.
"""

from __future__ import annotations

import ast
import logging
import random
import warnings
from dataclasses import replace
from pathlib import Path

from ra3.benchmarks.classic import load_mbpp, mbpp_evaluation_ids
from ra3.benchmarks.problem import Problem, load_problems
from ra3.files import DataError

logger = logging.getLogger(__name__)
TASK_SETS = {"mbpp-train": "train", "mbpp-validation": "validation"}  # name -> MBPP split
MBPP_TEST_IDS = range(11, 511)  # MBPP's test split: evaluation only, never RL


def _parse(code: str) -> ast.Module | None:
    """The module's syntax tree, or None; MBPP's invalid escapes (`"\\d"`) warn, which must not fail."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(code)
        except SyntaxError:
            return None


def code_prefix_problem(problem: Problem) -> Problem | None:
    """An MBPP problem (whole-program format) in the RLVR template, or None when its reference solution
    does not parse. The prompt, which is also the program prefix, is the reference solution's setup (its
    imports, classes and constants, which the tests may use: `Pair`, `Node`), the entry point's signature
    and the statement (task text and first assert) as its docstring. The reference's other functions are
    solution, not setup, and stay out."""
    tree = _parse(problem.metadata.get("canonical_solution", "").replace("\r\n", "\n"))
    if tree is None:
        return None
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == problem.entry_point), None)
    statement = problem.prompt.strip().removeprefix('"""').removesuffix('"""').strip()
    if fn is None or '"""' in statement:
        return None
    setup = "".join(ast.unparse(n) + "\n" for n in tree.body
                    if isinstance(n, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.Assign)))
    doc = "\n    ".join(statement.splitlines())
    header = setup + "\n" if setup else ""
    raw = "r" if "\\" in doc else ""  # regex tasks: keep `\d` as written, without an invalid-escape warning
    prompt = f'{header}def {fn.name}({ast.unparse(fn.args)}):\n    {raw}"""{doc}\n    """\n'
    if _parse(prompt + "    pass\n") is None:
        return None
    return replace(problem, prompt=prompt, program_prefix=prompt)


def _mbpp_id(problem: Problem) -> int | None:
    source = str(problem.metadata.get("source", ""))
    head, _, tail = problem.task_id.partition("/")
    if source.startswith("mbpp") or head.lower() in ("mbpp", "mbpp_plus", "mbppplus"):
        return int(tail) if tail.isdigit() else None
    return None


def _load_task_set(name: str) -> list[Problem]:
    if name in TASK_SETS:
        held_out = mbpp_evaluation_ids()
        loaded = [p for p in load_mbpp(split=TASK_SETS[name]) if _mbpp_id(p) not in held_out]
        problems = [p for p in map(code_prefix_problem, loaded) if p is not None]
        logger.info("%s: %d tasks (MBPP+ and sanitized-MBPP tasks left out; %d whose reference does not "
                    "parse)", name, len(problems), len(loaded) - len(problems))
        assert not any(_mbpp_id(p) in MBPP_TEST_IDS for p in problems), "an MBPP test id reached RL"
        return problems
    path = Path(name)
    if not path.is_file():
        raise DataError(f"tasks: '{name}' is neither a task set ({', '.join(TASK_SETS)}) nor a Problem "
                          f"JSONL file")
    problems = load_problems(path)
    if any(_mbpp_id(p) is not None for p in problems):
        held_out = mbpp_evaluation_ids()
        leaked = [p.task_id for p in problems if _mbpp_id(p) in held_out]
        if leaked:
            raise DataError(f"{path}: holds MBPP tasks that evaluation uses ({', '.join(leaked[:3])}, ...): "
                            f"the test split and MBPP+/sanitized tasks are evaluation only")
    return problems


def load_task_set(name: str, max_tasks: int = 0, seed: int = 0) -> list[Problem]:
    """Problems of a task set or file; with `max_tasks`, a seeded subset in the original order."""
    problems = _load_task_set(name)
    if not problems:
        raise DataError(f"tasks: '{name}' holds no tasks")
    if 0 < max_tasks < len(problems):
        keep = sorted(random.Random(seed).sample(range(len(problems)), max_tasks))
        problems = [problems[i] for i in keep]
    return problems
