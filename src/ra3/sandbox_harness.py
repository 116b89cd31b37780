"""The trusted side of the sandbox: a fork server executed as a script *inside* the sandbox by `ra3.sandbox`.

    python -s -B sandbox_harness.py --serve CTL_FD RESULT_FD namespaced|limits-only [CGROUP_PROCS]

Protocol. The parent sends jobs on CTL_FD (one end of a socket pair, never fd 0: bubblewrap's pid 1 keeps
its stdin open, where a program could reopen it through /proc/1/fd/0; our stdin is /dev/null): an 8-byte
little-endian length, then a marshalled dict with nonce, mode, program, tests, entry_point and limits.
For each job we fork a child that sets the job's resource limits, runs the untrusted program and its
tests, and writes its progress to RESULT_FD as text lines; its last line, written only after every test
has run, is `end <nonce> <run> <passed> <status> <detail>`. A program that exits early (`sys.exit`,
`os._exit`, a signal, killing us) never reaches that line, and cannot write it itself without the nonce,
which is held only in local variables and never placed where the program's namespace can reach it by
name. When the child has exited, the server kills every process the job left (in limits-only mode, the
child's process group and, as root, every other member of the worker's cgroup CGROUP_PROCS), empties
the scratch directory, checks that the job left nothing it cannot undo, and answers on CTL_FD, which the
child closes before the program runs, so a program cannot forge it even knowing the nonce:
`fin <nonce> <exit code of the child> ready|restart`. After `restart` it exits and the parent starts a
fresh sandbox.

Standard library only, and no import of `ra3`: this file runs under `python -s` with a scrubbed
environment (not `-I`: it would ignore PYTHONHASHSEED). Modules a mode needs are imported by the server
the first time it sees that mode, so later children find them loaded; `random` and `tempfile` are never
imported here (a child would inherit the server's random state instead of seeding its own). `marshal`
carries the job because, unlike `pickle`, it costs no import time.
"""

import contextlib
import ctypes
import marshal
import math
import os
import resource
import signal
import sys
import time

_PLAIN_SCALARS = (int, bool, str, bytes, type(None))
_PLAIN_KEYS = (*_PLAIN_SCALARS, float)
_MODE_IMPORTS = {"functional": ("copy", "cmath"), "record": ("base64", "pickle", "cmath"),
                 "stdio": ("subprocess",)}
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
_LIMITED = (resource.RLIMIT_AS, resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC,
            resource.RLIMIT_CORE, resource.RLIMIT_NOFILE, resource.RLIMIT_MSGQUEUE)


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
        resource.RLIMIT_MSGQUEUE: 0,  # POSIX message queues would outlive the job in the worker's IPC namespace
    }
    for res, value in wanted.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value
        resource.setrlimit(res, (value, hard))


def _plain_key(value) -> bool:
    """A dict key or set element whose hash and equality no program can override."""
    if type(value) is tuple:
        return all(_plain_key(v) for v in value)
    return type(value) in _PLAIN_KEYS


def _make_equal(atol: float):
    """Value equality that a returned object cannot fake by overriding __eq__ (types are checked first)."""
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
        if type(exp) is dict:  # keys are checked plain before `in` hashes them
            return (type(out) is dict and len(out) == len(exp)
                    and all(_plain_key(k) and k in exp and equal(v, exp[k]) for k, v in out.items()))
        if type(exp) in (set, frozenset):
            return type(out) is type(exp) and all(_plain_key(v) for v in out) and out == exp
        if type(exp) in (int, bool) and type(out) in (int, bool, float):
            return out == exp  # EvalPlus and LiveCodeBench accept 2.0 for 2
        return type(out) is type(exp) and type(exp) in _PLAIN_SCALARS and out == exp

    return equal


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text[:300]


def _exec_program(program: str) -> dict:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(program, "<program>", "exec"), namespace)
    return namespace


def _run_script(job: dict, report) -> tuple:
    """ScriptTest: the program followed by its test code; passing means reaching the end."""
    try:
        _exec_program(job["program"] + "\n" + job["tests"]["code"] + "\n")
    except AssertionError as e:
        return 1, 0, "fail", _one_line(e) if str(e) else "AssertionError"
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from the program are failures too
        return 1, 0, "error", _one_line(e)
    return 1, 1, "pass", ""


def _run_functional(job: dict, report) -> tuple:
    """FunctionalTest: call the entry point on each input; stop at the first wrong or failing case."""
    import copy

    tests, equal = job["tests"], _make_equal(job["tests"]["atol"])
    try:
        fn = _exec_program(job["program"])[job["entry_point"]]
    except BaseException as e:  # noqa: BLE001
        return 0, 0, "error", _one_line(e)
    for i, (args, expected) in enumerate(zip(tests["inputs"], tests["outputs"], strict=True)):
        try:
            out = fn(*copy.deepcopy(args))
        except BaseException as e:  # noqa: BLE001
            return i + 1, i, "error", f"input #{i}: {_one_line(e)}"
        if not equal(out, expected):
            return i + 1, i, "fail", f"input #{i}: wrong output {repr(out)[:120]}"
        report(i)
    n = len(tests["inputs"])
    return n, n, "pass", ""


def _same_tokens(out: str, exp: str) -> bool:
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


def _run_stdio(job: dict, report, deadline: float) -> tuple:
    """StdioTest: run the program as a script per case (in its own process) and compare stdout tokens."""
    import subprocess

    with open("program.py", "w") as f:
        f.write(job["program"])
    tests = job["tests"]
    for i, (stdin, expected) in enumerate(zip(tests["inputs"], tests["outputs"], strict=True)):
        with open("stdout.txt", "wb") as out:
            try:
                proc = subprocess.run([sys.executable, "-s", "-B", "program.py"], input=stdin.encode(),
                                      stdout=out, stderr=subprocess.DEVNULL,
                                      timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return i + 1, i, "error", f"case #{i}: time limit"
        if proc.returncode != 0:
            return i + 1, i, "error", f"case #{i}: exit status {proc.returncode}"
        with open("stdout.txt", errors="replace") as f:
            if not _same_tokens(f.read(), expected):
                return i + 1, i, "fail", f"case #{i}: wrong output"
        report(i)
    n = len(tests["inputs"])
    return n, n, "pass", ""


def _record(job: dict, report) -> tuple:
    """Trusted reference code only: the return values travel back pickled, base64, as the detail."""
    import base64
    import pickle

    fn = _exec_program(job["program"])[job["entry_point"]]
    outputs = [fn(*args) for args in job["tests"]["inputs"]]
    n = len(outputs)
    return n, n, "pass", base64.b64encode(pickle.dumps(outputs)).decode()


# --------------------------------------------------------------------------- one job, in a forked child

def _run_job(job: dict, nonce: str, result_fd: int) -> None:
    """Run one job in this (forked) process and write its nonce-carrying lines; then exit."""
    write = os.write
    deadline = time.monotonic() + job["limits"]["timeout"]
    _set_limits(job["limits"])  # stdin is already /dev/null, and `sys.stdin` unread: the server saw to both

    def report(case: int) -> None:  # a passed case, authenticated like the final line
        write(result_fd, f"ok {nonce} {case}\n".encode())

    runners = {"script": _run_script, "functional": _run_functional, "record": _record,
               "stdio": lambda j, r: _run_stdio(j, r, deadline)}
    try:
        run, passed, status, detail = runners[job["mode"]](job, report)
    except BaseException as e:  # noqa: BLE001 - the harness must always try to report
        run, passed, status, detail = 0, 0, "error", _one_line(e)
        print(f"ra3 sandbox harness: {detail}", file=sys.stderr)
    write(result_fd, f"end {nonce} {run} {passed} {status} {detail}\n".encode())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: the program may have left threads or broken atexit hooks


def _child(job: dict, nonce: str, ctl: int, result_fd: int, libc) -> None:
    """The forked child: drop what only the server may hold, then run the job. Never returns."""
    try:
        os.close(ctl)  # the job channel and the `fin` line belong to the server alone
        os.setsid()  # limits-only mode kills the job by its process group
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # the job's own /proc files stay its own, as in a fresh process
        del sys.argv[1:]
        _run_job(job, nonce, result_fd)
    finally:
        os._exit(70)  # never fall back into the server's loop


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


def _reap(child: int, namespaced: bool, cgroup_procs: str) -> int:
    """Wait for the job's child, SIGKILL every process the job left, reap them; the child's exit code."""
    _, status = os.waitpid(child, 0)
    if not namespaced:
        # without a cgroup, daemons that left the child's session escape this (documented in ra3.sandbox)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child, signal.SIGKILL)
        if cgroup_procs:
            _kill_cgroup(cgroup_procs)
        return os.waitstatus_to_exitcode(status)
    # Inside our PID namespace, kill(-1) reaches every process but pid 1 (bubblewrap's init) and us. Outside
    # one, as root, it would kill the whole machine: `serve` refuses to start there, and this re-checks.
    if os.getpid() > 3:
        raise SystemExit("ra3 sandbox harness: not in a PID namespace; refusing kill(-1)")
    for _ in range(100):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return os.waitstatus_to_exitcode(status)
        while True:  # as child subreaper we inherit every orphan of the job: reap until none is left
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
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


def _sysv_ipc_left() -> bool:
    """SysV IPC objects live in the worker's IPC namespace, not in any process: the next job would see them."""
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            if len(f.read().splitlines()) > 1:
                return True
    return False


def _clean(scratch: str, mode: int, baseline: tuple, namespaced: bool) -> bool:
    """Undo the job: empty the scratch directory; True if nothing of the job is left that we know of."""
    try:
        _empty_dir(scratch)
        os.chmod(scratch, mode)
    except (OSError, RecursionError):
        return False
    return _state() == baseline and not (namespaced and _sysv_ipc_left())


def _read_job(ctl: int) -> dict | None:
    """The next job from the parent, or None when it has closed the channel."""
    data = bytearray()
    need = 8
    while len(data) < need:
        chunk = os.read(ctl, min(need - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
        if need == 8 and len(data) == 8:
            need += int.from_bytes(data, "little")
    return marshal.loads(bytes(data[8:]))


def serve(ctl: int, result_fd: int, namespaced: bool, cgroup_procs: str = "") -> None:
    """Run jobs from `ctl` one at a time, each in a forked child, until the parent closes `ctl`."""
    if namespaced and os.getpid() > 3:
        raise SystemExit("ra3 sandbox harness: --serve namespaced outside a PID namespace")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no job may ptrace us or open /proc/<us>/fd, mem or environ
    if namespaced:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans come to us, so we can reap them all
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # the program must not import ra3's modules by their bare names
    devnull = os.open(os.devnull, os.O_RDONLY)  # the parent gives us /dev/null already; make sure of it
    os.dup2(devnull, 0)
    os.close(devnull)
    scratch, baseline = os.getcwd(), _state()
    mode = os.stat(scratch).st_mode & 0o7777
    while (job := _read_job(ctl)) is not None:
        nonce = job.pop("nonce")
        for name in _MODE_IMPORTS.get(job["mode"], ()):
            __import__(name)
        child = os.fork()
        if child == 0:
            _child(job, nonce, ctl, result_fd, libc)
        del job
        code = _reap(child, namespaced, cgroup_procs)
        clean = _clean(scratch, mode, baseline, namespaced)
        os.write(ctl, f"fin {nonce} {code} {'ready' if clean else 'restart'}\n".encode())
        if not clean:
            return


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6) or sys.argv[1] != "--serve" or sys.argv[4] not in ("namespaced", "limits-only"):
        raise SystemExit("usage: sandbox_harness.py --serve CTL_FD RESULT_FD namespaced|limits-only [CGROUP_PROCS]")
    serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "namespaced", "".join(sys.argv[5:]))
