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

The policy q is the model's distribution *at two temperatures* *(ours)*: decisions at
`decision_temperature`, rationale text at `temperature`, q(token) = softmax(logits / T)[token]. Sampling
records log q of every sampled action as it is drawn, and `action_logprobs` recomputes the very same
quantities (same temperatures, same token ids: the sampled ids are kept, never re-tokenised), so the
policy gradient is on-policy and the importance ratio of the first update is 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ra3.models import causal_logits, encode, encode_lines, pad_rows, split_lines, token_logprobs
from ra3.rationales import indent_of, insert_rationales, rationale_line

LOG_ONE = -1e-6  # clamp for log q(h) so that log(1 − q(h)) stays finite
TEXT, WRITE, CONTINUE = 0, 1, 2  # kinds of action: a rationale's text token, the decision to write, to continue


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
    """One written latent: its text, the ids of its comment line from the decision token h on (h, text,
    line end), and, when q sampled it, log q of the sampled actions `ids[:len(logq)]` (h, then the text
    tokens). A line end that generation did not reach (length cap, EOS) is appended and is no action."""

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
        self._tokens = [self._demo_tokens(d) for d in demos]
        # a rationale ends at its line's end: generation stops at any token that holds a newline
        vocab = tokenizer.get_vocab()
        self.line_end_ids = sorted(i for t, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([t]))
        self.newline_ids = tuple(encode(tokenizer, "\n", False))

    def _demo_tokens(self, demo: Demo) -> _Tokens:
        lines = [encode_lines(self.tokenizer, line)[0] for line in demo.lines]
        shared, hashes, indents = [], [], []
        for line, ids in zip(demo.lines, lines, strict=True):
            indent = indent_of(line)
            head = encode(self.tokenizer, rationale_line(indent, "x"), False)  # how any rationale line starts
            m = next((k for k, (a, b) in enumerate(zip(head, ids, strict=False)) if a != b), min(len(head), len(ids)))
            if m >= len(head) - 1 or m >= len(ids):
                raise ValueError(f"{demo.task_id}: a comment before line {line!r} does not diverge from the "
                                 "code at one token, so the rationale decision is not a next-token choice")
            shared.append(m)
            hashes.append(head[m])
            indents.append(indent)
        return _Tokens(encode(self.tokenizer, demo.prompt), lines, shared, hashes, indents)

    def rationale(self, demo: int, t: int, text: str) -> Rationale:
        """A rationale given as text (no behaviour log-probs): its comment line's canonical ids."""
        tok = self._tokens[demo]
        ids = encode(self.tokenizer, rationale_line(tok.indent[t], text), False)[tok.shared[t]:]
        if ids[0] != tok.hash_token[t]:
            raise ValueError(f"rationale {text!r} tokenizes so that its decision token moves")
        return Rationale(" ".join(text.split()), tuple(ids))

    def annotation(self, demo: int, texts: dict[int, str]) -> Annotation:
        """An annotation given as {line: text}."""
        return Annotation({t: self.rationale(demo, t, s) for t, s in texts.items()})

    def sequence(self, demo: int, annotation: Annotation) -> Sequence:
        """The ids of prompt + annotated code, with code-line and rationale positions."""
        tok = self._tokens[demo]
        seq = Sequence(list(tok.prompt), [-1] * len(tok.prompt), [])
        for t, line_ids in enumerate(tok.lines):
            start = len(seq.ids)
            seq.decision_pos.append(start + tok.shared[t] - 1)
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
        """The text of a sampled comment line at line t (its shared prefix + `ids`), without '#'."""
        tok = self._tokens[demo]
        line = self.tokenizer.decode(tok.lines[t][:tok.shared[t]] + ids, skip_special_tokens=True)
        return " ".join(line.split("\n")[0].strip().removeprefix("#").split())

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


# --------------------------------------------------------------------------- sampling from q

@torch.no_grad()
def sample_annotations(policy, enc: Encoder, demo_rows: list[int], temps: Temperatures, max_tokens: int,
                       generator: torch.Generator, batch_size: int = 32) -> tuple[list[Annotation], dict]:
    """Sample one annotation per row (rows name demonstrations, repeated G times for a group).

    Rounds: one forward pass over every unfinished row's current trace gives q(h_t | ·) at each boundary
    t ≥ its cursor; decisions are drawn in order until the first rationale, whose text is then generated
    (all such rows in one batch); the next round resumes after it. Returns the annotations (with log q of
    every sampled action) and token counts {"tokens_forward", "tokens_generated"}.
    """
    annotations = [Annotation() for _ in demo_rows]
    cursor = [0] * len(demo_rows)
    active = list(range(len(demo_rows)))
    counts = {"tokens_forward": 0, "tokens_generated": 0}
    while active:
        writes = []  # (row, t, log q(h_t))
        seqs = {r: enc.sequence(demo_rows[r], annotations[r]) for r in active}
        unique = _unique(seqs[r] for r in active)  # the G copies of a demo share their first round
        logits_of = {}
        for keys in _chunks(list(unique), batch_size):
            ids, mask = enc.batch([unique[k] for k in keys], policy.device)
            counts["tokens_forward"] += int(mask.sum())
            logits_of.update(zip(keys, causal_logits(policy, ids, mask), strict=True))  # each (T, V)
        for r in active:
            drawn = _draw_decisions(logits_of[tuple(seqs[r].ids)], seqs[r], enc, demo_rows[r], cursor[r],
                                    temps.decision, generator, annotations[r])
            if drawn is not None:
                writes.append((r, *drawn))
        rationales, n_gen = _write_rationales(policy, enc, demo_rows, annotations, writes, temps.text, max_tokens)
        counts["tokens_generated"] += n_gen
        for (r, t, _), rationale in zip(writes, rationales, strict=True):
            annotations[r].rationales[t] = rationale
            cursor[r] = t + 1
        active = [r for r, _, _ in writes if cursor[r] < len(enc.demos[demo_rows[r]].lines)]
    return annotations, counts


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _unique(seqs) -> dict[tuple[int, ...], Sequence]:
    """The distinct sequences by ids (first occurrence), so identical traces cost one forward pass."""
    out: dict[tuple[int, ...], Sequence] = {}
    for seq in seqs:
        out.setdefault(tuple(seq.ids), seq)
    return out


def decision_logq(logits: torch.Tensor, hash_token: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q(h) = log softmax(logits / T)[h], clamped below 0 so that log(1 − q(h)) is finite. (..., V) → (...)."""
    logq = torch.log_softmax(logits / temperature, -1).gather(-1, hash_token.unsqueeze(-1)).squeeze(-1)
    return logq.clamp(max=LOG_ONE)


def _draw_decisions(logits: torch.Tensor, seq: Sequence, enc: Encoder, demo: int, start: int, temperature: float,
                    generator: torch.Generator, annotation: Annotation) -> tuple[int, float] | None:
    """Draw CONTINUE/rationale at boundaries start, start+1, ... (recording log q(CONTINUE) in the
    annotation); the first rationale's (line, log q(h)), or None."""
    n = len(seq.decision_pos)
    pos = torch.tensor(seq.decision_pos[start:], device=logits.device)
    hashes = torch.tensor([enc.hash_token(demo, t) for t in range(start, n)], device=logits.device)
    logq_h = decision_logq(logits[pos], hashes, temperature).cpu()  # (n - start,)
    draws = torch.rand(n - start, generator=generator, device=generator.device).cpu()
    for k, t in enumerate(range(start, n)):
        if draws[k] < logq_h[k].exp():
            return t, logq_h[k].item()
        annotation.continue_logq[t] = torch.log1p(-logq_h[k].exp()).item()
    return None


def _write_rationales(policy, enc: Encoder, demo_rows, annotations, writes, temperature: float,
                      max_tokens: int) -> tuple[list[Rationale], int]:
    """Generate each rationale's text after `<indent>#` at `temperature`, batched, up to its line end,
    keeping the sampled ids and their log q (HF generate's processed scores: logits / temperature)."""
    if not writes:
        return [], 0
    contexts = []
    for r, t, _ in writes:
        seq = enc.sequence(demo_rows[r], annotations[r])
        contexts.append(seq.ids[: seq.decision_pos[t] + 1] + [enc.hash_token(demo_rows[r], t)])
    tok = enc.tokenizer
    ids = pad_rows(contexts, tok.pad_token_id, side="left").to(policy.device)
    mask = pad_rows([[1] * len(c) for c in contexts], 0, side="left").to(policy.device)
    stops = {tok.eos_token_id, *enc.line_end_ids}
    out = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=True,
                          temperature=temperature, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id,
                          eos_token_id=sorted(stops), output_scores=True, return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:].tolist()  # (n, steps)
    logq = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # (n, steps, V)
    rationales, n_gen = [], 0
    for i, (r, t, logq_h) in enumerate(writes):
        sampled, lps = [], [logq_h]
        for k, token in enumerate(new[i]):
            if token == tok.eos_token_id:  # EOS inside a comment: cut here, the line end is appended
                break
            sampled.append(token)
            lps.append(logq[i, k, token].item())
            if token in enc.line_end_ids:
                break
        n_gen += len(lps) - 1
        closed = bool(sampled) and sampled[-1] in enc.line_end_ids
        line_ids = [enc.hash_token(demo_rows[r], t), *sampled, *(() if closed else enc.newline_ids)]
        rationales.append(Rationale(enc.line_text(demo_rows[r], t, line_ids), tuple(line_ids), tuple(lps)))
    return rationales, n_gen


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
    unique = _unique(seqs)  # identical traces (e.g. the empty annotation drawn twice) are scored once
    keys = list(unique)
    line_logp, rationale_logp = [], []
    for chunk in _chunks(list(unique.values()), batch_size):
        ids, mask = enc.batch(chunk, model.device)
        logp = token_logprobs(model, ids, mask)  # (n, T-1): logp[:, j-1] scores token j
        line = pad_rows([s.code_line[1:] for s in chunk], -1).to(model.device)  # (n, T-1)
        sums = logp.new_zeros(len(chunk), n_lines + 1)
        sums.scatter_add_(1, line + 1, logp)  # column 0 collects prompt, rationale and padding tokens
        line_logp.append(sums[:, 1:].cpu())  # scores live on the CPU: rewards are small bookkeeping
        for i, s in enumerate(chunk):
            rationale_logp.append({t: logp[i, a:b - 1].cpu() for t, (a, b) in s.rationale_span.items()})
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


# --------------------------------------------------------------------------- the policy's action log-probs

@dataclass
class Actions:
    """The actions of N traces, padded to (N, L), in boundary order: at each boundary t either the
    CONTINUE decision, or the decision token h followed by the rationale's sampled text tokens."""

    logp: torch.Tensor  # (N, L) log q under the current policy (with gradients)
    logq_sampled: torch.Tensor  # (N, L) log q recorded when the action was sampled
    mask: torch.Tensor  # (N, L) 1 for a real action
    boundary: torch.Tensor  # (N, L) the line t an action decides or writes for (0 on padding)


def _action_layout(seq: Sequence, ann: Annotation, enc: Encoder, demo: int, temps: Temperatures):
    """Per action: (position whose logits give it, token, temperature, kind, boundary, sampled log q), where
    kind is TEXT, WRITE (the decision token h) or CONTINUE (log(1 − q(h)))."""
    out = []
    for t, d in enumerate(seq.decision_pos):
        if t in ann.rationales:
            r, (a, _) = ann.rationales[t], seq.rationale_span[t]
            for k, lq in enumerate(r.logq):  # k = 0 is the decision token h, predicted at a − 1 = d
                out.append((a - 1 + k, seq.ids[a + k], temps.text if k else temps.decision, TEXT if k else WRITE,
                            t, lq))
        else:
            out.append((d, enc.hash_token(demo, t), temps.decision, CONTINUE, t, ann.continue_logq[t]))
    return out


def action_logprobs(policy, enc: Encoder, demo_rows: list[int], seqs: list[Sequence], annotations: list[Annotation],
                    temps: Temperatures) -> Actions:
    """One forward pass of q (with gradients) over the final traces:
        rationale at t:  log q(h_t | ·) at T_decision, then log q(token | ·) at T_text per sampled token
        CONTINUE at t:   log(1 − q(h_t | ·)) at T_decision
    """
    ids, mask = enc.batch(seqs, policy.device)
    logits = causal_logits(policy, ids, mask)  # (N, T, V)
    rows, layouts = [], []
    for i, (demo, seq, ann) in enumerate(zip(demo_rows, seqs, annotations, strict=True)):
        layout = _action_layout(seq, ann, enc, demo, temps)
        pos, tok, temp, kind, _, _ = (torch.tensor(c, device=logits.device) for c in zip(*layout, strict=True))
        lp = torch.log_softmax(logits[i, pos] / temp.unsqueeze(-1), -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        decision = lp.clamp(max=LOG_ONE)  # clamped as when sampled; keeps both where-branches finite
        lp = torch.where(kind == TEXT, lp, torch.where(kind == CONTINUE, torch.log1p(-decision.exp()), decision))
        rows.append(lp)
        layouts.append(layout)
    width = max(len(r) for r in rows)
    logp = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])  # (N, L)
    sampled = torch.tensor([[a[5] for a in lay] + [0.0] * (width - len(lay)) for lay in layouts], device=logp.device)
    boundary = pad_rows([[a[4] for a in lay] for lay in layouts], 0).to(logp.device)
    act_mask = pad_rows([[1] * len(lay) for lay in layouts], 0).to(logp.device).float()
    return Actions(logp, sampled, act_mask, boundary)
