"""Latent actions over expert traces (a component): annotations, their token sequences, sampling them
from the latent policy q, and scoring them with the frozen model p (method.md §2-4).

A demonstration is a prompt x and code lines a_1..a_T; a step is one line *(ours, method.md §2)*. Before
line t the policy either continues (writes nothing) or writes a rationale: a comment line
`<indent of line t># <text>` in the trace. Both choices are one next-token decision at the same place:
after the tokens line t shares with any comment line at its place (its indentation), the next token is
either the comment's first own token h_t (the "#", or a space before it) or the code's own. So

    q(rationale at t) = q(h_t | x, a_<t, z_<t)        q(CONTINUE at t) = 1 − q(h_t | x, a_<t, z_<t)

and one forward pass over an annotated trace gives the decision probabilities at every later boundary
(exact up to the next rationale, since the context there is already final). Sampling therefore costs
one forward pass per written rationale plus one, and generation only where a rationale is written
(method.md §4: "CONTINUE costs a forward pass").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ra3.models import causal_logits, encode, encode_lines, pad_rows, split_lines, token_logprobs
from ra3.rationales import indent_of, insert_rationales, rationale_line


@dataclass(frozen=True)
class Demo:
    """One expert demonstration split into steps (lines); `plan_starts` are the true plan-step starts
    (line indices) where known (the synthetic world), for boundary precision/recall."""

    task_id: str
    prompt: str
    lines: tuple[str, ...]
    plan_starts: tuple[int, ...] = ()
    plan_names: tuple[str, ...] = ()


@dataclass
class _Tokens:
    """A demonstration's ids, computed once: prompt ids, per-line ids, and per line the number m of
    leading ids it shares with a comment line at its place and the comment's first own token h."""

    prompt: list[int]
    lines: list[list[int]]
    shared: list[int]
    hash_token: list[int]
    indent: list[str]


@dataclass
class Sequence:
    """One annotated trace as ids, with where each code line and each rationale sits."""

    ids: list[int]
    code_line: list[int]  # per position: line index t of a code token, else -1
    decision_pos: list[int]  # per line t: position whose next-token distribution makes the decision
    rationale_span: dict[int, tuple[int, int]] = field(default_factory=dict)  # t -> [start, end) of h + text


def render(demo: Demo, rationales: dict[int, str]) -> str:
    """The annotated completion: each rationale's comment line before the line it precedes."""
    return insert_rationales(demo.lines, rationales)


class Encoder:
    """Turns demonstrations and their annotations into id sequences for one tokenizer."""

    def __init__(self, tokenizer, demos: list[Demo]):
        self.tokenizer = tokenizer
        self.demos = demos
        self._rationale_cache: dict[tuple[str, str], list[int]] = {}
        self._tokens = [self._demo_tokens(d) for d in demos]
        # a rationale ends at its line's end: generation stops at any token that holds a newline
        vocab = tokenizer.get_vocab()
        self.line_end_ids = sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))

    def _demo_tokens(self, demo: Demo) -> _Tokens:
        lines = [encode_lines(self.tokenizer, line)[0] for line in demo.lines]
        shared, hashes, indents = [], [], []
        for line, ids in zip(demo.lines, lines, strict=True):
            indent = indent_of(line)
            head = self._line_ids(indent, "x")  # how any rationale line before this one starts
            m = next((k for k, (a, b) in enumerate(zip(head, ids, strict=False)) if a != b), min(len(head), len(ids)))
            if m >= len(head) - 1 or m >= len(ids):
                raise ValueError(f"{demo.task_id}: a comment before line {line!r} does not diverge from the "
                                 "code at one token, so the rationale decision is not a next-token choice")
            shared.append(m)
            hashes.append(head[m])
            indents.append(indent)
        return _Tokens(encode(self.tokenizer, demo.prompt), lines, shared, hashes, indents)

    def _line_ids(self, indent: str, text: str) -> list[int]:
        key = (indent, text)
        if key not in self._rationale_cache:
            self._rationale_cache[key] = encode(self.tokenizer, rationale_line(indent, text), False)
        return self._rationale_cache[key]

    def sequence(self, demo: int, rationales: dict[int, str]) -> Sequence:
        """The ids of prompt + annotated code, with code-line and rationale positions."""
        tok = self._tokens[demo]
        seq = Sequence(list(tok.prompt), [-1] * len(tok.prompt), [])
        for t, line_ids in enumerate(tok.lines):
            start = len(seq.ids)
            seq.decision_pos.append(start + tok.shared[t] - 1)
            if t in rationales:
                r_ids = self._line_ids(tok.indent[t], rationales[t])
                if r_ids[tok.shared[t]] != tok.hash_token[t]:
                    raise ValueError(f"rationale {rationales[t]!r} tokenizes so that its decision token moves")
                seq.rationale_span[t] = (start + tok.shared[t], start + len(r_ids))
                seq.ids += r_ids
                seq.code_line += [-1] * len(r_ids)
            seq.ids += line_ids
            seq.code_line += [t] * len(line_ids)
        return seq

    def hash_token(self, demo: int, t: int) -> int:
        return self._tokens[demo].hash_token[t]

    def batch(self, seqs: list[Sequence], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (ids, attention mask), each (N, T)."""
        ids = pad_rows([s.ids for s in seqs], self.tokenizer.pad_token_id).to(device)
        mask = pad_rows([[1] * len(s.ids) for s in seqs], 0).to(device)
        return ids, mask


# --------------------------------------------------------------------------- sampling from q

@torch.no_grad()
def sample_annotations(policy, enc: Encoder, demo_rows: list[int], temperature: float, max_tokens: int,
                       generator: torch.Generator, batch_size: int = 32) -> tuple[list[dict[int, str]], dict]:
    """Sample one annotation per row (rows name demonstrations, repeated G times for a group).

    Rounds: one forward pass over every unfinished row's current trace gives q(h_t | ·) at each boundary
    t ≥ its cursor; decisions are drawn in order until the first rationale, whose text is then generated
    (all such rows in one batch); the next round resumes after it. Returns the annotations and token
    counts {"tokens_forward", "tokens_generated"}.
    """
    annotations: list[dict[int, str]] = [{} for _ in demo_rows]
    cursor = [0] * len(demo_rows)
    active = list(range(len(demo_rows)))
    counts = {"tokens_forward": 0, "tokens_generated": 0}
    while active:
        writes = []  # (row, t)
        for chunk in _chunks(active, batch_size):
            seqs = [enc.sequence(demo_rows[r], annotations[r]) for r in chunk]
            ids, mask = enc.batch(seqs, policy.device)
            counts["tokens_forward"] += int(mask.sum())
            logp = torch.log_softmax(causal_logits(policy, ids, mask), -1)  # (n, T, V)
            for i, r in enumerate(chunk):
                t = _first_rationale(logp[i], seqs[i], enc, demo_rows[r], cursor[r], generator)
                if t is not None:
                    writes.append((r, t))
        texts, n_gen = _write_rationales(policy, enc, demo_rows, annotations, writes, temperature, max_tokens)
        counts["tokens_generated"] += n_gen
        for (r, t), text in zip(writes, texts, strict=True):
            annotations[r][t] = text
            cursor[r] = t + 1
        active = [r for r, _ in writes if cursor[r] < len(enc.demos[demo_rows[r]].lines)]
    return annotations, counts


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _first_rationale(logp: torch.Tensor, seq: Sequence, enc: Encoder, demo: int, start: int,
                     generator: torch.Generator) -> int | None:
    """Draw CONTINUE/rationale at boundaries start, start+1, ...; the first rationale's line, or None."""
    for t in range(start, len(seq.decision_pos)):
        p_comment = logp[seq.decision_pos[t], enc.hash_token(demo, t)].exp().item()
        if torch.rand((), generator=generator, device=generator.device).item() < p_comment:
            return t
    return None


def _write_rationales(policy, enc: Encoder, demo_rows, annotations, writes, temperature: float,
                      max_tokens: int) -> tuple[list[str], int]:
    """Generate each rationale's text after `<indent>#`, batched, cut at the first newline."""
    if not writes:
        return [], 0
    contexts = []
    for r, t in writes:
        seq = enc.sequence(demo_rows[r], annotations[r])
        contexts.append(seq.ids[: seq.decision_pos[t] + 1] + [enc.hash_token(demo_rows[r], t)])
    tok = enc.tokenizer
    ids = pad_rows(contexts, tok.pad_token_id, side="left").to(policy.device)
    mask = pad_rows([[1] * len(c) for c in contexts], 0, side="left").to(policy.device)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 \
        else {"do_sample": False}
    out = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                          pad_token_id=tok.pad_token_id, eos_token_id=[tok.eos_token_id, *enc.line_end_ids],
                          **sampling)
    new = out[:, ids.shape[1]:]
    texts = [tok.decode(row, skip_special_tokens=True).split("\n")[0].strip() for row in new]
    return texts, int((new != tok.pad_token_id).sum())


# --------------------------------------------------------------------------- scoring with p

@dataclass
class Scores:
    """Frozen-model scores of N annotated traces."""

    line_logp: torch.Tensor  # (N, T_max): Σ log p over each code line's tokens
    rationale_logp: list[dict[int, torch.Tensor]]  # per trace: t -> log p of the rationale's tokens (h + text)


@torch.no_grad()
def score(model, enc: Encoder, seqs: list[Sequence], batch_size: int = 32) -> Scores:
    """One teacher-forced forward pass of the frozen model per batch: code log-likelihood per line and the
    log-probs of the rationale tokens (conditioned on, not scored; used for the KL term), on the CPU."""
    n_lines = max(len(s.decision_pos) for s in seqs)
    line_logp, rationale_logp = [], []
    for chunk in _chunks(seqs, batch_size):
        ids, mask = enc.batch(chunk, model.device)
        logp = token_logprobs(model, ids, mask)  # (n, T-1): logp[:, j-1] scores token j
        line = pad_rows([s.code_line[1:] for s in chunk], -1).to(model.device)  # (n, T-1)
        sums = logp.new_zeros(len(chunk), n_lines + 1)
        sums.scatter_add_(1, line + 1, logp)  # column 0 collects prompt, rationale and padding tokens
        line_logp.append(sums[:, 1:].cpu())  # scores live on the CPU: rewards are small bookkeeping
        for i, s in enumerate(chunk):
            rationale_logp.append({t: logp[i, a - 1:b - 1].cpu() for t, (a, b) in s.rationale_span.items()})
    return Scores(torch.cat(line_logp), rationale_logp)


def split_demo(task_id: str, prompt: str, completion: str, plan: list[dict] | None = None) -> Demo:
    """A Demo from a prompt/completion record; `plan` items carry 'start' (line index) and 'idiom'."""
    plan = plan or []
    return Demo(task_id, prompt, tuple(split_lines(completion)), tuple(p["start"] for p in plan),
                tuple(p["idiom"] for p in plan))


# --------------------------------------------------------------------------- the policy's action log-probs

@dataclass
class Actions:
    """log q of every action of N traces, padded to (N, L): for each boundary either the CONTINUE decision
    or the rationale's tokens (its "#" token h is the decision to write it)."""

    logp: torch.Tensor  # (N, L)
    mask: torch.Tensor  # (N, L) 1 for a real action
    owner: torch.Tensor  # (N, L) line t of the rationale an action belongs to; -1 for CONTINUE decisions


def action_logprobs(policy, enc: Encoder, demo_rows: list[int], seqs: list[Sequence]) -> Actions:
    """One forward pass of q (with gradients) over the final traces:
        rationale at t:  log q(h_t | ·) + Σ_text log q(token | ·)   (each token an action)
        CONTINUE at t:   log(1 − q(h_t | ·))
    """
    ids, mask = enc.batch(seqs, policy.device)
    logits = causal_logits(policy, ids, mask)  # (N, T, V)
    lse = logits.logsumexp(-1)  # (N, T)
    rows, owners = [], []
    for i, (demo, seq) in enumerate(zip(demo_rows, seqs, strict=True)):
        pos, tok, is_continue, owner = [], [], [], []
        for t, d in enumerate(seq.decision_pos):
            if t in seq.rationale_span:
                a, b = seq.rationale_span[t]
                pos += range(a - 1, b - 1)
                tok += seq.ids[a:b]
                is_continue += [False] * (b - a)
                owner += [t] * (b - a)
            else:
                pos.append(d)
                tok.append(enc.hash_token(demo, t))
                is_continue.append(True)
                owner.append(-1)
        pos_t = torch.tensor(pos, device=logits.device)
        lp = logits[i, pos_t, torch.tensor(tok, device=logits.device)] - lse[i, pos_t]  # (L_i,)
        cont = torch.tensor(is_continue, device=logits.device)
        # log(1 − q(h)) for CONTINUE; clamp keeps it finite when q(h) rounds to 1
        lp = torch.where(cont, torch.log1p(-lp.exp().clamp(max=1 - 1e-6)), lp)
        rows.append(lp)
        owners.append(owner)
    width = max(len(r) for r in rows)
    logp = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])  # (N, L)
    act_mask = pad_rows([[1] * len(o) for o in owners], 0).to(logp.device).float()
    owner = pad_rows(owners, -1).to(logp.device)
    return Actions(logp, act_mask, owner)
