"""A real pretrained model through RA3's machinery: SmolLM2-135M (conftest's `smollm2`, imported once per
session) on real code. Its BPE glues a line end to the next line's indentation, so every text is cut into
unit pieces (`models.split_units`): the checks are that the pieces' ids are the tokenizer's own, that a
trace with sampled rationales keeps the code's ids and is scored on the same characters, that the policy's
recomputed log-probs equal the sampled ones, that one E-step update moves q, and that generation works."""

from __future__ import annotations

import ast

import pytest
import torch

from ra3.benchmarks import load_humaneval, load_mbpp
from ra3.config import parse_config
from ra3.corpus import CorpusConfig
from ra3.corpus import run as build_corpus
from ra3.estep import EStep, EStepConfig, load_demos
from ra3.latent_policy import action_logprobs
from ra3.latents import Annotation
from ra3.models import encode, line_level, load_pretrained
from ra3.sampling import generate_completions


@pytest.fixture(scope="module")
def smol(smollm2):
    model, tokenizer = load_pretrained(smollm2, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def stdlib_demos(tmp_path_factory):
    """Demonstrations from the standard library's json package (`ra3 corpus`): real code with comments."""
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(parse_config(CorpusConfig, ["--sources", "json", "--mbpp", "false", "--out-dir", str(out)]))
    return out / "demos.jsonl"


def test_pieces_are_the_tokenizers_own_encoding_of_real_code(smol):
    _, tok = smol
    assert not line_level(tok)
    for p in load_mbpp(split="train")[:40]:
        text = p.prompt + p.metadata["canonical_solution"]
        assert encode(tok, text, False) == tok(text, add_special_tokens=False)["input_ids"]


def test_an_estep_on_real_code(smollm2, stdlib_demos, tmp_path):
    """q samples rationales; each trace is the tokenizer's own encoding of its text and keeps the code's ids
    (so code is scored on the same characters); the recomputed log-probs equal the sampled ones; one
    update moves q and leaves p frozen."""
    cfg = EStepConfig(model=str(smollm2), demos=stdlib_demos, out_dir=tmp_path, max_demos=6, group_size=4,
                      demos_per_update=6, estep_batch_size=8, rationale_max_tokens=8, estep_lr=1e-4)
    step = EStep(cfg, load_demos(stdlib_demos, 6))
    enc, tok = step.enc, step.tokenizer
    rollouts = step.rollout(list(range(6)))
    written = [i for i, a in enumerate(rollouts.annotations) if a.rationales]
    assert written  # q(h) is e^-2..e^-6 per line on this code; without a rationale every advantage is 0
    for r, a, seq in zip(rollouts.rows, rollouts.annotations, rollouts.seqs, strict=True):
        text = enc.demos[r].prompt + enc.render(r, a.texts())
        ast.parse(text)  # a rendered trace is Python
        assert seq.ids == encode(tok, "") + tok(text, add_special_tokens=False)["input_ids"]
        plain = enc.sequence(r, Annotation())
        assert [i for i, c in zip(seq.ids, seq.code_line, strict=True) if c >= 0] == \
               [i for i, c in zip(plain.ids, plain.code_line, strict=True) if c >= 0]
    assert rollouts.line_gain[written].abs().sum() > 0
    with torch.no_grad():  # (the update builds its own graph; two at once would hold two (N, T, V) logits)
        actions = action_logprobs(step.policy, enc, rollouts.rows, rollouts.seqs, rollouts.annotations, step.temps)
    assert ((actions.logp - actions.logq_sampled) * actions.mask).abs().max() < 1e-3  # on-policy: ratio 1
    del actions
    before = [p.detach().clone() for p in step.policy.parameters()]
    metrics = step.update(rollouts)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, step.policy.parameters(), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(step.scorer.parameters(), load_pretrained(smollm2)[0].parameters(),
                                                  strict=True))  # p stays frozen


def test_greedy_generation_continues_a_healed_prompt_with_a_body(smol):
    """A HumanEval prompt ends in a line end that this tokenizer only knows glued to the next indentation;
    fed the prompt up to its last non-blank character, the model writes the function's body (before the
    healing it wrote a lone line end or a Markdown fence, and pass@1 was 0 by construction)."""
    model, tok = smol
    problems = load_humaneval()[:4]
    completions = generate_completions(model, tok, [p.prompt for p in problems], max_new_tokens=48, batch_size=4)
    assert all(c[0].startswith("    ") and c[0].strip() for c in completions)
