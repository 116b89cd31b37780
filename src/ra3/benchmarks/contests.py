"""LiveCodeBench `code_generation_lite` records and Codeforces-style stdin/stdout problems."""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import zlib
from pathlib import Path
from typing import Any

from ra3.benchmarks.problem import (
    Problem,
    data_file,
)
from ra3.files import DataError, iter_jsonl
from ra3.sandbox import (
    FunctionalTest,
    StdioTest,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- LiveCodeBench and Codeforces

# LiveCodeBench puts these star-imports before every program (lcb_runner/evaluation/testing_util.py,
# `import_string`), so programs that rely on them pass there; we give them the same start.
_LCB_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
                "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
LCB_PRELUDE = ("".join(f"from {m} import *\n" for m in _LCB_MODULES)
               + "".join(f"import {m}\n" for m in _LCB_MODULES if m not in ("builtins", "typing"))
               + "sys.setrecursionlimit(50000)\n\n")
LCB_TEST_TIMEOUT = 6.0  # LiveCodeBench's per-test timeout; its global one is (6 + 1) x tests + 5 s


class _StrOnly(pickle.Unpickler):
    """LiveCodeBench pickles a JSON *string*; refuse anything that would import or call code."""

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(f"refusing to unpickle {module}.{name} from test data")


def _lcb_cases(raw: str, where: str) -> list[dict]:
    """Test cases: a JSON list, or (private tests) base64 -> zlib -> pickle -> JSON string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        text = _StrOnly(io.BytesIO(zlib.decompress(base64.b64decode(raw.encode())))).load()
        return json.loads(text)
    except (ValueError, TypeError, zlib.error, pickle.UnpicklingError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: cannot decode test cases ({type(e).__name__}: {e})") from None


def lcb_prompt(r: dict) -> str:
    """The problem statement and, for LeetCode problems, the starter code to complete."""
    if r["starter_code"]:
        return (f"{r['question_content']}\n\nYou will use the following starter code to write the solution to the "
                f"problem and enclose your code within delimiters.\n```python\n{r['starter_code']}\n```\n")
    return (f"{r['question_content']}\n\nRead the inputs from stdin solve the problem and write the answer to "
            f"stdout (do not directly test on the sample inputs).\n")


def _lcb_problem(r: dict, where: str) -> Problem:
    cases = _lcb_cases(r["public_test_cases"], f"{where}: public_test_cases") + _lcb_cases(
        r["private_test_cases"], f"{where}: private_test_cases")
    if not cases:
        raise DataError(f"{where}: no test cases")
    meta = json.loads(r["metadata"]) if isinstance(r.get("metadata"), str) else (r.get("metadata") or {})
    prefix, entry = LCB_PRELUDE, ""
    if cases[0]["testtype"] == "functional":
        if "func_name" not in meta:
            raise DataError(f"{where}: functional tests but no metadata.func_name")
        try:  # one JSON value per line per argument; the output is one JSON value
            inputs = [[json.loads(line) for line in c["input"].split("\n")] for c in cases]
            outputs = [json.loads(c["output"]) for c in cases]
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: functional test is not JSON ({e.msg})") from None
        tests = FunctionalTest(inputs, outputs)
        prefix += (f"def _ra3_call(*args):  # ra3 harness: LiveCodeBench calls Solution().{meta['func_name']}\n"
                   f"    out = Solution().{meta['func_name']}(*args)\n"
                   f"    return list(out) if isinstance(out, tuple) else out\n\n\n")
        entry = "_ra3_call"
    else:
        tests = StdioTest([c["input"] for c in cases], [c["output"] for c in cases])
    return Problem(r["question_id"], lcb_prompt(r), entry, tests, (LCB_TEST_TIMEOUT + 1) * len(cases) + 5,
                   program_prefix=prefix,
                   metadata={"source": "livecodebench", "prelude": prefix, "platform": r.get("platform"),
                             "difficulty": r.get("difficulty"), "contest_date": r.get("contest_date"),
                             "title": r.get("question_title")})


def load_livecodebench(path: str | Path | None = None, split: str | None = None) -> list[Problem]:
    """LiveCodeBench `code_generation_lite` records; `split` = a difficulty (easy/medium/hard) or None for all."""
    path = data_file("livecodebench", path)
    fields = ("question_id", "question_content", "starter_code", "public_test_cases", "private_test_cases")
    problems = [_lcb_problem(r, f"{path}:{i}") for i, r in enumerate(iter_jsonl(path, required=fields), 1)]
    return [p for p in problems if split in (None, p.metadata["difficulty"])]


def codeforces_prompt(r: dict) -> str:
    """Statement, formats, examples and note, in Markdown."""
    parts = [f"# {r.get('title', r['id'])}", r["description"], "## Input", r.get("input_format") or "",
             "## Output", r.get("output_format") or ""]
    for ex in r.get("examples") or []:
        parts += ["## Example input", f"```\n{ex['input']}```", "## Example output", f"```\n{ex['output']}```"]
    if r.get("note"):
        parts += ["## Note", r["note"]]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def _codeforces_skip(r: dict) -> str:
    if r.get("interaction_format"):
        return "interactive"
    if (r.get("input_mode") or "stdio") != "stdio":
        return "file input"
    if r.get("generated_checker"):
        return "needs a checker"
    return "" if (r.get("official_tests") or r.get("examples")) else "no tests"


def load_codeforces(path: str | Path | None = None, split: str | None = None) -> list[Problem]:
    """open-r1/codeforces records (JSONL): stdin/stdout problems judged token-wise on the official tests.

    Problems that are interactive, read files, need a checker or have no tests are skipped (counted in
    the log). Time limit: (the problem's per-test limit + 1 s start-up) x tests + 5 s.
    """
    path = data_file("codeforces", path)
    problems, skipped = [], {}
    for r in iter_jsonl(path, required=("id", "description", "time_limit")):
        why = _codeforces_skip(r)
        if why:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        cases = r.get("official_tests") or r["examples"]
        problems.append(Problem(
            r["id"], codeforces_prompt(r), "", StdioTest([c["input"] for c in cases], [c["output"] for c in cases]),
            (float(r["time_limit"]) + 1) * len(cases) + 5,
            metadata={"source": "codeforces", "rating": r.get("rating"), "tags": r.get("tags", []),
                      "official_tests": bool(r.get("official_tests")),
                      "official_tests_complete": r.get("official_tests_complete")}))
    if skipped:
        logger.warning("codeforces: skipped %s of %d problems (%s)", sum(skipped.values()),
                       sum(skipped.values()) + len(problems), ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    return [p for p in problems if split is None or str(p.metadata["rating"]) == split]


