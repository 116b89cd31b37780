"""HumanEval+ and MBPP+ (EvalPlus): expected outputs recorded from the canonical solutions, special oracles."""

from __future__ import annotations

import base64
import hashlib
import logging
import marshal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ra3.benchmarks.problem import (
    CACHE_VERSION,
    DIGEST_OVER_BYTES,
    EVALPLUS_GT_TIME_LIMIT_FACTOR,
    EVALPLUS_MAX_TIME_LIMIT,
    EVALPLUS_MEMORY_MB,
    EVALPLUS_MIN_TIME_LIMIT,
    RECORD_LIMITS,
    Problem,
    data_file,
    default_cache_dir,
)
from ra3.files import DataError, atomic_write_text, file_sha256, read_jsonl
from ra3.sandbox import (
    FunctionalTest,
    Job,
    record_outputs,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- HumanEval+ and MBPP+ (EvalPlus)

def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# JSON has no tuples, sets or complex numbers: EvalPlus's MBPP+ loader converts these tasks' inputs back
# (evalplus/data/mbpp.py, mbpp_deserialize_inputs); each entry maps one input (argument list) to the real one.
_MBPP_PLUS_INPUTS: dict[tuple[int, ...], Callable[[list], Any]] = {
    (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744,
     809): lambda inp: [tuple(a) for a in inp],
    (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        lambda inp: [[tuple(x) for x in a] for a in inp],
    (75, 413, 444, 753): lambda inp: [[tuple(x) for x in inp[0]], inp[1]],
    (106, 750): lambda inp: [inp[0], tuple(inp[1])],
    (115,): lambda inp: [[set(x) if isinstance(x, list) and x else {} for x in inp[0]]],  # sic: {} is a dict
    (124,): lambda inp: [float(inp[0]), complex(inp[1])],
    (250, 307, 405, 446, 617, 720, 763, 808): lambda inp: [tuple(inp[0]), *inp[1:]],
    (259, 401, 445): lambda inp: [tuple(tuple(x) for x in a) for a in inp],
    (278,): lambda inp: [tuple(tuple(x) if isinstance(x, list) else x for x in inp[0])],
    (722,): lambda inp: [{k: tuple(v) for k, v in inp[0].items()}, *inp[1:]],
    (252,): lambda inp: [complex(inp[0])],
    (580, 615, 791): _tuples,
}
_MBPP_PLUS_CONVERT = {task: fn for tasks, fn in _MBPP_PLUS_INPUTS.items() for task in tasks}

# EvalPlus's special oracles (evalplus/eval/__init__.py, unsafe_execute; helpers in _special_oracle.py):
# (dataset, entry point) -> a boolean expression of `out` (candidate output), `exp` (reference output),
# `args` and `atol`. Our own implementations of the same rules.
_MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
                "intersection_array", "find_dissimilar", "Diff")
_MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")  # return re.Match or None
# Outputs that cannot travel back from the sandbox (re.Match) or through marshal (Counter) are recorded
# converted: EvalPlus keeps only `is not None` for the first; a Counter equals the dict of its items.
_RECORD_AS = {**{name: "{call} is not None" for name in _MBPP_NOT_NONE}, "freq_count": "dict({call})"}
_ORACLES = {
    ("humaneval", "find_zero"): "abs(_ra3_poly(args[0], out)) <= atol",
    ("mbpp", "are_equivalent"): "True",  # Mbpp/164: any output is accepted
    ("mbpp", "sum_div"): "out == exp or out == 0",  # Mbpp/295
    ("mbpp", "surface_Area"): "out == exp or abs(out - _ra3_surface_area(*args)) <= atol",  # Mbpp/581
    ("mbpp", "digit_distance_nums"): "out == exp or out == _ra3_digit_distance(*args)",  # Mbpp/558
    **{("mbpp", name): "set(out) == set(exp)" for name in _MBPP_SET_EQ},
    **{("mbpp", name): "out == exp if isinstance(out, bool) else exp == (out is not None)"
       for name in _MBPP_NOT_NONE},
    ("mbpp", "freq_count"): "isinstance(out, dict) and dict(out) == exp",  # Mbpp/88 returns a Counter
}
_ORACLE_HELPERS = """import math as _ra3_math

def _ra3_poly(xs, x):
    return sum(c * _ra3_math.pow(x, i) for i, c in enumerate(xs))

def _ra3_surface_area(base_edge, height):  # the apex height read as the perpendicular height
    slant = _ra3_math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)

def _ra3_digit_distance(a, b):  # digits compared after zero-padding to equal length
    x, y = str(a), str(b)
    width = max(len(x), len(y))
    return sum(abs(int(p) - int(q)) for p, q in zip(x.zfill(width), y.zfill(width)))
"""


def oracle_source(check: str) -> str:
    """Trusted judge-side code for a special oracle: `oracle(out, exp, args, atol)` is True when `check`,
    an expression of the candidate's output `out` (plain values, or a proxy for a program object), the
    reference output `exp`, the inputs `args` and `atol`, accepts."""
    return f"{_ORACLE_HELPERS}\n\ndef oracle(out, exp, args, atol):\n    return bool({check})\n"


def _digest(value: Any) -> str:
    """SHA-256 of repr: what the program's side sends for a `digest` test (same interpreter, same repr)."""
    return hashlib.sha256(repr(value).encode()).hexdigest()


def _digestible(x: Any) -> bool:
    """Values whose repr is canonical (no sets or dicts, whose repr follows insertion or hash order)."""
    if isinstance(x, (list, tuple)):
        return all(map(_digestible, x))
    return x is None or type(x) in (str, int, bool, bytes, float)


def _is_floats(x: Any) -> bool:
    """EvalPlus's rule: a float, or a non-empty list/tuple of floats, compares with atol >= 1e-6."""
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(v, float) for v in x))


def _evalplus_inputs(record: dict, dataset: str) -> tuple[list, list]:
    base, plus = record["base_input"], record["plus_input"] or []  # Mbpp/793 stores no plus inputs as {}
    convert = _MBPP_PLUS_CONVERT.get(int(record["task_id"].split("/")[-1])) if dataset == "mbpp" else None
    if convert is None:
        return base, plus
    return [convert(i) for i in base], [convert(i) for i in plus]


def _record_job(record: dict, inputs: list, dataset: str) -> Job:
    """Trusted: the canonical solution, run as EvalPlus runs it (prompt + canonical_solution)."""
    code, entry = record["prompt"] + record["canonical_solution"], record["entry_point"]
    if dataset == "mbpp" and entry in _RECORD_AS:
        code += f"\n\ndef _ra3_record(*args):\n    return {_RECORD_AS[entry].format(call=entry + '(*args)')}\n"
        entry = "_ra3_record"
    return Job(code, FunctionalTest(inputs, []), entry, RECORD_LIMITS)


def _record_ground_truth(records: list[dict], inputs: list[tuple[list, list]], dataset: str) -> dict:
    """{task_id: [base outputs, base wall s, plus outputs, plus wall s, digested]} from the canonical code."""
    # an empty input list (Mbpp/793's plus inputs) is not run: the sandbox fails empty suites
    jobs = [_record_job(r, part, dataset) for r, parts in zip(records, inputs, strict=True) for part in parts if part]
    recordings = iter(record_outputs(jobs, desc=f"recording {dataset}+ ground truth"))
    truth = {}
    for r, parts in zip(records, inputs, strict=True):
        row = []
        for part in parts:
            rec = next(recordings) if part else None
            if rec is not None and rec.outputs is None:
                raise DataError(f"{r['task_id']}: the canonical solution did not run: {rec.verdict.detail}")
            row += [rec.outputs, rec.verdict.wall_s] if rec else [[], 0.0]
        outputs = row[0] + row[2]
        # a digest compares exactly, as EvalPlus does unless atol > 0 or an output is a float (list)
        digested = (len(marshal.dumps(outputs)) > DIGEST_OVER_BYTES and not r["atol"]
                    and not any(map(_is_floats, outputs)) and _digestible(outputs))
        if digested:
            row[0], row[2] = [_digest(v) for v in row[0]], [_digest(v) for v in row[2]]
        truth[r["task_id"]] = [*row, digested]
    return truth


def _ground_truth(path: Path, records: list[dict], inputs: list, dataset: str, cache_dir: Path | None) -> dict:
    """Recorded outputs and reference times, from the cache when this data file was recorded before."""
    key = hashlib.sha256(f"{file_sha256(path)} {CACHE_VERSION} {sys.version_info[:2]}".encode()).hexdigest()
    cache = (cache_dir or default_cache_dir()) / f"{dataset}plus-ground-truth-{key[:20]}.marshal.b64"
    if cache.is_file():
        return marshal.loads(base64.b64decode(cache.read_text()))
    logger.info("recording %s+ ground truth once (cached at %s)", dataset, cache)
    truth = _record_ground_truth(records, inputs, dataset)
    # marshal, not pickle: loading it runs no code, and every value must marshal anyway to reach the sandbox
    atomic_write_text(cache, base64.b64encode(marshal.dumps(truth)).decode())
    return truth


def evalplus_time_limit(reference_wall_s: float) -> float:
    """EvalPlus's rule on the whole run: max(4 s, 4 x reference time), capped (see module docstring)."""
    return min(EVALPLUS_MAX_TIME_LIMIT, max(EVALPLUS_MIN_TIME_LIMIT, EVALPLUS_GT_TIME_LIMIT_FACTOR * reference_wall_s))


def _evalplus_problem(r: dict, inputs: list, outputs: list, wall_s: float, digested: bool, dataset: str) -> Problem:
    check = _ORACLES.get((dataset, r["entry_point"]))
    meta = {"source": f"{dataset}_plus", "canonical_solution": r["canonical_solution"], "function": r["entry_point"],
            "reference_wall_s": wall_s, "memory_mb": EVALPLUS_MEMORY_MB}
    if check is None or digested:
        atol = float(r["atol"]) or (1e-6 if any(map(_is_floats, outputs)) else 0.0)
        tests = FunctionalTest(inputs, outputs, atol, digest=digested)
    else:
        tests = FunctionalTest(inputs, outputs, float(r["atol"]), oracle=oracle_source(check))
    return Problem(r["task_id"], r["prompt"], r["entry_point"], tests, evalplus_time_limit(wall_s),
                   program_prefix=r["prompt"], metadata=meta)


def _load_evalplus(path: Path, dataset: str, split: str | None, cache_dir: Path | None) -> list[Problem]:
    if split not in (None, "plus", "base"):
        raise DataError(f"{path}: unknown split '{split}' for {dataset}+ (base: original inputs only; plus: all)")
    records = read_jsonl(path, required=("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                                         "plus_input", "atol"))
    inputs = [_evalplus_inputs(r, dataset) for r in records]
    truth = _ground_truth(path, records, inputs, dataset, cache_dir)
    problems = []
    for r, (base_in, plus_in) in zip(records, inputs, strict=True):
        base_out, base_s, plus_out, plus_s, digested = truth[r["task_id"]]
        if split == "base":
            problems.append(_evalplus_problem(r, base_in, base_out, base_s, digested, dataset))
        else:
            problems.append(_evalplus_problem(r, base_in + plus_in, base_out + plus_out, base_s + plus_s, digested,
                                              dataset))
    return problems


def load_humaneval_plus(path: str | Path | None = None, split: str | None = None,
                        cache_dir: str | Path | None = None) -> list[Problem]:
    """HumanEval+ v0.1.10: base + plus inputs (split 'base': the original inputs only)."""
    path = data_file("humaneval_plus", path)
    return _load_evalplus(path, "humaneval", split, Path(cache_dir) if cache_dir else None)


def load_mbpp_plus(path: str | Path | None = None, split: str | None = None,
                   cache_dir: str | Path | None = None) -> list[Problem]:
    """MBPP+ v0.2.0 (378 tasks): base + plus inputs (split 'base': the original inputs only)."""
    path = data_file("mbpp_plus", path)
    return _load_evalplus(path, "mbpp", split, Path(cache_dir) if cache_dir else None)


