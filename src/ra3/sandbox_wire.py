"""What crosses between a program's process and its judge: plain values in length-prefixed frames.

Standard library only. Both ends import this file as a sibling module by its bare name
(`sandbox_harness.py` inside the sandbox, `sandbox_judge.py` outside it, each run as a script); the tests
import it as `ra3.sandbox_wire`.

A frame is an 8-byte little-endian length and a `marshal` (version 2) of a tuple whose first item is a
str tag. The values inside are *plain*: int, float, complex, str, bytes, bool, None, and lists, tuples,
dicts, sets and frozensets of them; a program object that is not plain travels as a *handle*,
`(Ellipsis, n)`, the n-th object the program's process keeps for the judge. Never pickle: decoding a
frame builds plain objects and runs no code.

The judge trusts none of what it reads: `read_frame` refuses frames over a size cap before reading them,
and `checked` rebuilds nothing it has not type-checked (exact types only, no subclass, nesting at most
`MAX_DEPTH`, no container seen twice: marshal's back-references could otherwise make a small frame
expand into a huge or cyclic structure). What the program side sends is whatever the program makes it
send; the guarantee is only that the judge compares plain values with its own code.
"""

from __future__ import annotations

import marshal
from builtins import bytes, complex, dict, float, frozenset, id, int, len, list, map, set, str, tuple, type  # noqa: UP029
from collections.abc import Callable
from typing import Any

# The builtins above are bound here, at import: a program that rebinds `builtins.len` or `builtins.type`
# in its own process does not change what its replies are made of.
SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_CONTAINERS = (list, tuple, dict, set, frozenset)
MAX_DEPTH = 200
HEADER = 8


class WireError(ValueError):
    """A frame that is too big, truncated, not marshal, or holds something that is not a plain value."""


def frame(message: tuple) -> bytes:
    """`message` as one frame (ValueError if it holds an unmarshallable object)."""
    body = marshal.dumps(message, 2)
    return len(body).to_bytes(HEADER, "little") + body


def read_exactly(recv: Callable[[int], bytes], n: int) -> bytes | None:
    """n bytes from `recv` (a socket's recv, or os.read on a pipe), or None at EOF before the first byte;
    WireError at EOF inside them."""
    chunks, got = [], 0
    while got < n:
        chunk = recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise WireError(f"frame truncated after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(recv: Callable[[int], bytes], cap: int) -> bytes | None:
    """The next frame's body (not decoded), None at a clean EOF; WireError if it exceeds `cap` bytes."""
    header = read_exactly(recv, HEADER)
    if header is None:
        return None
    size = int.from_bytes(header, "little")
    if size > cap:
        raise WireError(f"frame of {size} bytes exceeds the cap of {cap}")
    body = read_exactly(recv, size)
    if body is None:
        raise WireError("frame truncated after its header")
    return body


def loads(body: bytes) -> Any:
    """marshal.loads, with every failure a WireError."""
    try:
        return marshal.loads(body)
    except Exception as e:  # noqa: BLE001 - malformed input may raise anything marshal raises
        raise WireError(f"not a marshal frame ({type(e).__name__})") from None


def checked(value: Any, handle: Callable[[int], Any], depth: int = 0, seen: set | None = None) -> Any:
    """`value` if it is plain (handles `(Ellipsis, n)` replaced by `handle(n)`); WireError otherwise."""
    kind = type(value)
    if kind in SCALARS:
        return value
    if seen is None:
        seen = set()
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH}")
    if kind not in _CONTAINERS:
        raise WireError(f"not a plain value: {kind.__name__}")
    if id(value) in seen:
        raise WireError("a container appears twice (shared or cyclic structure)")
    seen.add(id(value))
    if kind is tuple and len(value) == 2 and value[0] is Ellipsis and type(value[1]) is int:
        return handle(value[1])
    if kind is dict:
        if set(map(type, value)) <= SCALARS and set(map(type, value.values())) <= SCALARS:
            return value
        return {checked(k, handle, depth + 1, seen): checked(v, handle, depth + 1, seen) for k, v in value.items()}
    if set(map(type, value)) <= SCALARS:  # the common case, checked at C speed: no rebuild
        return value
    return kind(checked(v, handle, depth + 1, seen) for v in value)


def _no_handles(n: int) -> Any:
    raise WireError("a program object where only plain values are allowed")


def plain(value: Any) -> Any:
    """`value` if it is plain and holds no handle; WireError otherwise."""
    return checked(value, _no_handles)
