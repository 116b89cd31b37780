"""The program's side of the sandbox: a fork server run as a script *inside* the sandbox by `ra3.sandbox`.

    python -s -B sandbox_harness.py --serve CTL_FD namespaced|limits-only UID|- CGROUP_PROCS|-

This side holds no test, no expected output and no verdict: the judge (`sandbox_judge.py`, a process
outside the sandbox) holds those. The judge sends each job on CTL_FD (a socket pair; never fd 0:
bubblewrap's pid 1 keeps its stdin open): a dict with mode, program, entry_point and limits, with the
job's own *call socket* attached (`sandbox_wire.receive_job`). We fork a child (the *executor*) that
closes CTL_FD, sets the job's resource limits, runs the program and then answers the judge's requests on
the call socket with plain values (`sandbox_wire`): call a name or a handle, get or set an attribute, map
the entry point over inputs, or run the program as a script on each stdin. When the judge has its
verdict it sends one byte on CTL_FD; we kill every process of the job
(inside a PID namespace, every process but us; in limits-only mode, the child's process group and, as
root, every other member of the worker's cgroup CGROUP_PROCS), empty the scratch directory, remove SysV
IPC objects and /dev/shm files the job made, check that the job left nothing we cannot undo, and answer
with a frame `("fin", exit code of the child, ready)`. When not ready we exit and the parent starts a
fresh sandbox.

UID (limits-only mode, started as root): before the first job we drop to that unprivileged uid and gid,
with no supplementary groups, an empty capability bounding set and no_new_privs; we refuse to serve if
any of it did not take.

Builtins are bound as this module's globals at import, so a program that rebinds them in `builtins`
does not change how its answers are sent (what it sends is its own business). Standard library only,
and no import of `ra3`: this file runs under `python -s` with a scrubbed
environment (not `-I`: it would ignore PYTHONHASHSEED). `random` and `tempfile` are never imported here
(a child would inherit the server's random state instead of seeding its own).
"""

import contextlib
import ctypes
import hashlib
import math
import os
import resource
import signal
import socket
import sys
import time
from builtins import (  # noqa: UP029 - bound at import: see the docstring
    BaseException,
    KeyError,
    NameError,
    RecursionError,
    ValueError,
    dict,
    float,
    getattr,
    int,
    len,
    list,
    open,
    repr,
    set,
    setattr,
    str,
    tuple,
    type,
)

import sandbox_wire as wire  # the sibling module; sys.path[0] is this file's directory until `serve` pops it

PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 4, 36, 38, 24
IPC_RMID = 0
_LIMITED = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC,
            resource.RLIMIT_CORE, resource.RLIMIT_NOFILE, resource.RLIMIT_MSGQUEUE)
_MODE_IMPORTS = {"stdio": ("subprocess",)}
STDIO_CAP = 64 << 20  # stdout bytes of one stdio case sent to the judge


def _set_limits(limits: dict) -> None:
    mb = 1 << 20
    cpu = int(math.ceil(limits["timeout"])) + 1
    wanted = {
        resource.RLIMIT_AS: limits["memory_mb"] * mb,
        resource.RLIMIT_CPU: cpu,  # soft limit sends SIGXCPU; the hard limit, a second later, SIGKILL
        resource.RLIMIT_FSIZE: limits["max_file_mb"] * mb,
        resource.RLIMIT_NPROC: limits["max_processes"],
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NOFILE: 256,
        resource.RLIMIT_MSGQUEUE: 0,  # POSIX message queues would outlive the job
    }
    for res, value in wanted.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value
        resource.setrlimit(res, (value, hard))


# --------------------------------------------------------------------------- the executor (one job)

def _exc(e: BaseException) -> tuple:
    try:
        text = str(e)[:300]
    except BaseException:  # noqa: BLE001 - the program's own __str__
        text = "?"
    return ("exc", type(e).__name__, text)


def _send(sock: socket.socket, reply: tuple, handles: list) -> None:
    """A reply; a value marshal cannot carry (subclass, object) is exported first."""
    try:
        data = wire.frame(reply)
    except ValueError:
        try:
            data = wire.frame((reply[0], wire.export(reply[1], handles)))
        except (ValueError, RecursionError) as e:
            data = wire.frame(_exc(e))
    sock.sendall(data)


def _do(request: tuple, namespace: dict, handles: list):
    """One request of the judge: ("get", name), ("call", ref, args, kwargs), ("getattr"/"setattr", ...)."""
    kind, ref = request[0], request[1]
    if kind == "get":
        if ref not in namespace:
            raise NameError(f"name '{ref}' is not defined")
        return namespace[ref]
    target = handles[ref] if type(ref) is int else namespace[ref]
    args = wire.checked(request[2:], handles.__getitem__)
    if kind == "call":
        return target(*args[0], **args[1])
    if kind == "getattr":
        return getattr(target, args[0])
    if kind == "setattr":
        return setattr(target, args[0], args[1])
    raise ValueError(f"unknown request {kind!r}")


def _map(sock: socket.socket, namespace: dict, request: tuple, handles: list) -> None:
    """Call the entry point on every input and stream each output (or its digest); stop at an exception."""
    _, name, inputs, digest = request
    try:
        fn = namespace[name]
    except KeyError:
        return _send(sock, ("exc", "NameError", f"name '{name}' is not defined"), handles)
    for args in inputs:
        try:
            out = fn(*args)
            if digest:  # outputs too large to ship: SHA-256 of repr, as the reference was recorded
                out = hashlib.sha256(repr(out).encode()).hexdigest()
        except BaseException as e:  # noqa: BLE001 - the program's exceptions are answers too
            return _send(sock, _exc(e), handles)
        _send(sock, ("ret", out), handles)
    return None


def _stdio(sock: socket.socket, request: tuple, deadline: float) -> None:
    """Run program.py once per stdin (each in a fresh interpreter) and send back each exit and stdout."""
    import subprocess

    for stdin in request[1]:
        with open("stdout.txt", "wb") as out:
            try:
                proc = subprocess.run([sys.executable, "-s", "-B", "program.py"], input=stdin.encode(), stdout=out,
                                      stderr=subprocess.DEVNULL, timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return sock.sendall(wire.frame(("out", None, b"")))
        with open("stdout.txt", "rb") as f:
            sock.sendall(wire.frame(("out", proc.returncode, f.read(STDIO_CAP))))
    return None


def _execute(job: dict, sock: socket.socket) -> None:
    """Run the program, say `ready` (or how it failed), then answer the judge until it hangs up."""
    deadline = time.monotonic() + job["limits"]["timeout"]
    handles: list = []
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    if job["mode"] == "stdio":
        with open("program.py", "w") as f:
            f.write(job["program"])
    else:
        try:
            exec(compile(job["program"], "<program>", "exec"), namespace)
        except BaseException as e:  # noqa: BLE001 - SystemExit from the program is a failure too
            return _send(sock, _exc(e), handles)
    _send(sock, ("ready",), handles)
    while (body := wire.read_frame(sock.recv, 1 << 40)) is not None:  # the judge is the only writer
        request = wire.loads(body)
        if request[0] == "map":
            _map(sock, namespace, request, handles)
        elif request[0] == "stdio":
            _stdio(sock, request, deadline)
        else:
            try:
                reply = ("ret", _do(request, namespace, handles))
            except BaseException as e:  # noqa: BLE001
                reply = _exc(e)
            _send(sock, reply, handles)
    return None


def _child(job: dict, ctl: int, call_fd: int, libc) -> None:
    """The forked executor: drop what only the server may hold, then run the job. Never returns."""
    try:
        os.close(ctl)  # the job channel and the `fin` line belong to the server alone
        os.setsid()  # limits-only mode kills the job by its process group
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the job's own /proc files stay its own
        del sys.argv[1:]
        _set_limits(job["limits"])
        _execute(job, socket.socket(fileno=call_fd))
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)  # skip interpreter teardown: the program may have left threads or broken atexit hooks


# --------------------------------------------------------------------------- the server, between jobs

def _kill_cgroup(procs: str) -> None:
    """Limits-only mode as root: SIGKILL every member of the worker's pids cgroup but us."""
    me = os.getpid()
    for _ in range(1000):
        with open(procs) as f:
            pids = [int(p) for p in f.read().split() if int(p) != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.001)  # only while members remain: SIGKILL takes effect asynchronously
    raise SystemExit("ra3 sandbox harness: processes of the last job survive SIGKILL")


def _end_job(child: int, namespaced: bool, cgroup_procs: str) -> int:
    """SIGKILL the job's child and every process the job left, reap them; the child's exit code."""
    if not namespaced:
        # without a cgroup, daemons that left the child's session escape this (documented in ra3.sandbox)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)
        if cgroup_procs:
            _kill_cgroup(cgroup_procs)
        return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    # Inside our PID namespace, kill(-1) reaches every process but pid 1 (bubblewrap's init) and us. Outside
    # one, as root, it would kill the whole machine: `serve` refuses to start there, and this re-checks.
    if os.getpid() > 3:
        raise SystemExit("ra3 sandbox harness: not in a PID namespace; refusing kill(-1)")
    status = None
    for _ in range(100):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:  # nothing left, not even a zombie: the child is reaped
            return os.waitstatus_to_exitcode(status) if status is not None else -1
        while True:  # as child subreaper we inherit every orphan of the job: reap until none is left
            try:
                pid, wstatus = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            status = wstatus if pid == child else status
    raise SystemExit("ra3 sandbox harness: processes of the last job survive SIGKILL")


def _empty_dir(path: str) -> None:
    """Remove everything under `path` (directories the job made unreadable are made readable first)."""
    os.chmod(path, 0o700)
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _empty_dir(entry.path)
            os.rmdir(entry.path)
        else:
            os.unlink(entry.path)


def _state() -> tuple:
    """What a job could change about the server from outside it (prlimit, setpriority, affinity,
    scheduler: all allowed between processes of one user); a change means restart, not repair."""
    return (tuple(resource.getrlimit(r) for r in _LIMITED), os.getpriority(os.PRIO_PROCESS, 0),
            os.sched_getaffinity(0), os.sched_getscheduler(0))


def _shared_memory(namespaced: bool) -> set:
    """SysV IPC objects and /dev/shm files that jobs of this worker could have made: in a namespace, all of
    them (the IPC namespace is the worker's own); otherwise those owned by our uid."""
    uid, found = os.getuid(), set()
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            header, *rows = [line.split() for line in f]
        for row in rows:
            if namespaced or int(row[header.index("uid")]) == uid:
                found.add((kind, int(row[1])))
    with contextlib.suppress(FileNotFoundError), os.scandir("/dev/shm") as it:
        found |= {("file", e.path) for e in it if namespaced or e.stat(follow_symlinks=False).st_uid == uid}
    return found


def _remove(objects: set, libc) -> None:
    """Remove SysV IPC objects (IPC_RMID; a segment goes when its last user has) and /dev/shm files."""
    calls = {"shm": lambda i: libc.shmctl(i, IPC_RMID, None), "sem": lambda i: libc.semctl(i, 0, IPC_RMID),
             "msg": lambda i: libc.msgctl(i, IPC_RMID, None)}
    for kind, ident in objects:
        if kind == "file":
            with contextlib.suppress(OSError):
                os.unlink(ident)
        else:
            calls[kind](ident)


def _clean(scratch: str, mode: int, baseline: tuple, namespaced: bool, ipc_before: set, libc) -> bool:
    """Undo the job: empty the scratch directory, remove the shared memory it made; True if nothing of the
    job is left that we know of."""
    try:
        _empty_dir(scratch)
        os.chmod(scratch, mode)
    except (OSError, RecursionError):
        return False
    made = _shared_memory(namespaced) - ipc_before
    if made and not namespaced:  # in a namespace the worker is replaced instead
        _remove(made, libc)
        made = _shared_memory(namespaced) - ipc_before
    return _state() == baseline and not made


def _drop_privileges(uid: int, libc) -> None:
    """Limits-only mode as root: become `uid` (gid too) with no groups, no capabilities, no_new_privs."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    caps = [int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
    if os.getresuid() != (uid,) * 3 or os.getgroups() or any(caps):
        raise SystemExit(f"ra3 sandbox harness: could not drop to uid {uid} without capabilities")


def serve(ctl_fd: int, namespaced: bool, uid: int | None, cgroup_procs: str = "") -> None:
    """Run jobs from the judge one at a time, each in a forked child, until the judge hangs up."""
    if namespaced and os.getpid() > 3:
        raise SystemExit("ra3 sandbox harness: --serve namespaced outside a PID namespace")
    libc = ctypes.CDLL(None, use_errno=True)
    if uid is not None:
        _drop_privileges(uid, libc)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary gives a job back what we dropped
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no job may ptrace us or open /proc/<us>/fd, mem or environ
    if namespaced:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come to us, so we can reap them all
    wire.forget_siblings()  # the program must not import ra3's modules by their bare names
    devnull = os.open(os.devnull, os.O_RDONLY)  # the parent gives us /dev/null already; make sure of it
    os.dup2(devnull, 0)
    os.close(devnull)
    ctl = socket.socket(fileno=ctl_fd)
    scratch, baseline = os.getcwd(), _state()
    mode = os.stat(scratch).st_mode & 0o7777
    ipc_before = set() if (namespaced or uid is not None) else _shared_memory(False)
    while (received := wire.receive_job(ctl)) is not None:
        job, call_fd = received
        for name in _MODE_IMPORTS.get(job["mode"], ()):
            __import__(name)
        child = os.fork()
        if child == 0:
            _child(job, ctl_fd, call_fd, libc)
        os.close(call_fd)
        del job
        stop = ctl.recv(1)  # the judge has its verdict (or has hung up: end the job all the same)
        code = _end_job(child, namespaced, cgroup_procs)
        clean = _clean(scratch, mode, baseline, namespaced, ipc_before, libc)
        ready = clean and stop != b""
        ctl.sendall(wire.frame(("fin", code, ready)))
        if not ready:
            return


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:  # can this interpreter, as this user, run us? (the import above did)
        raise SystemExit(0)
    if len(sys.argv) != 6 or sys.argv[1] != "--serve" or sys.argv[3] not in ("namespaced", "limits-only"):
        raise SystemExit("usage: sandbox_harness.py --serve CTL_FD namespaced|limits-only UID|- CGROUP_PROCS|-")
    serve(int(sys.argv[2]), sys.argv[3] == "namespaced", None if sys.argv[4] == "-" else int(sys.argv[4]),
          "" if sys.argv[5] == "-" else sys.argv[5])
