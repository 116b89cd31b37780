"""How the judge compares a program's plain values (`sandbox_wire`) with the expected ones.

Run in the judge's process, outside the sandbox: `sandbox_judge.py` imports this file as a sibling module
by its bare name. Standard library only. The values compared are plain and of exact types, so every
comparison here is the judge's own code: a program object cannot take part in one.
"""

import math
import re
from collections.abc import Callable
from decimal import Decimal

import sandbox_wire as wire  # the sibling module, as in `sandbox_judge.py`

_PLAIN_KEYS = (int, bool, str, bytes, type(None), float)


def _plain_key(value) -> bool:
    """A dict key or set element of plain type (tuples of them too)."""
    if type(value) is tuple:
        return all(_plain_key(v) for v in value)
    return type(value) in _PLAIN_KEYS


def make_equal(atol: float) -> Callable[[object, object], bool]:
    """Value equality on plain values, type-first: floats and complex within rel 1e-7 / `atol`, 2.0 for 2."""
    import cmath

    isclose, isnan = math.isclose, math.isnan

    def equal(out, exp) -> bool:
        if type(exp) is float:
            if type(out) not in (float, int):
                return False
            if isnan(exp) or isnan(out):
                return isnan(exp) and isnan(out)
            return isclose(out, exp, rel_tol=1e-7, abs_tol=atol)
        if type(exp) is complex:
            if type(out) not in (complex, float, int):
                return False
            if cmath.isnan(exp) or cmath.isnan(out):
                return cmath.isnan(exp) and cmath.isnan(out)
            return cmath.isclose(out, exp, rel_tol=1e-7, abs_tol=atol)
        if type(exp) in (list, tuple):
            return (type(out) is type(exp) and len(out) == len(exp)
                    and all(equal(o, e) for o, e in zip(out, exp, strict=True)))
        if type(exp) is dict:
            return (type(out) is dict and len(out) == len(exp)
                    and all(_plain_key(k) and k in exp and equal(v, exp[k]) for k, v in out.items()))
        if type(exp) in (set, frozenset):
            return type(out) is type(exp) and all(_plain_key(v) for v in out) and out == exp
        if type(exp) in (int, bool) and type(out) in (int, bool, float):
            return out == exp  # EvalPlus and LiveCodeBench accept 2.0 for 2
        return type(out) is type(exp) and type(exp) in wire.SCALARS and out == exp

    return equal


def functional(tests: dict) -> Callable[[object, object, list], bool]:
    """The comparison of a functional test, (out, exp, args) -> bool: its trusted oracle source, run here,
    else `make_equal(atol)`."""
    equal, atol = make_equal(tests["atol"]), tests["atol"]
    if not tests.get("oracle"):
        return lambda out, exp, args: equal(out, exp)
    namespace: dict = {"__name__": "__ra3_oracle__"}
    exec(compile(tests["oracle"], "<oracle>", "exec"), namespace)
    check = namespace["oracle"]

    def judged(out, exp, args) -> bool:
        try:
            return check(out, exp, args, atol) is True
        except Exception:  # noqa: BLE001 - an output the oracle cannot handle is a wrong output
            return False

    return judged


_INTEGER = re.compile(r"[+-]?\d+")


def same_number(out: str, exp: str) -> bool:
    """An expected integer token is matched exactly, as a number (`3.0` for `3`, never `1000000008` for
    `1000000007`: a relative tolerance, or float's 53 bits, would let wrong integers through); any other
    number within 1e-6, relative or absolute (LiveCodeBench compares numbers as decimals)."""
    try:
        if _INTEGER.fullmatch(exp):
            return Decimal(out) == Decimal(exp)
        return math.isclose(float(out), float(exp), rel_tol=1e-6, abs_tol=1e-6)
    except (ValueError, ArithmeticError):  # not a number (decimal's InvalidOperation is an ArithmeticError)
        return False


def same_tokens(out: str, exp: str) -> bool:
    """Whitespace-separated tokens equal, numbers as `same_number` says (LiveCodeBench, Codeforces)."""
    a, b = out.split(), exp.split()
    return len(a) == len(b) and all(x == y or same_number(x, y) for x, y in zip(a, b, strict=True))
