"""The rationale format, in one place: a comment line `<indent># <text>` before the line it plans for
(method.md §2). Torch-free, so the world generator and the E-step share it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def indent_of(line: str) -> str:
    """The leading spaces and tabs of `line`."""
    return line[: len(line) - len(line.lstrip(" \t"))]


def rationale_line(indent: str, text: str) -> str:
    """The comment line a rationale is written as: `<indent># <text>\\n` (whitespace in `text` collapsed)."""
    text = " ".join(text.split())
    return f"{indent}# {text}\n" if text else f"{indent}#\n"


def insert_rationales(lines: Sequence[str], rationales: Mapping[int, str]) -> str:
    """The lines joined, with rationale t's comment line before line t at that line's indentation.

    The result is valid Python whenever the lines are (a comment changes no statement) and runs the same.
    """
    if any(not 0 <= t < len(lines) for t in rationales):
        raise ValueError(f"rationale lines {sorted(rationales)} outside the code's {len(lines)} lines")
    out = []
    for t, line in enumerate(lines):
        if t in rationales:
            out.append(rationale_line(indent_of(line), rationales[t]))
        out.append(line)
    return "".join(out)
