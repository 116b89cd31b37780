"""One sandbox worker, from the parent's side: its isolation, its two processes, and one job's exchange.

A worker is a *judge* (`sandbox_judge.py`, outside the sandbox, non-dumpable) and a *program server*
(`sandbox_harness.py`, inside bubblewrap namespaces, or with limits only), joined by a socket pair that
only they hold. We talk to the judge alone, on a second socket pair with SO_PASSCRED: every byte we read
there carries the kernel's word for which process wrote it, and a byte from any process but the judge we
started makes the verdict `fail`. From the program server we only read stdout and stderr (capped). `ra3.sandbox`
turns an `Outcome` into a `Verdict`; its docstring says what is and is not covered.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ra3 import sandbox_wire as wire

logger = logging.getLogger(__name__)
HARNESS = Path(__file__).with_name("sandbox_harness.py")
JUDGE = Path(__file__).with_name("sandbox_judge.py")
_PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
# Limits-only mode as root runs each worker's programs as its own unprivileged uid from this range, which
# nothing else on the machine is expected to use (no /etc/passwd entry is needed).
SANDBOX_UID_BASE = 0x3A300000
_uids = itertools.count()
_UCRED = struct.Struct("3i")
_JUDGE_ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # its hashing stays random


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not a verdict about the program)."""


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
def bwrap_works() -> bool:
    """Probe once per process whether bubblewrap can create the namespaces we ask for."""
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run([*_bwrap_argv(1), "/bin/true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@cache
def pids_cgroup_parent() -> Path | None:
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


def program_python() -> str:
    """The interpreter that runs programs: $RA3_SANDBOX_PYTHON, else this one."""
    return os.environ.get("RA3_SANDBOX_PYTHON") or sys.executable


@cache
def _unprivileged_python_works(python: str, uid: int) -> bool:
    """Whether `uid` can run `python` and the harness (a Python under /root, for one, it cannot)."""
    try:
        probe = subprocess.run([python, "-s", "-B", str(HARNESS), "--probe"], user=uid, group=uid,
                               extra_groups=[], capture_output=True, cwd="/", timeout=60)
    except OSError:  # cannot even execute it
        return False
    return probe.returncode == 0


def _unprivileged_uid() -> int:
    """A fresh uid for a limits-only worker run as root; SandboxError if it could not run Python."""
    python = program_python()
    if not _unprivileged_python_works(python, SANDBOX_UID_BASE):
        raise SandboxError(f"limits-only mode as root runs programs as an unprivileged uid, which cannot run "
                           f"{python}: install bubblewrap (apt-get install bubblewrap), or set RA3_SANDBOX_PYTHON "
                           f"to a Python that every user can read (e.g. /usr/bin/python3)")
    return SANDBOX_UID_BASE + 1 + (os.getpid() * 64 + next(_uids)) % (1 << 24)


def _environment(workdir: str) -> dict[str, str]:
    """The program server's environment: the judge's, a home and a temporary directory, fixed hashing."""
    return {**_JUDGE_ENVIRONMENT, "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1"}


class Cgroup:
    """A per-worker pids cgroup: caps processes+threads and lets us kill every member at the end."""

    def __init__(self, parent: Path, max_processes: int):
        self.path = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
        self.path.chmod(0o755)  # the program server, under its own uid, reads the members to kill them
        (self.path / "pids.max").write_text(str(max_processes))
        self.procs = str(self.path / "cgroup.procs")

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run by a shell that first moves itself into the cgroup (a `preexec_fn` would force
        subprocess off its vfork path: 13 ms more per start, measured)."""
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


@dataclass(frozen=True)
class Setup:
    """What is fixed for the life of a worker; a job that needs other values gets a fresh worker."""

    namespaced: bool
    max_disk_mb: int
    max_processes: int  # the cgroup's pids.max (0 without a cgroup: RLIMIT_NPROC, set per job, applies)


# --------------------------------------------------------------------------- one job's exchange

@dataclass
class Outcome:
    """What the parent saw of one job: the judge's frames, the program's output, and how it ended."""

    isolation: tuple[str, ...]
    max_output: int = 0  # bytes kept of stdout, and of stderr
    ok_cases: int = 0
    final: tuple | None = None  # the judge's verdict: (run, passed, status, detail)
    forged: str = ""  # why the verdict channel cannot be trusted for this job
    timed_out: bool = False
    returncode: int | None = None  # the program server's exit status, when it ended during the job
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    channel: bytearray = field(default_factory=bytearray)


class Worker:
    """A judge and a program server running jobs one at a time. Not thread-safe: one per thread."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None  # the program server (bwrap, or the harness itself)
        self.judge: subprocess.Popen | None = None
        self.setup: Setup | None = None
        self.isolation: tuple[str, ...] = ()
        self.cgroup: Cgroup | None = None
        self.host_dir: str | None = None
        self.channel: socket.socket | None = None
        self.selector: selectors.BaseSelector | None = None

    def _server_argv(self, setup: Setup, ctl: int, uid: int | None) -> list[str]:
        """The program server's command line (and the isolation it gives, into self.isolation)."""
        cgroup = ("pids-cgroup",) if self.cgroup else ()
        harness = [program_python(), "-s", "-B", str(HARNESS), "--serve", str(ctl)]
        if setup.namespaced:
            env = [a for k, v in _environment(_scratch_mount()).items() for a in ("--setenv", k, v)]
            argv = [*_bwrap_argv(setup.max_disk_mb), *env, *harness, "namespaced", "-", "-"]
            self.isolation = ("bwrap", "userns", "pidns", "netns", "ro-root", "rlimits", *cgroup)
        else:
            argv = [*harness, "limits-only", "-" if uid is None else str(uid),
                    self.cgroup.procs if self.cgroup else "-"]
            self.isolation = ("limits-only", "rlimits", *cgroup, *(("own-uid",) if uid is not None else ()))
        return self.cgroup.wrap(argv) if self.cgroup else argv

    def _start(self, setup: Setup) -> None:
        """Start the judge and the sandbox; on any failure, undo what was done."""
        try:
            parent = pids_cgroup_parent()
            self.cgroup = Cgroup(parent, setup.max_processes) if parent else None
            uid = _unprivileged_uid() if not setup.namespaced and os.geteuid() == 0 else None
            self.host_dir = None if setup.namespaced else tempfile.mkdtemp(prefix="ra3-sbx-")
            if uid is not None:
                os.chown(self.host_dir, uid, uid)
            self.channel, judge_end = socket.socketpair()
            self.channel.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            judge_sbx, server_end = socket.socketpair()
            try:
                self.proc = subprocess.Popen(
                    self._server_argv(setup, server_end.fileno(), uid), stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(server_end.fileno(),),
                    cwd=self.host_dir or "/", env=_environment(self.host_dir or "/"), start_new_session=True)
                fds = (judge_end.fileno(), judge_sbx.fileno())
                self.judge = subprocess.Popen(
                    [sys.executable, "-s", "-B", str(JUDGE), "--serve", *map(str, fds)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=fds, cwd="/",
                    env=_JUDGE_ENVIRONMENT, start_new_session=True)
            finally:
                for end in (judge_end, judge_sbx, server_end):
                    end.close()
            self.selector = selectors.DefaultSelector()
            for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"),
                                 (self.channel, "channel")):
                os.set_blocking(stream.fileno(), False)
                self.selector.register(stream, selectors.EVENT_READ, name)
        except BaseException:
            self._stop()
            raise
        self.setup = setup

    def run(self, job: Any, mode: str, setup: Setup, tests: dict, limits: dict) -> Outcome:
        """Run one job (starting or restarting the worker as needed); what was seen of it."""
        deadline = time.monotonic() + limits["timeout"]
        if self.proc is None or self.setup != setup or self.proc.poll() is not None or self.judge.poll() is not None:
            self.close()
            self._start(setup)
        nonce = secrets.token_hex(16)
        body = marshal.dumps({"nonce": nonce, "mode": mode, "program": job.program, "tests": tests,
                              "entry_point": job.entry_point, "limits": limits})
        outcome = Outcome(self.isolation, max_output=limits["max_output_kb"] << 10)
        fin = self._exchange(wire.framed(body), nonce, outcome, deadline)
        if fin is not None and fin[1]:
            self._drain(outcome)  # the job's processes are dead: this is all there is
        else:  # past the deadline, the worker gone, or a restart asked for: the worker goes
            outcome.returncode = self._stop(outcome, grace=0.0 if outcome.timed_out else 0.5)
        return outcome

    def _frames(self, outcome: Outcome, nonce: str) -> tuple | None:
        """Take the complete frames off the channel buffer; the `fin` frame's (code, ready) once seen."""
        fin = None
        while (body := wire.take_frame(outcome.channel)) is not None:
            message = marshal.loads(body)  # the judge's own frame (its pid was checked)
            if message[1] != nonce:
                outcome.forged = outcome.forged or "a verdict frame of another job"
            elif message[0] == "ok":  # cases passed so far (sent at most every 10 ms)
                outcome.ok_cases = max(outcome.ok_cases, message[2])
            elif message[0] == "verdict":
                if outcome.final is not None:
                    outcome.forged = outcome.forged or "more than one verdict"
                outcome.final = tuple(message[2:])
            elif message[0] == "fin":
                fin = (message[2], message[3])
        return fin

    def _read_channel(self, outcome: Outcome) -> bool:
        """One read of the judge's channel, checking who wrote it; False at its end."""
        try:
            data, ancillary, _, _ = self.channel.recvmsg(1 << 20, socket.CMSG_SPACE(_UCRED.size))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        pids = [_UCRED.unpack(d[:_UCRED.size])[0] for level, kind, d in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
        if pids != [self.judge.pid]:
            outcome.forged = f"a process other than the judge (pid {pids}) wrote on the verdict channel"
        outcome.channel.extend(data)
        return True

    def _exchange(self, message: bytes, nonce: str, outcome: Outcome, deadline: float) -> tuple | None:
        """Send the job; collect output and the judge's frames until its `fin` (returned: code, ready),
        the deadline or the judge's end (None)."""
        try:  # the judge reads whole jobs while idle: no deadlock
            self.channel.settimeout(max(deadline - time.monotonic(), 1e-3))
            self.channel.sendall(message)
        except TimeoutError:
            outcome.timed_out = True
            return None
        except OSError:
            return None
        finally:
            self.channel.setblocking(False)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = outcome.final is None
                return None
            for key, _ in self.selector.select(timeout=remaining):
                if key.data == "channel":
                    if not self._read_channel(outcome):
                        return None
                    fin = self._frames(outcome, nonce)
                    if fin is not None:
                        return fin
                elif _read(key.fd, getattr(outcome, key.data), outcome.max_output) == b"":
                    self.selector.unregister(key.fileobj)  # the program server is gone; the judge will say

    def _drain(self, outcome: Outcome) -> None:
        """Read what is already in the program's output pipes (at most 1 MiB each), without waiting."""
        for key in list(self.selector.get_map().values()):
            if key.data == "channel":
                continue
            for _ in range(16):
                if not _read(key.fd, getattr(outcome, key.data), outcome.max_output):
                    break

    def _stop(self, outcome: Outcome | None = None, grace: float = 0.0) -> int | None:
        """End the worker: after `grace` seconds for the sandbox to exit by itself, SIGKILL both process
        groups (bwrap's death takes its PID namespace with it); keep what it wrote; release the rest."""
        for proc in (self.proc, self.judge):
            if proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace if proc is self.proc else 0.0)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if outcome is not None and self.selector is not None:
            self._drain(outcome)
        code = self.proc.returncode if self.proc is not None else None
        self._release()
        return code

    def _release(self) -> None:
        """Close our ends, empty and remove the cgroup, remove the host scratch directory (limits-only)."""
        if self.selector is not None:
            self.selector.close()
        if self.proc is not None:
            self.proc.stdout.close()
            self.proc.stderr.close()
        if self.channel is not None:
            self.channel.close()
        if self.cgroup:
            self.cgroup.destroy()
        if self.host_dir:
            shutil.rmtree(self.host_dir, ignore_errors=True)
        self.proc = self.judge = self.setup = self.cgroup = self.host_dir = self.channel = self.selector = None

    def hang_up(self) -> None:
        """Close the judge's channel: it exits, and the sandbox with it."""
        if self.channel is not None:
            with contextlib.suppress(OSError):
                self.channel.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Hang up and wait for both processes to end (killed if they do not)."""
        if self.proc is not None or self.judge is not None:
            self.hang_up()
            self._stop(grace=2.0)


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
