"""Latent actions over expert traces (a component): demonstrations cut into steps, annotations, their token
sequences, and scoring them with the frozen model p (method.md §2-4); sampling them from the latent policy
q is `latent_policy`'s.

A demonstration is a prompt x and code lines a_1..a_T; a step is one line *(ours, method.md §2)*, encoded
as one piece (`models.pieces`): the line with its line end for ra3's own tokenizers, the blank run before
the line's text plus the text for pretrained BPEs that glue a line end to the next indentation (there a
blank line belongs to the step after it). Before step t the policy either continues (writes nothing) or
writes a rationale: a comment line `<indent of line t># <text>` in the trace, itself one piece. Both
choices are one next-token decision at the same place: after the tokens step t shares with any comment
piece at its place (its indentation), the next token is either the comment's first own token h_t (the
"#", or a space before it) or the code's own. So

    q(rationale at t) = q(h_t | x, a_<t, z_<t)        q(CONTINUE at t) = 1 − q(h_t | x, a_<t, z_<t)

and one forward pass over an annotated trace gives the decision probabilities at every later boundary
(exact up to the next rationale, since the context there is already final). Sampling therefore costs
one forward pass per written rationale plus one, and generation only where a rationale is written
(method.md §4: "CONTINUE costs a forward pass"). A step whose code is itself a comment is no decision
point: the expert's comment already stands there, and the two would not differ at one token.

Same characters with and without rationales. The code's log-likelihood sums the ids of its pieces, which do
not depend on the rationale pieces between them, so a trace with rationales scores exactly the code tokens
(and characters) of the plain trace. A rationale piece ends with its line end: for line pieces the "\\n"
token is the rationale's last token; for unit pieces the line end opens the next step's piece, so the
rationale's last action is that piece's first token (e.g. '\\n   '), which is scored as code. While the
text is sampled every other token holding a line end is masked (`Encoder.line_end_ids`), in sampling and in
`latent_policy.action_logprobs` alike: q is the model restricted to one well-formed comment line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ra3.models import encode, line_level, pad_rows, split_lines, split_units, token_logprobs, unit_cut
from ra3.rationales import indent_of, insert_rationales, rationale_line


@dataclass(frozen=True)
class Demo:
    """One expert demonstration split into steps (lines). Where known (the synthetic world): the true
    plan-step starts (line indices), each step's idiom name and detail, for the boundary metrics."""

    task_id: str
    prompt: str
    lines: tuple[str, ...]
    plan_starts: tuple[int, ...] = ()
    plan_names: tuple[str, ...] = ()
    plan_details: tuple[str, ...] = ()
    plan_params: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Rationale:
    """One written latent: its text, the ids of its comment piece from the decision token h on (h, text and,
    for line pieces, the line end), and, when q sampled it, log q of the sampled actions: h, the text
    tokens and the line end (for unit pieces, the next piece's first token). A line end that generation
    did not reach (length cap, EOS) is no action (a line piece gets it appended)."""

    text: str
    ids: tuple[int, ...]
    logq: tuple[float, ...] = ()


@dataclass
class Annotation:
    """The latents of one trace: the rationales by line, and log q(CONTINUE) where q drew CONTINUE."""

    rationales: dict[int, Rationale] = field(default_factory=dict)
    continue_logq: dict[int, float] = field(default_factory=dict)

    def texts(self) -> dict[int, str]:
        return {t: r.text for t, r in sorted(self.rationales.items())}


@dataclass
class _Tokens:
    """A demonstration's ids, computed once: prompt ids, per-step ids, and per step the number m of
    leading ids it shares with a comment piece at its place and the comment's first own token h (-1 where
    the step is no decision point), its indentation and the token that ends a rationale before it."""

    prompt: list[int]
    lines: list[list[int]]
    shared: list[int]
    hash_token: list[int]
    indent: list[str]
    end_token: list[int]


@dataclass
class Sequence:
    """One annotated trace as ids, with where each code line and each rationale sits."""

    ids: list[int]
    code_line: list[int]  # per position: step index t of a code token, else -1
    decision_pos: list[int]  # per step t: position whose next-token distribution makes the decision (-1: none)
    rationale_span: dict[int, tuple[int, int]] = field(default_factory=dict)  # t -> [start, end) of h + text


def unit_indent(step: str) -> str:
    """The indentation of a unit step: the blanks after the last line end of its leading blank run."""
    return step[:len(step) - len(step.lstrip())].split("\n")[-1]


def unit_demo(demo: Demo) -> Demo:
    """`demo` re-cut into unit steps (`models.split_units`). The prompt ends at its last non-blank character
    when a line end follows it (its line end opens the first step), as the whole text's tokens do, and the
    final blank run closes the last step; a plan's line starts become the steps that hold those lines'
    first non-blank characters."""
    text = demo.prompt + "".join(demo.lines)
    cut = unit_cut(demo.prompt, "".join(demo.lines))
    steps = split_units(text[cut:])
    if len(steps) > 1 and steps[-1].isspace():  # the final line end closes the last step
        steps[-2:] = [steps[-2] + steps[-1]]
    ends = [cut + sum(map(len, steps[:k + 1])) for k in range(len(steps))]

    def step_of(line: int) -> int:
        start = len(demo.prompt) + sum(map(len, demo.lines[:line]))
        first = next((i for i in range(start, len(text)) if not text[i].isspace()), len(text) - 1)
        return next(k for k, end in enumerate(ends) if first < end)

    return Demo(demo.task_id, text[:cut], tuple(steps), tuple(step_of(s) for s in demo.plan_starts),
                demo.plan_names, demo.plan_details, demo.plan_params)


class Encoder:
    """Turns demonstrations and their annotations into id sequences for one tokenizer. For a tokenizer
    whose pieces are units (`models.line_level` false), `demos` are re-cut into unit steps (`unit_demo`)."""

    def __init__(self, tokenizer, demos: list[Demo]):
        self.tokenizer = tokenizer
        self.units = not line_level(tokenizer)
        self.demos = [unit_demo(d) for d in demos] if self.units else demos
        # every token holding a line end; while a rationale's text is sampled only its own end is allowed
        vocab = tokenizer.get_vocab()
        self.line_end_ids = sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))
        newline = encode(tokenizer, "\n", False)
        if not self.units and len(newline) != 1:
            raise ValueError("a line-level tokenizer must encode '\\n' as one token")
        self.newline_ids = () if self.units else tuple(newline)  # what a line piece's rationale ends with
        self._tokens = [self._demo_tokens(d) for d in self.demos]

    def comment_piece(self, indent: str, text: str) -> str:
        """A rationale as one piece: `<indent># text\\n` (line pieces) or `\\n<indent># text` (unit pieces)."""
        line = rationale_line(indent, text)
        return "\n" + line.removesuffix("\n") if self.units else line

    def _demo_tokens(self, demo: Demo) -> _Tokens:
        lines = [encode(self.tokenizer, step, False) for step in demo.lines]
        tok = _Tokens(encode(self.tokenizer, demo.prompt), lines, [], [], [], [])
        for step, ids in zip(demo.lines, lines, strict=True):
            indent = unit_indent(step) if self.units else indent_of(step)
            tok.indent.append(indent)
            tok.end_token.append(ids[0] if self.units else self.newline_ids[0])
            if step.strip().startswith("#"):  # the expert's own comment: no decision point
                tok.shared.append(0)
                tok.hash_token.append(-1)
                continue
            head = encode(self.tokenizer, self.comment_piece(indent, "x"), False)  # how any rationale starts
            m = next((k for k, (a, b) in enumerate(zip(head, ids, strict=False)) if a != b), min(len(head), len(ids)))
            if m >= len(head) - 1 or m >= len(ids):
                raise ValueError(f"{demo.task_id}: a comment before line {step!r} does not diverge from the "
                                 "code at one token, so the rationale decision is not a next-token choice")
            tok.shared.append(m)
            tok.hash_token.append(head[m])
        return tok

    def rationale(self, demo: int, t: int, text: str) -> Rationale:
        """A rationale given as text (no behaviour log-probs): its comment piece's canonical ids."""
        tok = self._tokens[demo]
        ids = encode(self.tokenizer, self.comment_piece(tok.indent[t], text), False)[tok.shared[t]:]
        if tok.hash_token[t] < 0:
            raise ValueError(f"step {t} of demonstration {demo} is the expert's comment: no rationale before it")
        if ids[0] != tok.hash_token[t]:
            raise ValueError(f"rationale {text!r} tokenizes so that its decision token moves")
        return Rationale(" ".join(text.split()), tuple(ids))

    def render(self, demo: int, rationales: dict[int, str]) -> str:
        """The annotated completion (after `demos[demo].prompt`): each rationale's comment piece before the
        step it precedes."""
        d = self.demos[demo]
        if not self.units:
            return insert_rationales(d.lines, rationales)
        indent = self._tokens[demo].indent
        return "".join((self.comment_piece(indent[t], rationales[t]) if t in rationales else "") + step
                       for t, step in enumerate(d.lines))

    def decides(self, demo: int, t: int) -> bool:
        """Whether step t is a decision point (not the expert's own comment)."""
        return self._tokens[demo].hash_token[t] >= 0

    def end_token(self, demo: int, t: int) -> int:
        """The token that ends a rationale before step t: '\\n', or the step's own first token (unit pieces)."""
        return self._tokens[demo].end_token[t]

    def annotation(self, demo: int, texts: dict[int, str]) -> Annotation:
        """An annotation given as {line: text}."""
        return Annotation({t: self.rationale(demo, t, s) for t, s in texts.items()})

    def sequence(self, demo: int, annotation: Annotation) -> Sequence:
        """The ids of prompt + annotated code, with code-line and rationale positions."""
        tok = self._tokens[demo]
        seq = Sequence(list(tok.prompt), [-1] * len(tok.prompt), [])
        for t, line_ids in enumerate(tok.lines):
            start = len(seq.ids)
            seq.decision_pos.append(start + tok.shared[t] - 1 if tok.hash_token[t] >= 0 else -1)
            if t in annotation.rationales:
                r_ids = line_ids[:tok.shared[t]] + list(annotation.rationales[t].ids)
                seq.rationale_span[t] = (start + tok.shared[t], start + len(r_ids))
                seq.ids += r_ids
                seq.code_line += [-1] * len(r_ids)
            seq.ids += line_ids
            seq.code_line += [t] * len(line_ids)
        return seq

    def hash_token(self, demo: int, t: int) -> int:
        return self._tokens[demo].hash_token[t]

    def line_text(self, demo: int, t: int, ids: list[int]) -> str:
        """The text of a sampled comment piece at step t (its shared prefix + `ids`), without '#'."""
        tok = self._tokens[demo]
        line = self.tokenizer.decode(tok.lines[t][:tok.shared[t]] + ids, skip_special_tokens=True)
        return " ".join(line.lstrip("\n").split("\n")[0].strip().removeprefix("#").split())

    def batch(self, seqs: list[Sequence], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (ids, attention mask), each (N, T)."""
        ids = pad_rows([s.ids for s in seqs], self.tokenizer.pad_token_id).to(device)
        mask = pad_rows([[1] * len(s.ids) for s in seqs], 0).to(device)
        return ids, mask

@dataclass(frozen=True)
class Temperatures:
    """q's two temperatures: of the write/CONTINUE decision and of the rationale text (both > 0)."""

    decision: float
    text: float


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def unique_sequences(seqs) -> dict[tuple[int, ...], Sequence]:
    """The distinct sequences by ids (first occurrence), so identical traces cost one forward pass."""
    out: dict[tuple[int, ...], Sequence] = {}
    for seq in seqs:
        out.setdefault(tuple(seq.ids), seq)
    return out


# --------------------------------------------------------------------------- scoring with p

@dataclass
class Scores:
    """Frozen-model scores of N annotated traces."""

    line_logp: torch.Tensor  # (N, T_max): Σ log p over each code line's tokens
    rationale_logp: list[dict[int, torch.Tensor]]  # per trace: t -> log p of the rationale's text tokens


@torch.no_grad()
def score(model, enc: Encoder, seqs: list[Sequence], batch_size: int = 32) -> Scores:
    """One teacher-forced forward pass of the frozen model per batch: code log-likelihood per line and the
    log-probs of each rationale's text tokens after h (conditioned on, not scored; for the KL term), on
    the CPU."""
    n_lines = max(len(s.decision_pos) for s in seqs)
    unique = unique_sequences(seqs)  # identical traces (e.g. the empty annotation drawn twice) are scored once
    keys = list(unique)
    line_logp, rationale_logp = [], []
    for chunk in chunks(list(unique.values()), batch_size):
        ids, mask = enc.batch(chunk, model.device)
        logp = token_logprobs(model, ids, mask)  # (n, T-1): logp[:, j-1] scores token j
        line = pad_rows([s.code_line[1:] for s in chunk], -1).to(model.device)  # (n, T-1)
        sums = logp.new_zeros(len(chunk), n_lines + 1)
        sums.scatter_add_(1, line + 1, logp)  # column 0 collects prompt, rationale and padding tokens
        line_logp.append(sums[:, 1:].cpu())  # scores live on the CPU: rewards are small bookkeeping
        for i, s in enumerate(chunk):
            # the text tokens after h, and the line end: in a unit piece that is the next piece's first token
            # (at b), whose log p also counts as code
            rationale_logp.append({t: logp[i, a:b - 1 + enc.units].cpu() for t, (a, b) in s.rationale_span.items()})
    index = {key: k for k, key in enumerate(keys)}
    rows = [index[tuple(s.ids)] for s in seqs]
    return Scores(torch.cat(line_logp)[rows], [rationale_logp[k] for k in rows])

def split_demo(task_id: str, prompt: str, completion: str, plan: list[dict] | None = None) -> Demo:
    """A Demo from a prompt/completion record; `plan` items carry 'start' (line index), 'idiom' and,
    optionally, 'detail' and 'params' (the world's ground truth)."""
    plan = plan or []
    return Demo(task_id, prompt, tuple(split_lines(completion)), tuple(p["start"] for p in plan),
                tuple(p["idiom"] for p in plan), tuple(p.get("detail", "") for p in plan),
                tuple(tuple(p.get("params", {}).values()) for p in plan))
