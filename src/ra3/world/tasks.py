"""Tasks of the synthetic world: compositions of idioms, their code, statements, comments and test inputs.

A task is a sequence of plan steps (idioms with parameters) composed into `def f(xs):`. Its code is the
concatenation of the steps' lines, so the true plan (each step's idiom and line span) is known exactly.
Compositions (the idiom-name sequence) are assigned to splits by a seeded hash, so no composition is
shared between the pretraining corpus, the demonstrations, the RL tasks and the held-out tasks.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from string import Template

from ra3.rationales import insert_rationales
from ra3.world.idioms import FINALS, TRANSFORMS, Idiom, Step, sample_step

SPLITS = ("pretrain", "demos", "rl", "eval")
# Share of the composition space each split draws from. Any positive shares keep splits disjoint; these
# only set how often a random composition is rejected while sampling a split.
COMPOSITION_SHARES = {"pretrain": 0.55, "demos": 0.15, "rl": 0.15, "eval": 0.15}
ENTRY_POINT = "f"
INDENT = "    "
# Comment wordings in the pretraining corpus. Three of four carry the idiom's canonical name, so the name
# is a rationale the model learns to write; the step phrase is the "varied wording" (world-notes.md).
COMMENT_WORDINGS = ("$name", "$name: $detail", "$step", "then $name")


@dataclass(frozen=True)
class Task:
    """One program of the world: its plan, statement and code."""

    task_id: str
    split: str
    style: str  # "steps": the statement lists the steps in order; "goal": one nested phrase
    steps: tuple[Step, ...]

    @property
    def composition(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    @cached_property
    def _code(self) -> tuple[list[str], list[tuple[int, int]]]:
        lines, spans = [], []
        for i, step in enumerate(self.steps):
            step_lines = step.lines(last=i == len(self.steps) - 1)
            spans.append((len(lines), len(lines) + len(step_lines)))
            lines += [INDENT + line + "\n" for line in step_lines]
        return lines, spans

    @property
    def lines(self) -> list[str]:
        """Body lines, each indented and ending in a newline."""
        return self._code[0]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """[start, end) line indices of each plan step in `lines`; they tile the body exactly."""
        return self._code[1]

    @property
    def completion(self) -> str:
        return "".join(self.lines)

    @property
    def statement(self) -> str:
        if self.style == "steps":
            phrases = [s.step_phrase for s in self.steps]
            if not self.steps[-1].idiom.final:
                phrases.append("return the list")
            return "Steps: " + "; then ".join(phrases) + "."
        # Each step wraps the description of its input; brackets keep the nesting unambiguous, so the
        # plan is fully determined by the statement, only not spelt out in execution order.
        description = "xs"
        for step in self.steps:
            description = step.goal_phrase(description if description == "xs" else f"({description})")
        return f"Return {description}."

    @property
    def prompt(self) -> str:
        """The code prefix a model completes: signature and statement; it ends on a line boundary."""
        return f'def {ENTRY_POINT}(xs):\n{INDENT}"""{self.statement}"""\n'

    @property
    def plan(self) -> list[dict]:
        """Ground truth for latent recovery: per step its idiom, [start, end) lines and parameters."""
        return [{"idiom": s.name, "start": a, "end": b, "variant": s.variant, "params": s.params, "detail": s.detail}
                for s, (a, b) in zip(self.steps, self.spans, strict=True)]


def composition_split(composition: tuple[str, ...], seed: int) -> str:
    """The split a composition belongs to: a seeded hash of the idiom names, bucketed by COMPOSITION_SHARES."""
    digest = hashlib.sha256(f"{seed}|{'/'.join(composition)}".encode()).digest()
    u, edge = int.from_bytes(digest[:8], "big") / 2**64, 0.0
    for split, share in COMPOSITION_SHARES.items():
        edge += share / sum(COMPOSITION_SHARES.values())
        if u < edge:
            return split
    return SPLITS[-1]


def sample_composition(rng: random.Random, min_steps: int, max_steps: int, final_rate: float) -> list[Idiom]:
    """A random idiom sequence: distinct transforms, then (with probability `final_rate`) one final idiom."""
    n = rng.randint(min_steps, max_steps)
    final = rng.random() < final_rate
    return rng.sample(TRANSFORMS, n - final) + ([rng.choice(FINALS)] if final else [])


def sample_task(rng: random.Random, split: str, index: int, seed: int, *, min_steps: int, max_steps: int,
                final_rate: float, goal_fraction: float, max_lines: int) -> Task:
    """A task of `split`: compositions are drawn until one belongs to the split, then its parameters and
    statement style, until the body fits in `max_lines`."""
    while True:
        idioms = sample_composition(rng, min_steps, max_steps, final_rate)
        if composition_split(tuple(i.name for i in idioms), seed) != split:
            continue
        steps = tuple(sample_step(idiom, rng) for idiom in idioms)
        task = Task(f"world/{split}/{index}", split, "goal" if rng.random() < goal_fraction else "steps", steps)
        if len(task.lines) <= max_lines:
            return task


def annotate(completion: str, comments: dict[int, str]) -> str:
    """Insert `# text` before line `t` of `completion` for each `t: text`, at line t's indentation (the
    rationale format of `ra3.rationales`, which the E-step writes too)."""
    return insert_rationales(completion.splitlines(keepends=True), comments)


def pretraining_comments(task: Task, rng: random.Random) -> dict[int, str]:
    """One comment per plan step, in a randomly chosen wording, before the step's first line."""
    comments = {}
    for step, (start, _) in zip(task.steps, task.spans, strict=True):
        wording = rng.choice(COMMENT_WORDINGS)
        comments[start] = Template(wording).substitute(name=step.name, detail=step.detail, step=step.step_phrase)
    return comments


def sample_inputs(rng: random.Random, n: int) -> list[list]:
    """`n` argument lists, each one list of ints. Every list gets its own value range and length, so
    thresholds, duplicates, sortedness and sign changes vary between cases."""
    cases = []
    for _ in range(n):
        lo = rng.randint(-4, 3)
        hi = lo + rng.randint(4, 14)
        cases.append([[rng.randint(lo, hi) for _ in range(rng.randint(3, 10))]])
    return cases


def function_source(name: str, steps: tuple[Step, ...]) -> str:
    """The source of `def name(xs):` with the steps' body (used to record outputs of solutions and of
    ablations, which leave one step out; no steps: the identity)."""
    body = Task("", "", "steps", steps).completion if steps else f"{INDENT}return xs\n"
    return f"def {name}(xs):\n" + body
