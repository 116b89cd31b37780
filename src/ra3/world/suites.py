"""Informative test suites for the world's RL and held-out tasks, from outputs recorded in the sandbox.

A suite is informative when a program that leaves out any one step of the plan, or returns a constant,
fails it (`choose_tests`). Expected outputs come from running the trusted expert functions, batched many
per sandbox run (`record_functions`).
"""

from __future__ import annotations

from ra3.sandbox import FunctionalTest, Job, Limits, record_outputs
from ra3.world.tasks import ENTRY_POINT

RECORD_BATCH = 400  # functions per recording job: one job (and one sandbox round trip) per batch


def record_functions(functions: list[tuple[str, list[list]]], workers: int | None = None) -> list[list]:
    """Return values of trusted function sources on their argument lists, through `sandbox.record_outputs`.

    Each item is (source of `def f(xs): ...`, argument lists). Functions are renamed and batched, many
    per sandbox run, behind one dispatching entry point: starting an interpreter costs more than running
    a few hundred of these functions.
    """
    jobs, sizes = [], []
    for lo in range(0, len(functions), RECORD_BATCH):
        batch = functions[lo:lo + RECORD_BATCH]
        sources = [src.replace(f"def {ENTRY_POINT}(", f"def _f{j}(", 1) for j, (src, _) in enumerate(batch)]
        program = "\n".join(sources) + (f"\n_FUNCTIONS = [{', '.join(f'_f{j}' for j in range(len(batch)))}]\n\n\n"
                                        "def _ra3_world(j, *args):\n    return _FUNCTIONS[j](*args)\n")
        inputs = [[j, *args] for j, (_, cases) in enumerate(batch) for args in cases]
        jobs.append(Job(program, FunctionalTest(inputs, [None] * len(inputs)), "_ra3_world", Limits(timeout=120.0)))
        sizes.append([len(cases) for _, cases in batch])
    outputs = []
    for rec, batch_sizes in zip(record_outputs(jobs, workers=workers), sizes, strict=True):
        if rec.outputs is None:
            raise RuntimeError(f"an expert solution did not run (a bug in the idiom library): {rec.verdict.detail}")
        it = iter(rec.outputs)
        outputs += [[next(it) for _ in range(n)] for n in batch_sizes]
    return outputs


def choose_tests(outputs: list, ablated: list[list], n: int) -> list[int] | None:
    """Indices of at most `n` candidate inputs making an informative test suite, or None if there is none.

    Informative: for every ablation (the plan with one step left out) some chosen input's output differs
    from the expert's, and the chosen outputs are not all equal, so a program that skips a step, or one
    that returns a constant, fails. Greedy set cover over the ablations, then inputs with new outputs.
    Outputs are compared by repr, type-strictly (True is not 1), as the sandbox compares them.
    """
    key = [repr(o) for o in outputs]
    catches = [{i for i, o in enumerate(a) if repr(o) != key[i]} for a in ablated]
    if not all(catches):
        return None
    chosen: list[int] = []
    uncovered = list(range(len(ablated)))
    while uncovered:
        best = max(sorted(set().union(*(catches[j] for j in uncovered))),
                   key=lambda i: sum(i in catches[j] for j in uncovered))
        chosen.append(best)
        uncovered = [j for j in uncovered if best not in catches[j]]
    for i in range(len(key)):  # fill with inputs whose output is new, then with any
        if len(chosen) < n and i not in chosen and key[i] not in {key[c] for c in chosen}:
            chosen.append(i)
    chosen += [i for i in range(len(key)) if i not in chosen][: max(n - len(chosen), 0)]
    if len(chosen) > n or len({key[i] for i in chosen}) < 2:
        return None
    return sorted(chosen)
