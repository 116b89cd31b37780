"""The judge: a fork server run as a script *outside* the sandbox by `ra3.sandbox`, one per worker.

    python -s -B sandbox_judge.py --serve PARENT_FD SANDBOX_FD

It holds everything a program must not reach: the tests, the expected outputs, the comparison and the
verdict. For each job from the parent (PARENT_FD, a socket pair: 8-byte length, marshalled dict with nonce,
mode, program, tests, entry_point, limits) it makes a fresh *call socket* pair, sends the program (never
the tests) and one end of that pair to the program's server in the sandbox (SANDBOX_FD), and judges the
program through the other end:

- functional: the entry point is mapped over the inputs in the program's process; each output comes back
  as plain values (`sandbox_wire`) and is compared here, type-first, with EvalPlus's float tolerance or
  the test's special oracle (trusted code run here);
- script (HumanEval `check`, MBPP asserts): the test code, and its trusted setup (HumanEval's prompt and
  its helpers), run *here*, in a fresh namespace, with every name the tests use that they do not define
  themselves (the entry point first) bound to what the program's process has under that name: a plain
  value, or a proxy (`Remote`) whose calls, attribute reads and writes go to the program and come back as
  plain values or further proxies;
- stdio: the program runs once per stdin in the sandbox; its stdout comes back and is compared token-wise.

We send the parent progress (`ok` with the count of passed cases, at most every 10 ms) and exactly one
`verdict` frame carrying the job's nonce, then tell the sandbox to end the job (one byte), read its `fin`
and pass it on. We are not dumpable. (A judge child forked per job would keep test code's side effects
out of the next job, but costs a fork and two relayed frames per verdict; the namespace is fresh and the
recursion limit restored instead.)

Standard library only, no import of `ra3`: the file runs as a script, importing only its sibling
`sandbox_wire`.
"""

import ast
import builtins
import ctypes
import marshal
import math
import os
import signal
import socket
import sys
import time

import sandbox_wire as wire  # the sibling module; sys.path[0] is this file's directory until `serve` pops it

PR_SET_DUMPABLE = 4
_PLAIN_KEYS = (int, bool, str, bytes, type(None), float)
_MODE_IMPORTS = {"functional": ("cmath",), "script": ("copy",)}
REPLY_CAP = {"record": 1 << 34}  # bytes of one reply from the program's process, by mode
DEFAULT_REPLY_CAP = 256 << 20


class ProgramGone(Exception):
    """The program's process ended, or sent something that is not a reply, before the tests finished."""


class ProgramError(Exception):
    """The program raised an exception that is not one of Python's built-in exceptions."""


class Remote:
    """A name or object in the program's process. Calls, attribute reads and attribute writes are sent
    there; equality and hashing are the judge's own (identity): a program object never equals a value."""

    __slots__ = ("_program", "_ref")

    def __init__(self, program: "Program", ref: int) -> None:
        object.__setattr__(self, "_program", program)
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        return self._program.request(("call", self._ref, args, kwargs))

    def __getattr__(self, name: str):
        return self._program.request(("getattr", self._ref, name))

    def __setattr__(self, name: str, value) -> None:
        self._program.request(("setattr", self._ref, name, value))

    def __repr__(self) -> str:
        return f"<program object {self._ref!r}>"


def _outgoing(value, depth: int = 0):
    """An argument for the program: plain values as they are, proxies as handles; nothing else."""
    kind = type(value)
    if kind in wire.SCALARS:
        return value
    if kind is Remote:
        return (Ellipsis, value._ref)
    if depth > wire.MAX_DEPTH:
        raise TypeError("argument nested too deeply for the program")
    if kind is dict:
        return {_outgoing(k, depth + 1): _outgoing(v, depth + 1) for k, v in value.items()}
    if kind in (list, tuple, set, frozenset):
        return kind(_outgoing(v, depth + 1) for v in value)
    raise TypeError(f"the judge cannot pass a {kind.__name__} to the program (only plain values and proxies)")


class Program:
    """The judge's end of one job's call socket."""

    def __init__(self, sock: socket.socket, cap: int) -> None:
        self.sock, self.cap = sock, cap
        self.handles: dict[int, Remote] = {}
        self.gone = False  # its process ended (or its socket broke) while we waited on it

    def _handle(self, n: int) -> Remote:
        """The one proxy for the program's n-th handle (the same object each time it comes back)."""
        if n not in self.handles:
            self.handles[n] = Remote(self, n)
        return self.handles[n]

    def send(self, message: tuple) -> None:
        """One frame to the program's process; ProgramGone if it is no longer there."""
        try:
            self.sock.sendall(wire.frame(message))
        except OSError as e:
            self.gone = True
            raise ProgramGone(f"the program's process is gone ({type(e).__name__})") from None

    def receive(self) -> tuple:
        """The next reply, type-checked; ProgramGone if there is none or it is malformed."""
        try:
            body = wire.read_frame(self.sock.recv, self.cap)
            reply = None if body is None else wire.checked(wire.loads(body), self._handle)
        except (OSError, wire.WireError) as e:
            raise ProgramGone(f"bad reply from the program: {e}") from None
        self.gone = reply is None
        if type(reply) is not tuple or not reply or type(reply[0]) is not str:
            raise ProgramGone("the program's process ended before the tests finished" if reply is None
                              else "malformed reply from the program")
        return reply

    def request(self, message: tuple):
        """Send a request; its plain result, or the program's exception raised here."""
        self.send((message[0], message[1], *_outgoing(message[2:])))
        return self.result(self.receive())

    @staticmethod
    def result(reply: tuple):
        """A reply's value, or the program's exception raised here (ProgramGone if malformed)."""
        if reply[0] == "ret" and len(reply) == 2:
            return reply[1]
        if reply[0] == "exc" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            kind = getattr(builtins, reply[1], None)
            if isinstance(kind, type) and issubclass(kind, Exception):
                raise kind(reply[2])
            raise ProgramError(f"{reply[1]}: {reply[2]}")
        raise ProgramGone("malformed reply from the program")

    def ready(self) -> str:
        """'' once the program has run; else why it did not."""
        try:
            reply = self.receive()
            if reply != ("ready",):
                self.result(reply)
        except Exception as e:  # noqa: BLE001 - the program's exception, as text
            return _one_line(e)
        return ""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


# --------------------------------------------------------------------------- comparing plain values

def _plain_key(value) -> bool:
    """A dict key or set element of plain type (tuples of them too)."""
    if type(value) is tuple:
        return all(_plain_key(v) for v in value)
    return type(value) in _PLAIN_KEYS


def make_equal(atol: float):
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


def _oracle(tests: dict):
    """The comparison of a functional test: its trusted oracle source, else `make_equal(atol)`."""
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


def _same_tokens(out: str, exp: str) -> bool:
    """Whitespace-separated tokens equal, numbers within 1e-6 (LiveCodeBench, Codeforces)."""
    a, b = out.split(), exp.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        try:
            if not math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6):
                return False
        except ValueError:
            return False
    return True


# --------------------------------------------------------------------------- the test modes

def _run_functional(job: dict, program: Program, report) -> tuple:
    """Map the entry point over the inputs in the program's process; compare here; stop at the first miss."""
    tests = job["tests"]
    compare, record = _oracle(tests), job["mode"] == "record"
    program.send(("map", job["entry_point"], tests["inputs"], bool(tests.get("digest"))))  # queued behind `ready`
    why = program.ready()
    if why:
        return 0, 0, "error", why
    outputs = []
    for i, args in enumerate(tests["inputs"]):
        reply = program.receive()
        try:
            out = program.result(reply)
        except Exception as e:  # noqa: BLE001 - the program's exception
            return i + 1, i, "error", f"input #{i}: {_one_line(e)}"
        if record:
            outputs.append(wire.plain(out))
        elif not compare(out, tests["outputs"][i], args):
            return i + 1, i, "fail", f"input #{i}: wrong output {repr(out)[:120]}"
        report(i)
    n = len(tests["inputs"])
    # recorded outputs travel marshalled, as one bytes object: we and the parent never unpack them twice
    return n, n, "pass", marshal.dumps(outputs) if record else ""


def _names(setup: str, code: str) -> list[str]:
    """Names the tests read but neither they, their setup nor Python's builtins define."""
    bound, read = set(dir(builtins)), []
    for node in ast.walk(ast.parse(setup + "\n" + code)):
        if isinstance(node, ast.Name):
            (read.append if isinstance(node.ctx, ast.Load) else bound.add)(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return sorted(set(read) - bound)


def _run_script(job: dict, program: Program, report) -> tuple:
    """The test code runs here, its free names bound to the program's values and proxies."""
    tests = job["tests"]
    namespace = {"__name__": "__ra3_tests__", "__builtins__": builtins}
    why = program.ready()
    if why:
        return 0, 0, "error", why
    try:
        exec(compile(tests.get("setup", ""), "<setup>", "exec"), namespace)  # trusted: HumanEval's prompt
        for name in [job["entry_point"], *_names(tests.get("setup", ""), tests["code"])]:
            if not name or (name in namespace and name != job["entry_point"]):
                continue
            try:
                namespace[name] = program.request(("get", name))
            except NameError:
                if name in sys.stdlib_module_names:  # a module the tests use and the program imported
                    namespace[name] = __import__(name)
        exec(compile(tests["code"], "<tests>", "exec"), namespace)
    except AssertionError as e:
        return 1, 0, "fail", _one_line(e) if str(e) else "AssertionError"
    except BaseException as e:  # noqa: BLE001 - any other end of the tests is an error
        return 1, 0, "error", _one_line(e)
    return 1, 1, "pass", ""


def _run_stdio(job: dict, program: Program, report) -> tuple:
    """The program ran once per stdin in the sandbox; its stdout is compared token-wise here."""
    tests = job["tests"]
    program.send(("stdio", tests["inputs"]))
    why = program.ready()
    if why:
        return 0, 0, "error", why
    for i, expected in enumerate(tests["outputs"]):
        reply = program.receive()
        if len(reply) != 3 or reply[0] != "out" or type(reply[2]) is not bytes:
            raise ProgramGone("malformed reply from the program")
        if reply[1] is None:
            return i + 1, i, "error", f"case #{i}: time limit"
        if reply[1] != 0:
            return i + 1, i, "error", f"case #{i}: exit status {reply[1]}"
        if not _same_tokens(reply[2].decode(errors="replace"), expected):
            return i + 1, i, "fail", f"case #{i}: wrong output"
        report(i)
    n = len(tests["inputs"])
    return n, n, "pass", ""


RUNNERS = {"functional": _run_functional, "record": _run_functional, "script": _run_script, "stdio": _run_stdio}


# --------------------------------------------------------------------------- one job

class _Progress:
    """Passed cases, reported to the parent at most every `every` seconds (and exactly, in the verdict),
    so that a timed-out job keeps its partial credit without one frame per case."""

    def __init__(self, parent: socket.socket, nonce: str, every: float = 0.01) -> None:
        self.parent, self.nonce, self.every, self.last = parent, nonce, every, time.monotonic()

    def __call__(self, case: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.parent.sendall(wire.frame(("ok", self.nonce, case + 1)))
            self.last = now


def _run(job: dict, program: Program, report) -> tuple:
    """The job's verdict (run, passed, status, detail), whatever the program or the tests do."""
    limit = sys.getrecursionlimit()
    try:
        return RUNNERS[job["mode"]](job, program, report)
    except ProgramGone as e:
        return (0, 0, "error", str(e))
    except Exception as e:  # noqa: BLE001 - the judge must always say something
        return (0, 0, "error", f"judge: {_one_line(e)}")
    finally:
        sys.setrecursionlimit(limit)  # trusted test code may have changed it; the next job gets ours


def _judge(job: dict, nonce: str, parent: socket.socket, sandbox: socket.socket) -> tuple | None:
    """Send the program to the sandbox, judge it here, send the parent the verdict, end the job in the
    sandbox; the `fin` frame for the parent (None if the sandbox is gone)."""
    mine, theirs = socket.socketpair()
    payload = marshal.dumps({k: job[k] for k in ("mode", "program", "entry_point", "limits")})
    try:
        socket.send_fds(sandbox, [len(payload).to_bytes(wire.HEADER, "little")], [theirs.fileno()])
        sandbox.sendall(payload)
    except OSError:
        return None
    finally:
        theirs.close()
    program = Program(mine, REPLY_CAP.get(job["mode"], DEFAULT_REPLY_CAP))
    result = _run(job, program, _Progress(parent, nonce))
    mine.close()  # the program's process reads its end: nothing more will come
    if not program.gone:  # the verdict first: a sandbox that does not end the job cannot hold it back
        parent.sendall(wire.frame(("verdict", nonce, *result)))
    sandbox.sendall(b"s")  # the verdict is in: the sandbox may end the job
    fin = b""
    while not fin.endswith(b"\n"):
        chunk = sandbox.recv(64)
        if not chunk:
            return None
        fin += chunk
    code = int(fin.split()[1])
    if program.gone:  # the program's process ended early: say how
        how = f"killed by signal {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"exit status {code}"
        parent.sendall(wire.frame(("verdict", nonce, *result[:3], f"{result[3]} ({how})")))
    return ("fin", nonce, code, fin.split()[2] == b"ready")


def serve(parent_fd: int, sandbox_fd: int) -> None:
    """Judge jobs from the parent one at a time until it hangs up (or the sandbox asks for a restart)."""
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # nothing of the job's may ptrace or read us
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    parent, sandbox = socket.socket(fileno=parent_fd), socket.socket(fileno=sandbox_fd)
    while (body := wire.read_frame(parent.recv, 1 << 40)) is not None:
        job = marshal.loads(body)
        nonce = job.pop("nonce")
        for name in _MODE_IMPORTS.get(job["mode"], ()):
            __import__(name)
        fin = _judge(job, nonce, parent, sandbox)
        if fin is None:
            return  # the sandbox is gone: the parent sees our end and starts afresh
        parent.sendall(wire.frame(fin))
        if not fin[-1]:
            return


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--serve":
        raise SystemExit("usage: sandbox_judge.py --serve PARENT_FD SANDBOX_FD")
    serve(int(sys.argv[2]), int(sys.argv[3]))
