"""The trusted side of one sandboxed run. Executed as a script *inside* the sandbox by `ra3.sandbox`.

Protocol. The parent marshals a job dict to our stdin: nonce, mode, program, tests, entry_point, limits,
result_fd. We read it, set our own resource limits (children inherit them), point stdin at /dev/null,
then run the untrusted program and its tests. Progress goes to `result_fd` as text lines; the last line,
written only after every test has run, is `end <nonce> <run> <passed> <status> <detail>`. The parent
trusts nothing else: a program that exits early (`sys.exit`, `os._exit`, a signal, killing us) never
reaches that line, and it cannot write it itself without the nonce, which is held only in local
variables of `main` and never placed where the program's namespace can reach it by name.

Standard library only, and no import of `ra3`: this file runs under `python -s` with a scrubbed
environment (not `-I`: it would ignore PYTHONHASHSEED), and its start-up time is paid once per program, so modules a mode needs are imported in
that mode (`marshal` carries the job because, unlike `pickle`, it costs no import time).
"""

import io
import marshal
import math
import os
import resource
import sys
import time

_PLAIN_SCALARS = (int, bool, str, bytes, type(None))


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
    }
    for res, value in wanted.items():
        hard = value + 1 if res == resource.RLIMIT_CPU else value
        resource.setrlimit(res, (value, hard))


def _make_equal(atol: float):
    """Value equality that a returned object cannot fake by overriding __eq__ (types are checked first)."""
    isclose, isnan = math.isclose, math.isnan

    def equal(out, exp) -> bool:
        if type(exp) is float:
            if type(out) not in (float, int):
                return False
            if isnan(exp) or isnan(out):
                return isnan(exp) and isnan(out)
            return isclose(out, exp, rel_tol=1e-7, abs_tol=atol)
        if type(exp) in (list, tuple):
            return (type(out) is type(exp) and len(out) == len(exp)
                    and all(equal(o, e) for o, e in zip(out, exp, strict=True)))
        if type(exp) is dict:
            return (type(out) is dict and len(out) == len(exp)
                    and all(type(k) in _PLAIN_SCALARS and k in exp and equal(v, exp[k]) for k, v in out.items()))
        if type(exp) in (set, frozenset):
            return type(out) is type(exp) and all(type(v) in _PLAIN_SCALARS + (float, tuple) for v in out) \
                and out == exp
        if type(exp) in (int, bool) and type(out) in (int, bool):
            return out == exp
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


def main() -> None:
    job = marshal.loads(sys.stdin.buffer.read())
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # the program must not import ra3's modules by their bare names
    nonce, result_fd, write = job.pop("nonce"), job["result_fd"], os.write
    start = time.monotonic()
    deadline = start + job["limits"]["timeout"]
    _set_limits(job["limits"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, closefd=False)))

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
    os._exit(0)  # skip interpreter teardown: the program may have left threads or broken atexit hooks


if __name__ == "__main__":
    main()
