"""What crosses between the parent, the judge and the program's process: plain values in length-prefixed frames.

Standard library only. The scripts import this file as a sibling module by its bare name
(`sandbox_harness.py` inside the sandbox, `sandbox_judge.py` outside it); the parent and the tests import
it as `ra3.sandbox_wire`.

A frame is an 8-byte little-endian length and a body: a `marshal` of a tuple whose first item is a str
tag (version 2 for the program and the judge). The values inside are *plain*: int, float, complex, str,
bytes, bool, None, and lists, tuples, dicts, sets and frozensets of them; a program object that is not
plain travels as a *handle*, `(Ellipsis, n)`, the n-th object the program's process keeps for the judge
(`export`). Never pickle: decoding a frame builds plain objects and runs no code. A job goes from the judge
to the program server with its call socket attached (`send_job`, `receive_job`).

The judge trusts none of what it reads: `read_frame` refuses frames over a size cap before reading them,
and `decode` rebuilds nothing it has not type-checked (exact types only, no subclass, nesting at most
`MAX_DEPTH`, no container seen twice, and no more text than the frame holds: marshal's back-references,
which a version-2 frame never has, could otherwise make a small frame expand into a huge or cyclic
structure). What the program side sends is whatever the program makes it send; the guarantee is only that
the judge compares plain values with its own code.
"""

from __future__ import annotations

import marshal
import math
import os
import socket
import sys
from builtins import (  # noqa: UP029 - bound at import: see below
    Ellipsis,
    ValueError,
    bytes,
    complex,
    dict,
    float,
    frozenset,
    getattr,
    id,
    int,
    isinstance,
    len,
    list,
    map,
    set,
    str,
    sum,
    tuple,
    type,
)
from collections.abc import Callable
from typing import Any

# The builtins above are bound here, at import: a program that rebinds `builtins.len` or `builtins.type`
# in its own process does not change what its replies are made of.
SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_TEXT = frozenset({str, bytes})
_CONTAINERS = (list, tuple, dict, set, frozenset)
MAX_DEPTH = 200
HEADER = 8


class WireError(ValueError):
    """A frame that is too big, truncated, not marshal, or holds something that is not a plain value."""


def frame(message: tuple) -> bytes:
    """`message` as one frame (ValueError if it holds an unmarshallable object)."""
    return framed(marshal.dumps(message, 2))


def framed(body: bytes) -> bytes:
    """A body, already marshalled, as one frame."""
    return len(body).to_bytes(HEADER, "little") + body


def take_frame(buf: bytearray) -> bytes | None:
    """The body of the first frame in `buf`, taken off its front; None while that frame is incomplete."""
    if len(buf) < HEADER:
        return None
    end = HEADER + int.from_bytes(buf[:HEADER], "little")
    if len(buf) < end:
        return None
    body = bytes(buf[HEADER:end])
    del buf[:end]
    return body


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


def send_job(sock: socket.socket, job: dict, call_fd: int) -> None:
    """`job` to the program server, the descriptor of its call socket attached to the frame's header."""
    body = marshal.dumps(job)
    socket.send_fds(sock, [len(body).to_bytes(HEADER, "little")], [call_fd])
    sock.sendall(body)


def receive_job(sock: socket.socket) -> tuple[dict, int] | None:
    """The next job and its call socket's descriptor (`send_job`), or None when the judge has hung up."""
    head, fds, _, _ = socket.recv_fds(sock, HEADER, 1)
    if not head:
        return None
    if len(fds) != 1:
        raise WireError("a job came without its call socket")
    rest = read_exactly(sock.recv, HEADER - len(head)) if len(head) < HEADER else b""
    body = read_exactly(sock.recv, int.from_bytes(head + (rest or b""), "little"))
    return (marshal.loads(body), fds[0]) if body is not None else None


def forget_siblings() -> None:
    """Take this directory off sys.path, where running a sibling as a script put it, so that code run later
    (a program, test code) cannot import the sandbox's modules by their bare names."""
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)


def export(value: Any, handles: list, depth: int = 0) -> Any:
    """`value` as plain data (the program's side): subclasses of plain types become their base values, numpy
    scalars their Python values, anything else a handle (Ellipsis, n) to `handles[n]`."""
    kind = type(value)
    if kind in SCALARS:
        return value
    if depth > MAX_DEPTH:
        raise ValueError("output nested too deeply to send")
    for base, exact in ((int, int.__int__), (float, float.__float__), (str, str.__str__), (bytes, bytes.__bytes__),
                        (complex, complex.__complex__)):
        if isinstance(value, base):
            return exact(value)
    if isinstance(value, dict):
        return {export(k, handles, depth + 1): export(v, handles, depth + 1) for k, v in dict.items(value)}
    for base in (list, tuple, set, frozenset):
        if isinstance(value, base):
            return base(export(v, handles, depth + 1) for v in base.__iter__(value))
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return export(value.item(), handles, depth + 1)
    handles.append(value)
    return (Ellipsis, len(handles) - 1)


def _text(scalars: Any, kinds: set) -> int:
    """The characters and bytes of the str and bytes among `scalars`, plain values of the types `kinds`."""
    if not kinds & _TEXT:
        return 0
    if kinds <= _TEXT:
        return sum(map(len, scalars))  # at C speed
    return sum(len(v) for v in scalars if type(v) in _TEXT)


class _Check:
    """One walk of `checked`: where handles go, the containers seen, and the text (characters of str, bytes
    of bytes, counted at every place they stand) the value may still hold."""

    def __init__(self, handle: Callable[[int], Any], text: float) -> None:
        self.handle, self.text, self.seen = handle, text, set()

    def spend(self, text: int) -> None:
        self.text -= text
        if self.text < 0:
            raise WireError("more text than its frame holds (marshal back-references)")

    def __call__(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind in SCALARS:
            self.spend(len(value) if kind in _TEXT else 0)
            return value
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH}")
        if kind not in _CONTAINERS:
            raise WireError(f"not a plain value: {kind.__name__}")
        if id(value) in self.seen:
            raise WireError("a container appears twice (shared or cyclic structure)")
        self.seen.add(id(value))
        if kind is tuple and len(value) == 2 and value[0] is Ellipsis and type(value[1]) is int:
            return self.handle(value[1])
        if kind is dict:
            keys, values = set(map(type, value)), set(map(type, value.values()))
            if keys <= SCALARS and values <= SCALARS:
                self.spend(_text(value, keys) + _text(value.values(), values))
                return value
            return {self(k, depth + 1): self(v, depth + 1) for k, v in value.items()}
        kinds = set(map(type, value))
        if kinds <= SCALARS:  # the common case, checked at C speed: no rebuild
            self.spend(_text(value, kinds))
            return value
        return kind(self(v, depth + 1) for v in value)


def checked(value: Any, handle: Callable[[int], Any], text: float = math.inf) -> Any:
    """`value` if it is plain (handles `(Ellipsis, n)` replaced by `handle(n)`) and holds at most `text`
    characters and bytes of str and bytes; WireError otherwise."""
    return _Check(handle, text)(value, 0)


def decode(body: bytes, handle: Callable[[int], Any]) -> Any:
    """The plain value in a frame's body (`checked`); a version-2 frame spells out every str and bytes it
    holds, so one that holds more text than its own length is refused."""
    return checked(loads(body), handle, len(body))


def _no_handles(n: int) -> Any:
    raise WireError("a program object where only plain values are allowed")


def plain(value: Any) -> Any:
    """`value` if it is plain and holds no handle; WireError otherwise."""
    return checked(value, _no_handles)
