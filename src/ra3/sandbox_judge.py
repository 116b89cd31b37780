"""The judge: a fork server run as a script *outside* the sandbox by `ra3.sandbox`, one per worker.

    python -s -B sandbox_judge.py --serve PARENT_FD SANDBOX_FD

It holds everything a program must not reach: the tests, the expected outputs, the comparison and the
verdict. For each job from the parent (PARENT_FD, a socket pair: one frame, a marshalled dict with nonce,
mode, program, tests, entry_point, limits) it makes a fresh *call socket* pair, sends the program (never
the tests) and one end of that pair to the program's server in the sandbox (SANDBOX_FD), and judges the
program through the other end:

- functional: the entry point is mapped over the inputs in the program's process; each output comes back
  as plain values (`sandbox_wire`) and is compared here (`sandbox_compare`), type-first, with EvalPlus's
  float tolerance or the test's special oracle (trusted code run here);
- script (HumanEval `check`, MBPP asserts): the test code, and its trusted setup (HumanEval's prompt and
  its helpers), run *here*, in a fresh namespace, with every name the tests use that they do not define
  themselves (the entry point first) bound to what the program's process has under that name: a plain
  value, or a proxy (`Remote`) whose calls, attribute reads and writes go to the program and come back as
  plain values or further proxies (a standard library module is our own, never the program's copy);
- stdio: the program runs once per stdin in the sandbox; its stdout comes back and is compared token-wise.

We send the parent progress (`ok` with the count of passed cases, at most every 10 ms) and exactly one
`verdict` frame carrying the job's nonce, then tell the sandbox to end the job (one byte), read its `fin`
and pass it on. We are not dumpable. While judging a job our address space may grow by the program's own
memory limit and two replies (`_limit_memory`): no frame a program sends can make us take the host's
memory. (A judge child forked per job would keep test code's side effects out of the next job, but costs a
fork and two relayed frames per verdict; the namespace is fresh and the recursion limit restored instead.)

Standard library only, no import of `ra3`: the file runs as a script, importing only its siblings
`sandbox_wire` and `sandbox_compare`.
"""

import ast
import builtins
import contextlib
import ctypes
import marshal
import resource
import signal
import socket
import sys
import time

import sandbox_compare as compare  # siblings; sys.path[0] is this file's directory until `serve` pops it
import sandbox_wire as wire

PR_SET_DUMPABLE = 4
_MODE_IMPORTS = {"functional": ("cmath",), "script": ("copy",)}
REPLY_CAP = {"record": 1 << 34}  # bytes of one reply from the program's process, by mode
DEFAULT_REPLY_CAP = 256 << 20
_ITERATION_ENDS = (StopIteration, StopAsyncIteration)  # a program's, raised here, become ProgramError


class ProgramGone(Exception):
    """The program's process ended, or sent something that is not a reply, before the tests finished."""


class ProgramError(Exception):
    """The program raised an exception that is not one of Python's built-in exceptions, or that would end
    the test code's iteration instead of failing it (StopIteration inside map() ends the map early)."""


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
            reply = None if body is None else wire.decode(body, self._handle)
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
            if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, _ITERATION_ENDS):
                raise kind(reply[2])
            raise ProgramError(f"{reply[1]}: {reply[2]}")
        raise ProgramGone("malformed reply from the program")

    def ready(self) -> None:
        """Return once the program has run; else ProgramGone, saying why it did not."""
        try:
            reply = self.receive()
            if reply != ("ready",):
                self.result(reply)
        except Exception as e:  # noqa: BLE001 - the program's exception, as text
            raise ProgramGone(_one_line(e)) from None


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


# --------------------------------------------------------------------------- the test modes

def _run_functional(job: dict, program: Program, report) -> tuple:
    """Map the entry point over the inputs in the program's process; compare here; stop at the first miss."""
    tests = job["tests"]
    right, record = compare.functional(tests), job["mode"] == "record"
    program.send(("map", job["entry_point"], tests["inputs"], bool(tests.get("digest"))))  # queued behind `ready`
    program.ready()
    outputs = []
    for i, args in enumerate(tests["inputs"]):
        reply = program.receive()
        try:
            out = program.result(reply)
        except Exception as e:  # noqa: BLE001 - the program's exception
            return i + 1, i, "error", f"input #{i}: {_one_line(e)}"
        if record:
            outputs.append(wire.plain(out))
        elif not right(out, tests["outputs"][i], args):
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
    namespace, entry = {"__name__": "__ra3_tests__", "__builtins__": builtins}, job["entry_point"]
    program.ready()
    try:
        exec(compile(tests.get("setup", ""), "<setup>", "exec"), namespace)  # trusted: HumanEval's prompt
        for name in [entry, *_names(tests.get("setup", ""), tests["code"])]:
            if not name or (name in namespace and name != entry):
                continue
            if name in sys.stdlib_module_names and name != entry:  # ours: the program may patch its own copy
                namespace[name] = __import__(name)  # (Mbpp/596 reads `sys`, which only the program imports)
                continue
            with contextlib.suppress(NameError):  # what the program lacks stays unbound: the tests will say
                namespace[name] = program.request(("get", name))
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
    program.ready()
    for i, expected in enumerate(tests["outputs"]):
        reply = program.receive()
        if len(reply) != 3 or reply[0] != "out" or type(reply[2]) is not bytes:
            raise ProgramGone("malformed reply from the program")
        if reply[1] is None:
            return i + 1, i, "error", f"case #{i}: time limit"
        if reply[1] != 0:
            return i + 1, i, "error", f"case #{i}: exit status {reply[1]}"
        if not compare.same_tokens(reply[2].decode(errors="replace"), expected):
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


def _limit_memory(memory_mb: int, reply_cap: int) -> None:
    """Let this job grow our address space by its program's own memory limit and two replies (one being read,
    one decoded), and no more: decoding multiplies a frame's size (an empty dict, 2 bytes in a frame, takes
    some 150 bytes here), so a program could otherwise make us take far more memory than it may itself."""
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    soft = size + (memory_mb << 20) + 2 * reply_cap
    resource.setrlimit(resource.RLIMIT_AS, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _run(job: dict, program: Program, report) -> tuple:
    """The job's verdict (run, passed, status, detail), whatever the program or the tests do."""
    limit, address_space = sys.getrecursionlimit(), resource.getrlimit(resource.RLIMIT_AS)
    _limit_memory(job["limits"]["memory_mb"], program.cap)
    try:
        return RUNNERS[job["mode"]](job, program, report)
    except ProgramGone as e:
        return (0, 0, "error", str(e))
    except Exception as e:  # noqa: BLE001 - the judge must always say something
        return (0, 0, "error", f"judge: {_one_line(e)}")
    finally:
        sys.setrecursionlimit(limit)  # trusted test code may have changed it; the next job gets ours
        resource.setrlimit(resource.RLIMIT_AS, address_space)


def _judge(job: dict, nonce: str, parent: socket.socket, sandbox: socket.socket) -> tuple | None:
    """Send the program to the sandbox, judge it here, send the parent the verdict, end the job in the
    sandbox; the `fin` frame for the parent (None if the sandbox is gone)."""
    mine, theirs = socket.socketpair()
    try:
        wire.send_job(sandbox, {k: job[k] for k in ("mode", "program", "entry_point", "limits")}, theirs.fileno())
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
    fin = wire.read_frame(sandbox.recv, 64)
    if fin is None:
        return None
    _, code, ready = wire.loads(fin)
    if program.gone:  # the program's process ended early: say how
        how = f"killed by signal {signal.Signals(-code).name}" if -code in signal.valid_signals() else f"exit status {code}"
        parent.sendall(wire.frame(("verdict", nonce, *result[:3], f"{result[3]} ({how})")))
    return ("fin", nonce, code, ready)


def serve(parent_fd: int, sandbox_fd: int) -> None:
    """Judge jobs from the parent one at a time until it hangs up (or the sandbox asks for a restart)."""
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # nothing of the job's may ptrace or read us
    wire.forget_siblings()
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
