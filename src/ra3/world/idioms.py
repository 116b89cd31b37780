"""The synthetic world's idiom library: parameterised, multi-line code idioms over a list of ints `xs`.

An idiom is one plan step. Its code is a template at body indentation 0; `$name` fields come from the
variant (code fragments such as a condition) and from sampled integer parameters (`$k`, `$lo`, `$hi`).
A *transform* rewrites `xs` and ends by assigning its result back (`xs = kept`), or returning it when it
is the last step; a *final* turns `xs` into the function's answer and returns it.

Each idiom has a canonical short `name` ("running max"): pretraining comments use it, so it is a rationale
vocabulary a tiny model can learn to write (world-notes.md: rationales must be producible, not copied from
the statement). Statements use other words (`step` and `goal` phrases), so the name is not a copy of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from string import Template

ORDINALS = {2: "second", 3: "third", 4: "fourth"}


@dataclass(frozen=True)
class Variant:
    """One parameterisation family of an idiom: the code fragments and the words that describe it.

    `step` is an imperative phrase (steps-style statements), `goal` a noun phrase wrapping the
    description of its input `$inner` (goal-style statements), `detail` the parameter in a few words
    (comments such as `# filter: x > 3`). `params` maps each integer parameter to its allowed values.
    """

    step: str
    goal: str
    detail: str
    code: dict[str, str] = field(default_factory=dict)
    params: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Idiom:
    """A plan step: canonical name, code template, and (transforms) the expression holding its result."""

    name: str
    code: str
    variants: tuple[Variant, ...]
    result: str = ""  # transforms: what `xs` becomes; finals return inside `code`

    @property
    def final(self) -> bool:
        return not self.result


@dataclass(frozen=True)
class Step:
    """An idiom with its parameters chosen: one step of a task's true plan."""

    idiom: Idiom
    variant: int
    values: tuple[tuple[str, int], ...]  # sampled parameters, sorted by name

    @property
    def name(self) -> str:
        return self.idiom.name

    def _fields(self) -> dict[str, str]:
        fields = {k: str(v) for k, v in self.values}
        if "k" in fields:
            fields["kth"] = ORDINALS.get(int(fields["k"]), f"{fields['k']}th")
        return fields

    def _text(self, template: str, **extra: str) -> str:
        return Template(template).substitute(self._fields(), **extra)

    @property
    def params(self) -> dict[str, int]:
        return dict(self.values)

    @property
    def step_phrase(self) -> str:
        return self._text(self.idiom.variants[self.variant].step)

    def goal_phrase(self, inner: str) -> str:
        return self._text(self.idiom.variants[self.variant].goal, inner=inner)

    @property
    def detail(self) -> str:
        return self._text(self.idiom.variants[self.variant].detail)

    def lines(self, last: bool) -> list[str]:
        """The step's code lines (no indentation, no newlines); a transform's last line hands on its
        result: `xs = <result>`, or `return <result>` when it ends the program."""
        fields = self._fields()
        fields.update({k: Template(v).substitute(fields) for k, v in self.idiom.variants[self.variant].code.items()})
        lines = Template(self.idiom.code).substitute(fields).split("\n")
        if not self.idiom.final:
            lines.append(f"return {self.idiom.result}" if last else f"xs = {self.idiom.result}")
        return lines


def sample_step(idiom: Idiom, rng: random.Random) -> Step:
    """Pick a variant and its parameters uniformly."""
    variant = rng.randrange(len(idiom.variants))
    params = idiom.variants[variant].params
    return Step(idiom, variant, tuple((k, rng.choice(params[k])) for k in sorted(params)))


def _v(step: str, goal: str, detail: str, code: dict[str, str] | None = None, **params: range) -> Variant:
    return Variant(step, goal, detail, code or {}, {k: tuple(v) for k, v in params.items()})


TRANSFORMS: tuple[Idiom, ...] = (
    Idiom("filter", "kept = []\nfor x in xs:\n    if $cond:\n        kept.append(x)", (
        _v("keep only the items above $k", "the items of $inner above $k", "x > $k", {"cond": "x > $k"},
           k=range(0, 8)),
        _v("keep only the items below $k", "the items of $inner below $k", "x < $k", {"cond": "x < $k"},
           k=range(2, 10)),
        _v("keep only the even items", "the even items of $inner", "even", {"cond": "x % 2 == 0"}),
        _v("keep only the odd items", "the odd items of $inner", "odd", {"cond": "x % 2 == 1"}),
    ), result="kept"),
    Idiom("map", "mapped = []\nfor x in xs:\n    mapped.append($expr)", (
        _v("multiply each item by $k", "$inner with each item multiplied by $k", "times $k", {"expr": "x * $k"},
           k=range(2, 6)),
        _v("add $k to each item", "$inner with $k added to each item", "plus $k", {"expr": "x + $k"},
           k=range(1, 10)),
        _v("subtract $k from each item", "$inner with $k taken from each item", "minus $k", {"expr": "x - $k"},
           k=range(1, 10)),
        _v("square each item", "$inner with each item squared", "squared", {"expr": "x * x"}),
    ), result="mapped"),
    Idiom("clamp", "clamped = []\nfor x in xs:\n    clamped.append(min(max(x, $lo), $hi))", (
        _v("limit each item to between $lo and $hi", "$inner with each item limited to between $lo and $hi",
           "$lo to $hi", lo=range(0, 4), hi=range(5, 10)),
    ), result="clamped"),
    Idiom("dedupe", "seen = set()\nunique = []\nfor x in xs:\n    if x not in seen:\n        seen.add(x)\n"
                    "        unique.append(x)", (
        _v("drop repeated items, keeping each first occurrence", "$inner without repeated items",
           "first occurrences"),
    ), result="unique"),
    Idiom("reverse", "backwards = []\nfor x in xs:\n    backwards.insert(0, x)", (
        _v("reverse the order of the items", "$inner in reverse order", "back to front"),
    ), result="backwards"),
    Idiom("running sum", "total = 0\nsums = []\nfor x in xs:\n    total += x\n    sums.append(total)", (
        _v("replace each item by the sum of the items up to it", "the prefix sums of $inner", "prefix sums"),
    ), result="sums"),
    Idiom("running max", "best = None\nmaxes = []\nfor x in xs:\n    if best is None or x > best:\n"
                         "        best = x\n    maxes.append(best)", (
        _v("replace each item by the largest item up to it", "the running maxima of $inner", "largest so far"),
    ), result="maxes"),
    Idiom("running min", "low = None\nmins = []\nfor x in xs:\n    if low is None or x < low:\n"
                         "        low = x\n    mins.append(low)", (
        _v("replace each item by the smallest item up to it", "the running minima of $inner", "smallest so far"),
    ), result="mins"),
    Idiom("window sum", "windows = []\nfor i in range(len(xs) - $k + 1):\n    windows.append(sum(xs[i:i + $k]))", (
        _v("replace the items by the sums of every $k neighbouring items",
           "the sums of every $k neighbouring items of $inner", "width $k", k=range(2, 5)),
    ), result="windows"),
    Idiom("sort", "ordered = []\nfor x in xs:\n    i = 0\n    while i < len(ordered) and ordered[i] $op x:\n"
                  "        i += 1\n    ordered.insert(i, x)", (
        _v("sort the items in ascending order", "$inner sorted in ascending order", "ascending", {"op": "<="}),
        _v("sort the items in descending order", "$inner sorted in descending order", "descending", {"op": ">="}),
    ), result="ordered"),
    Idiom("take while", "prefix = []\nfor x in xs:\n    if x $op $k:\n        break\n    prefix.append(x)", (
        _v("keep the leading items up to the first one above $k",
           "the leading items of $inner up to the first one above $k", "until above $k", {"op": ">"},
           k=range(2, 10)),
        _v("keep the leading items up to the first one below $k",
           "the leading items of $inner up to the first one below $k", "until below $k", {"op": "<"},
           k=range(0, 7)),
    ), result="prefix"),
    Idiom("drop while", "start = 0\nwhile start < len(xs) and xs[start] $op $k:\n    start += 1", (
        _v("drop the leading items below $k", "$inner without its leading items below $k", "while below $k",
           {"op": "<"}, k=range(1, 9)),
        _v("drop the leading items above $k", "$inner without its leading items above $k", "while above $k",
           {"op": ">"}, k=range(0, 7)),
    ), result="xs[start:]"),
    Idiom("differences", "diffs = []\nfor i in range(1, len(xs)):\n    diffs.append(xs[i] - xs[i - 1])", (
        _v("replace the items by the differences of neighbouring items",
           "the differences of neighbouring items of $inner", "next minus previous"),
    ), result="diffs"),
    Idiom("chunk sums", "chunks = []\nfor i in range(0, len(xs), $k):\n    chunks.append(sum(xs[i:i + $k]))", (
        _v("replace the items by the sums of consecutive blocks of $k",
           "the sums of consecutive blocks of $k items of $inner", "blocks of $k", k=range(2, 5)),
    ), result="chunks"),
    Idiom("stride", "picked = []\nfor i in range(0, len(xs), $k):\n    picked.append(xs[i])", (
        _v("keep every $kth item, starting with the first", "every $kth item of $inner", "every $kth",
           k=range(2, 4)),
    ), result="picked"),
)

FINALS: tuple[Idiom, ...] = (
    Idiom("total", "total = 0\nfor x in xs:\n    total += x\nreturn total", (
        _v("return the total of the items", "the total of $inner", "sum of items"),
    )),
    Idiom("count values", "counts = {}\nfor x in xs:\n    counts[x] = counts.get(x, 0) + 1\nreturn counts", (
        _v("return a dict from each value to how often it occurs",
           "a dict from each value of $inner to how often it occurs", "value to count"),
    )),
    Idiom("partition", "low = []\nhigh = []\nfor x in xs:\n    if x < $k:\n        low.append(x)\n    else:\n"
                       "        high.append(x)\nreturn [low, high]", (
        _v("return two lists: the items below $k and the rest",
           "two lists, the items of $inner below $k and the rest", "below $k and rest", k=range(1, 9)),
    )),
    Idiom("join", "parts = []\nfor x in xs:\n    parts.append(str(x))\nreturn '$sep'.join(parts)", tuple(
        _v(f"join the items into one string with '{sep}' between them",
           f"$inner written as one string with '{sep}' between items", f"separator '{sep}'", {"sep": sep})
        for sep in (",", "-", ";", "+", " ")
    )),
    Idiom("find first", "for i, x in enumerate(xs):\n    if x $op $k:\n        return i\nreturn -1", (
        _v("return the index of the first item above $k, or -1 if there is none",
           "the index of the first item of $inner above $k (-1 if none)", "first above $k", {"op": ">"},
           k=range(0, 9)),
        _v("return the index of the first item below $k, or -1 if there is none",
           "the index of the first item of $inner below $k (-1 if none)", "first below $k", {"op": "<"},
           k=range(1, 10)),
    )),
    Idiom("largest", "if not xs:\n    return 0\nbest = xs[0]\nfor x in xs:\n    if x > best:\n        best = x\n"
                     "return best", (
        _v("return the largest item, or 0 if there are none", "the largest item of $inner (0 if empty)",
           "max or 0"),
    )),
    Idiom("check all", "for x in xs:\n    if x $op $k:\n        return False\nreturn True", (
        _v("return whether every item is above $k", "whether every item of $inner is above $k", "all above $k",
           {"op": "<="}, k=range(-2, 5)),
        _v("return whether every item is below $k", "whether every item of $inner is below $k", "all below $k",
           {"op": ">="}, k=range(5, 13)),
    )),
    Idiom("count matching", "n = 0\nfor x in xs:\n    if $cond:\n        n += 1\nreturn n", (
        _v("return how many items are above $k", "the number of items of $inner above $k", "above $k",
           {"cond": "x > $k"}, k=range(0, 9)),
        _v("return how many items are even", "the number of even items of $inner", "even",
           {"cond": "x % 2 == 0"}),
    )),
)

IDIOMS: dict[str, Idiom] = {i.name: i for i in TRANSFORMS + FINALS}
