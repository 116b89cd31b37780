"""The latent policy q (method.md §2-4): sampling annotations of demonstrations, and the log-probs of its
actions for the policy gradient (a component; `latents` has the annotations and their id sequences).

The policy q is the model's distribution *at two temperatures* *(ours)*: decisions at
`decision_temperature`, rationale text at `temperature`, q(token) = softmax(logits / T)[token]. Sampling
records log q of every sampled action as it is drawn, and `action_logprobs` recomputes the very same
quantities (same temperatures, same token ids: the sampled ids are kept, never re-tokenised), so the
policy gradient is on-policy and the importance ratio of the first update is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ra3.latents import Annotation, Encoder, Rationale, Sequence, Temperatures, chunks, unique_sequences
from ra3.models import causal_logits, pad_rows

LOG_ONE = -1e-6  # clamp for log q(h) so that log(1 − q(h)) stays finite
TEXT, WRITE, CONTINUE = 0, 1, 2  # kinds of action: a rationale's text token, the decision to write, to continue


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
        unique = unique_sequences(seqs[r] for r in active)  # the G copies of a demo share their first round
        logits_of = {}
        for keys in chunks(list(unique), batch_size):
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


def decision_logq(logits: torch.Tensor, hash_token: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q(h) = log softmax(logits / T)[h], clamped below 0 so that log(1 − q(h)) is finite. (..., V) → (...)."""
    logq = torch.log_softmax(logits / temperature, -1).gather(-1, hash_token.unsqueeze(-1)).squeeze(-1)
    return logq.clamp(max=LOG_ONE)


def _draw_decisions(logits: torch.Tensor, seq: Sequence, enc: Encoder, demo: int, start: int, temperature: float,
                    generator: torch.Generator, annotation: Annotation) -> tuple[int, float] | None:
    """Draw CONTINUE/rationale at the decision points start, start+1, ... (recording log q(CONTINUE) in
    the annotation); the first rationale's (step, log q(h)), or None."""
    steps = [t for t in range(start, len(seq.decision_pos)) if seq.decision_pos[t] >= 0]
    pos = torch.tensor([seq.decision_pos[t] for t in steps], dtype=torch.long, device=logits.device)
    hashes = torch.tensor([enc.hash_token(demo, t) for t in steps], dtype=torch.long, device=logits.device)
    logq_h = decision_logq(logits[pos], hashes, temperature).cpu()  # (len(steps),)
    draws = torch.rand(len(steps), generator=generator, device=generator.device).cpu()
    for k, t in enumerate(steps):
        if draws[k] < logq_h[k].exp():
            return t, logq_h[k].item()
        annotation.continue_logq[t] = torch.log1p(-logq_h[k].exp()).item()
    return None


def _write_rationales(policy, enc: Encoder, demo_rows, annotations, writes, temperature: float,
                      max_tokens: int) -> tuple[list[Rationale], int]:
    """Generate each rationale's text after `<indent>#` at `temperature`, batched, up to its line end,
    keeping the sampled ids and their log q (HF generate's processed scores: logits / temperature, with
    every line end but the rationale's own masked)."""
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
    ends = torch.tensor([enc.end_token(demo_rows[r], t) for r, t, _ in writes], device=policy.device)
    out = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=True,
                          temperature=temperature, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id,
                          eos_token_id=sorted(stops), output_scores=True, return_dict_in_generate=True,
                          logits_processor=LogitsProcessorList([_OwnLineEnd(enc.line_end_ids, ends)]))
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
        text_ids = sampled[:-1] if closed and enc.units else sampled  # a unit piece's end opens the next step
        line_ids = [enc.hash_token(demo_rows[r], t), *text_ids, *(() if closed else enc.newline_ids)]
        rationales.append(Rationale(enc.line_text(demo_rows[r], t, line_ids), tuple(line_ids), tuple(lps)))
    return rationales, n_gen


def own_line_end_mask(width: int, line_end_ids: list[int], ends: torch.Tensor) -> torch.Tensor:
    """(N, width) True at every line-end token but row i's own `ends[i]`: what q may not write inside a
    rationale's text (one comment line, ended by its own line end)."""
    banned = torch.zeros(len(ends), width, dtype=torch.bool, device=ends.device)
    banned[:, line_end_ids] = True
    banned[torch.arange(len(ends), device=ends.device), ends] = False
    return banned


class _OwnLineEnd(LogitsProcessor):
    """Masks, in row i of a batch of rationales being written, every line end but its own."""

    def __init__(self, line_end_ids: list[int], ends: torch.Tensor):
        self.line_end_ids, self.ends = line_end_ids, ends

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(own_line_end_mask(scores.shape[-1], self.line_end_ids, self.ends), -torch.inf)

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
    """Per action: (position whose logits give it, token, temperature, kind, boundary, sampled log q, the
    rationale's own line end or -1), where kind is TEXT, WRITE (the decision token h) or CONTINUE
    (log(1 − q(h))). For unit pieces a rationale's last action, its line end, is the next piece's first id."""
    out = []
    for t, d in enumerate(seq.decision_pos):
        if d < 0:  # the expert's own comment: no decision
            continue
        if t in ann.rationales:
            r, (a, _), end = ann.rationales[t], seq.rationale_span[t], enc.end_token(demo, t)
            for k, lq in enumerate(r.logq):  # k = 0 is the decision token h, predicted at a − 1 = d
                out.append((a - 1 + k, seq.ids[a + k], temps.text if k else temps.decision, TEXT if k else WRITE,
                            t, lq, end))
        else:
            out.append((d, enc.hash_token(demo, t), temps.decision, CONTINUE, t, ann.continue_logq[t], -1))
    return out


def count_actions(enc: Encoder, demo_rows: list[int], seqs: list[Sequence], annotations: list[Annotation],
                  temps: Temperatures) -> int:
    """How many actions the traces hold (the real entries of `action_logprobs`'s mask), without a forward pass."""
    return sum(len(_action_layout(seq, ann, enc, demo, temps))
               for demo, seq, ann in zip(demo_rows, seqs, annotations, strict=True))


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
        pos, tok, temp, kind, _, _, end = (torch.tensor(c, device=logits.device) for c in zip(*layout, strict=True))
        scaled = logits[i, pos] / temp.unsqueeze(-1)  # (A, V)
        text = kind == TEXT  # a text token is drawn with every line end but the rationale's own masked
        banned = own_line_end_mask(scaled.shape[-1], enc.line_end_ids, end.clamp(min=0)) & text.unsqueeze(-1)
        lp = torch.log_softmax(scaled.masked_fill(banned, -torch.inf), -1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
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
