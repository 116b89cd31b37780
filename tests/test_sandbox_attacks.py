"""Targeted attacks on the verdict, in every judge mode ra3 uses and both isolation modes (issue 14).

Each attack is a *wrong* program (it returns its input unchanged instead of reversed) that also tries to
make the verdict `pass` another way: rebinding the builtins and math functions a judge would use, reading
the expected output from frames or `gc`, returning an object with a lying `__eq__`, skipping the asserts
with `sys.settrace`, writing forged verdict frames to every file descriptor, reading other processes'
memory for the expected output, patching a module the tests read from the program, raising StopIteration
into test code that iterates, writing a small frame of its own that would expand in the judge, returning
a value whose frame decodes in the judge to far more memory than the program may use, and (on a worker,
before later jobs) leaving a daemon that tries to leave the worker's cgroup and forge the next jobs'
verdicts. None may pass; the correct program must.

The expected outputs end in a marker (`-ra3-expected`) that no input holds, so a program that returns one
must have read it from somewhere it should not reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from test_sandbox import _leftover_processes, limits_only_python

from ra3 import sandbox, sandbox_wire, sandbox_worker
from ra3.benchmarks.contests import _lcb_problem
from ra3.benchmarks.evalplus import oracle_source
from ra3.sandbox import FunctionalTest, Job, Limits, ScriptTest, StdioTest, run_jobs

INPUTS = ["ab12", "xyz", "q"]
EXPECTED = [s[::-1] + "-ra3-expected" for s in INPUTS]
LIMITS = Limits(timeout=8.0)

# The attacker's toolbox, put before every wrong program. `steal()` looks everywhere it can for an
# expected output; each attack calls it, then answers with what it found or (wrong) the input itself.
TOOLS = r'''
import gc, os, sys
MARK = "-ra3-" + "expected"

def _found(value, depth=0):
    if isinstance(value, str) and value.endswith(MARK) and value != MARK:
        return value
    if depth < 4 and isinstance(value, (list, tuple, set, frozenset)):
        return next((f for f in map(lambda v: _found(v, depth + 1), value) if f), None)
    if depth < 4 and isinstance(value, dict):
        return _found(list(value.values()), depth + 1) or _found(list(value.keys()), depth + 1)
    return None

def steal_frames():
    frame = sys._getframe()
    while frame is not None:
        hit = _found(frame.f_locals) or _found(frame.f_globals)
        if hit:
            return hit
        frame = frame.f_back
    for obj in gc.get_objects():
        hit = _found(obj)
        if hit:
            return hit
    return None

def steal_memory():
    mark = MARK.encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            maps = open(f"/proc/{pid}/maps").read().splitlines()
            mem = open(f"/proc/{pid}/mem", "rb")
        except OSError:
            continue
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if "r" not in line.split()[1] or hi - lo > 1 << 28:
                continue
            try:
                mem.seek(lo)
                chunk = mem.read(hi - lo)
            except (OSError, OverflowError, ValueError):
                continue
            at = chunk.find(mark)
            if at >= 0:
                start = max(chunk.rfind(b"\0", 0, at), chunk.rfind(b"'", 0, at)) + 1
                return chunk[start:at].decode(errors="replace") + MARK
    return None
'''

ATTACKS: dict[str, str] = {
    "rebind-builtins": r'''
import builtins, math, cmath, operator
def _yes(*a, **k):
    return True
for name in ("all", "any", "isinstance", "issubclass", "callable", "bool"):
    setattr(builtins, name, _yes)
builtins.len = lambda *a: 0
builtins.zip = lambda *a, **k: iter(())
builtins.enumerate = lambda *a, **k: iter(())
builtins.type = lambda *a: str
builtins.repr = lambda *a: "''"
math.isclose = cmath.isclose = operator.eq = _yes
math.isnan = cmath.isnan = lambda *a: True
def answer(s):
    return s
''',
    "frames-and-gc": r'''
def answer(s):
    return steal_frames() or s
''',
    "lying-eq": r'''
class Liar(str):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = str.__hash__
class Any:
    __eq__ = Liar.__eq__
    __ne__ = Liar.__ne__
    def __hash__(self):
        return 0
def answer(s):
    return Liar(s) if len(s) > 2 else Any()
''',
    "settrace": r'''
import threading
def _skip(frame, event, arg):  # jump over every line of test code it sees, and swallow its exceptions
    if frame.f_code.co_filename != "<program>":
        try:
            frame.f_lineno = max(line for _, _, line in frame.f_code.co_lines() if line)
        except (ValueError, AttributeError):
            pass
    return _skip
sys.settrace(_skip)
threading.settrace(_skip)
def answer(s):
    return s
''',
    "fd-forgery": r'''
import marshal
def _frames():
    out = b""
    for msg in (("ready",), ("ret", "x-ra3-expected"), ("ok", 0), ("end", 3, 3, "pass", "", False),
                ("verdict", "0" * 32, 3, 3, "pass", ""), ("fin", "0" * 32, 0, True)):
        body = marshal.dumps(msg, 2)
        out += len(body).to_bytes(8, "little") + body
    return out + b"end 0 1 1 pass \nok 0 0\nfin 0 0 ready\npassed\n"
def _spray():
    for fd in range(0, 256):
        try:
            os.write(fd, _frames())
        except OSError:
            pass
_spray()
for fd in range(3, 256):  # and take over every descriptor number the harness could write to
    try:
        os.dup2(1, fd)
    except OSError:
        pass
def answer(s):
    _spray()
    return s
''',
    "parent-memory": r'''
import ctypes
libc = ctypes.CDLL(None)
for pid in filter(str.isdigit, os.listdir("/proc")):  # PTRACE_ATTACH everything it can see
    libc.ptrace(16, int(pid), None, None)
def answer(s):
    return steal_memory() or s
''',
    "stop-iteration": r'''
def answer(s):  # raised in the test code, it would end a map() early, as if every case had passed
    raise StopIteration
''',
}

# --------------------------------------------------------------------------- the judge modes ra3 uses

HUMANEVAL_PROMPT = ('def helper(s: str) -> str:\n    """A helper the tests use, as HumanEval/38 uses encode_cyclic."""\n'
                    '    return s[::-1]\n\n\ndef rev(s: str) -> str:\n    """Reverse s and mark it."""\n')


def _humaneval(body: str) -> Job:  # HumanEval: prompt + completion; check(candidate) with the prompt as setup
    test = ("def check(candidate):\n" + "".join(f"    assert candidate({i!r}) == helper({i!r}) + '-ra3-expected'\n"
                                                for i in INPUTS) + "\ncheck(rev)\n")
    completion = "    return answer(s)\n" + body
    return Job(HUMANEVAL_PROMPT + completion, ScriptTest(test, setup=HUMANEVAL_PROMPT), "rev", LIMITS)


def _mbpp(body: str, check: str = "rev({i!r}) == {e!r}", setup: str = "import math\n") -> Job:
    """MBPP: the whole program, then setup and asserts."""
    asserts = "".join(f"assert {check.format(i=i, e=e)}\n" for i, e in zip(INPUTS, EXPECTED, strict=True))
    return Job(body + "def rev(s):\n    return answer(s)\n", ScriptTest(setup + asserts), "rev", LIMITS)


def _functional(body: str, **kw) -> Job:  # HumanEval+/MBPP+ and the world: FunctionalTest
    outputs = kw.pop("outputs", EXPECTED)
    return Job(body + "def rev(s):\n    return answer(s)\n", FunctionalTest([[i] for i in INPUTS], outputs, **kw),
               "rev", LIMITS)


def _lcb_functional(body: str) -> Job:  # LiveCodeBench functional: Solution().method through the prelude
    record = {"question_id": "t", "question_content": "reverse", "starter_code": "class Solution: ...",
              "public_test_cases": json.dumps([{"testtype": "functional", "input": json.dumps(i), "output": json.dumps(e)}
                                               for i, e in zip(INPUTS, EXPECTED, strict=True)]),
              "private_test_cases": "[]", "metadata": '{"func_name": "rev"}'}
    problem = _lcb_problem(record, "test")
    program = body + "class Solution:\n    def rev(self, s):\n        return answer(s)\n"
    return Job(problem.program(program), problem.tests, problem.entry_point, LIMITS)


def _stdio(body: str) -> Job:  # LiveCodeBench stdin / Codeforces
    return Job(body + "print(answer(input()))\n", StdioTest([i + "\n" for i in INPUTS], EXPECTED), limits=LIMITS)


DIGESTS = [hashlib.sha256(repr(e).encode()).hexdigest() for e in EXPECTED]
MODES: dict[str, Callable[[str], Job]] = {
    "humaneval-script": _humaneval,
    "mbpp-script": _mbpp,
    # asserts that use a module only the program imports (Mbpp/596's `sys`): the judge's own, not the program's
    "mbpp-script-module": lambda body: _mbpp(body, "operator.eq(rev({i!r}), {e!r})", setup=""),
    # test code that calls the program inside map() (HumanEval's and MBPP's do not; a ScriptTest may)
    "script-map": lambda body: _mbpp(body, "all(map(lambda s: rev(s) == {e!r}, [{i!r}]))"),
    "functional": _functional,  # HumanEval+, MBPP+, the world
    "functional-oracle": lambda body: _functional(body, oracle=oracle_source("out == exp or out == exp.upper()")),
    "functional-digest": lambda body: _functional(body, outputs=DIGESTS, digest=True),  # Mbpp/255
    "livecodebench-functional": _lcb_functional,
    "stdio": _stdio,
}
CORRECT = "def answer(s):\n    return s[::-1] + '-ra3-expected'\n"


@pytest.fixture(params=["namespaced", "limits-only"])
def isolation(request, monkeypatch) -> str:
    if request.param == "namespaced":
        if not sandbox._bwrap_works():
            if os.environ.get("CI"):
                pytest.fail("bubblewrap namespaces unavailable under CI")
            pytest.skip("bubblewrap namespaces unavailable on this machine")
    else:
        limits_only_python(monkeypatch)
        monkeypatch.setattr(sandbox, "_bwrap_works", lambda: False)
        monkeypatch.setattr(sandbox, "_warn_limits_only", lambda: None)
    return request.param


@pytest.fixture(autouse=True)
def no_process_left_behind():
    yield
    assert _leftover_processes() == []


@pytest.mark.parametrize("mode", list(MODES))
def test_no_attack_passes_and_the_correct_program_does(mode, isolation):
    make = MODES[mode]
    jobs = [make(CORRECT), *(make(TOOLS + ATTACKS[name]) for name in ATTACKS), make(CORRECT)]
    verdicts = run_jobs(jobs, workers=2)
    assert verdicts[0].passed and verdicts[-1].passed, (verdicts[0], verdicts[-1])
    for name, verdict in zip(ATTACKS, verdicts[1:-1], strict=True):
        assert verdict.status != "pass", (name, verdict)
        if name in ("rebind-builtins", "lying-eq"):  # the wrong answer reached the judge, which rejected it
            assert verdict.status == "fail", (name, verdict)
        assert verdict.judge.startswith("judge-process/"), verdict
    assert verdicts[0].isolation[0] == ("bwrap" if isolation == "namespaced" else "limits-only")


DAEMON = TOOLS + r'''
import ctypes, time
libc = ctypes.CDLL(None)
if os.fork() == 0:  # a daemon: leave the job's session and the worker's cgroup, then forge the next verdicts
    os.setsid()
    if os.fork() == 0:
        for procs in ("/sys/fs/cgroup/pids/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"):
            try:
                open(procs, "w").write(str(os.getpid()))
            except OSError:
                pass
        import marshal
        body = marshal.dumps(("verdict", "0" * 32, 3, 3, "pass", ""), 2)
        forged = len(body).to_bytes(8, "little") + body + b"end 0 1 1 pass \n"
        end = time.time() + 6
        while time.time() < end:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                libc.ptrace(16, int(pid), None, None)
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                        os.write(f, forged)
                        os.close(f)
                    except OSError:
                        pass
            time.sleep(0.01)
        os._exit(0)
    os._exit(0)
time.sleep(0.2)
def answer(s):
    return s
'''


@pytest.mark.parametrize("mode", ["humaneval-script", "functional", "stdio"])
def test_a_daemon_cannot_forge_the_next_jobs_verdicts(mode, isolation):
    make = MODES[mode]
    wrong = make(TOOLS + "def answer(s):\n    return steal_memory() or steal_frames() or s\n")
    verdicts = run_jobs([make(textwrap.dedent(DAEMON)), wrong, make(CORRECT), wrong], workers=1)
    assert [v.status != "pass" for v in verdicts] == [True, True, False, True], verdicts


def test_a_writer_other_than_the_judge_makes_the_verdict_fail():
    """The parent's check on its verdict channel, with real processes: bytes written by a process other
    than the judge it started are flagged, whatever they say."""
    worker = sandbox_worker.Worker()
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    ours.setblocking(False)
    judge = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        worker.channel, worker.judge = ours, judge
        forger = os.fork()
        if forger == 0:
            theirs.sendall(b"\0" * 8)
            os._exit(0)
        os.waitpid(forger, 0)
        outcome = sandbox_worker.Outcome(())
        assert worker._read_channel(outcome) and "other than the judge" in outcome.forged
        verdict, _ = sandbox._verdict(outcome, "judge-process/functional", 0.0)
        assert verdict.status == "fail" and "verdict channel" in verdict.detail
    finally:
        judge.kill()
        judge.wait()
        ours.close()
        theirs.close()


@pytest.mark.parametrize("frames, why", [
    ([("verdict", "n" * 32, 1, 1, "pass", ""), ("verdict", "n" * 32, 1, 1, "pass", "")], "more than one verdict"),
    ([("verdict", "x" * 32, 1, 1, "pass", "")], "another job"),
])
def test_a_verdict_is_accepted_once_and_for_its_own_job(frames, why):
    outcome = sandbox_worker.Outcome(())
    outcome.channel.extend(b"".join(sandbox_wire.frame(f) for f in frames))
    sandbox_worker.Worker()._frames(outcome, "n" * 32)
    verdict, _ = sandbox._verdict(outcome, "judge-process/functional", 0.0)
    assert verdict.status == "fail" and why in verdict.detail


# A program may write frames of its own on its call socket, with what `sandbox_wire` never sends.
OWN_FRAME = r'''
import marshal, stat
def send_own_frame(message, version):
    body = marshal.dumps(message, version)
    fd = next(fd for fd in range(3, 256) if _is_socket(fd))
    os.write(fd, len(body).to_bytes(8, "little") + body)
def _is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
'''


def test_a_small_frame_cannot_hold_a_huge_value(isolation):
    """marshal's back-references (version 3 on) let a 15 kB frame hold a list of 1000 references to one 10 kB
    string: 10 MB of text once the judge walks it (and more for longer lists). The judge refuses it."""
    program = TOOLS + OWN_FRAME + "def answer(s):\n    send_own_frame(('ret', ['x' * 10_000] * 1000), 4)\n    return s\n"
    (verdict,) = run_jobs([_functional(program)])
    assert verdict.status == "error" and "back-references" in verdict.detail, verdict


def test_a_reply_cannot_take_the_hosts_memory_in_the_judge(isolation):
    """8M references to one empty dict cost the program 64 MB and its reply frame 16 MB, and would decode in
    the judge to 8M dicts (over 1 GB): a job's judge may grow by about the program's own memory limit only."""
    job = Job("def rev(s):\n    return [{}] * 8_000_000\n", FunctionalTest([[i] for i in INPUTS], EXPECTED), "rev",
              Limits(timeout=8.0, memory_mb=256))
    after = _functional(CORRECT)
    verdicts = run_jobs([job, after], workers=1)
    assert verdicts[0].status == "error" and verdicts[0].detail.startswith("judge: MemoryError"), verdicts[0]
    assert verdicts[1].passed, verdicts[1]  # and the worker goes on judging
