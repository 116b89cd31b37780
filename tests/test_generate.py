"""Sampling and `ra3 generate`: stop rules on hand-written text, greedy/sampled generation on the tiny model
(real forward passes, CPU), and the stage's samples file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ra3 import layout
from ra3.benchmarks import check_completions, load_benchmark, mbpp_prompt
from ra3.config import ConfigError, parse_config
from ra3.evaluate import read_samples
from ra3.files import DataError, iter_jsonl
from ra3.generate import GenerateConfig, run
from ra3.models import load_pretrained
from ra3.sampling import (
    generate_completions,
    in_function_body,
    stop_completion,
    stop_program,
    stop_rule,
)

# Prompts of different lengths, so that batches need left padding.
PROMPTS = ["def f0(xs):\n", "def f1(xs):\n    out = []\n    for x in xs:\n", "x",
           "def f3(xs):\n    out = []\n", "def f4(xs):\n    out = []\n    for x in xs:\n        out.append(x + 1)\n"]


def keep_all(text: str) -> str:
    return text


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model):
    model, tokenizer = load_pretrained(tiny_model, dtype=torch.float32)
    return model.eval(), tokenizer


# --------------------------------------------------------------------------- stop rules (pure)

@pytest.mark.parametrize(("text", "kept"), [
    ("    return x\ndef g():\n    pass\n", "    return x\n"),
    ("    return x\nclass A:\n", "    return x\n"),
    ('    return x\n\n\nif __name__ == "__main__":\n    f()\n', "    return x\n\n\n"),
    ("    return x\nprint(f(1))\n", "    return x\n"),
    ("    return x\nassert f(1) == 1\n", "    return x\n"),
    ("    return x\n# tests\n", "    return x\n"),
    ("    return x\nresult = f(2)\n", "    return x\n"),  # any column-0 statement ends the body
    # indented comments (RA3 rationales), blank lines and tabs are body
    ("    # keep the positives\n    ys = [x for x in xs if x > 0]\n\n\t# sum them\n\treturn sum(ys)\n",
     "    # keep the positives\n    ys = [x for x in xs if x > 0]\n\n\t# sum them\n\treturn sum(ys)\n"),
    ("    a = 1\n    \n    return a\n#", "    a = 1\n    \n    return a\n"),
    ("    return (x +\n            1)", "    return (x +\n            1)"),  # no stop: unchanged, unfinished line kept
    ("def g():\n    pass\ndef h():\n", "def g():\n    pass\n"),  # the first line is never cut
    ("", ""),
])
def test_body_rule_cuts_at_the_first_column_0_line(text, kept):
    assert stop_completion(text) == kept


@pytest.mark.parametrize(("text", "kept"), [
    ("import math\n\ndef helper(x):\n    return x\n\ndef f(x):\n    return helper(x)\nprint(f(1))\n"
     'if __name__ == "__main__":\n    f(2)\n',
     "import math\n\ndef helper(x):\n    return x\n\ndef f(x):\n    return helper(x)\nprint(f(1))\n"
     'if __name__ == "__main__":\n    f(2)\n'),
    ("def f(x):\n    return x\nassert f(1) == 1\n", "def f(x):\n    return x\n"),
    ('def f(x):\n    return x\n"""\nWrite a function g.\n"""\n', "def f(x):\n    return x\n"),
    ("n = int(input())\nprint(n)\n```\nExplanation", "n = int(input())\nprint(n)\n"),
    ("def f(x):\n    assert x\n    return x\n", "def f(x):\n    assert x\n    return x\n"),  # indented assert kept
])
def test_program_rule_keeps_whole_programs_and_cuts_tests(text, kept):
    assert stop_program(text) == kept


def test_stop_rule_follows_the_prompt():
    assert in_function_body("def f0(xs):\n")
    assert in_function_body('def f(x: int) -> int:  # doc\n')
    assert in_function_body('def f(x):\n    """Twice x."""\n')
    assert not in_function_body(mbpp_prompt("Write a function to add.", "assert add(1, 2) == 3"))
    assert not in_function_body("Read n from stdin and print n squared.\n")
    assert not in_function_body("")
    assert all(stop_rule(p.prompt) is stop_completion for p in load_benchmark("humaneval"))


# --------------------------------------------------------------------------- generation on the tiny model

def test_greedy_is_identical_across_runs_and_batch_sizes(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    runs = [generate_completions(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=b, stop=keep_all)
            for b in (1, 1, 2, 5)]  # batch size 1 has no padding: the reference for the padded batches
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert all(len(c) == 1 for c in runs[0])
    # the model did generate: 16 tokens each (no EOS from this random model) are several characters each
    assert min(len(c[0]) for c in runs[0]) >= 16


def test_stop_rule_ends_generation_early_without_changing_what_is_kept(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    calls = []

    def first_6_chars(text: str) -> str:  # any rule whose cut, once made, stays (as the body rule's does)
        calls.append(text)
        return text[:6]

    full = generate_completions(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=5, stop=keep_all)
    stopped = generate_completions(model, tokenizer, PROMPTS, max_new_tokens=16, batch_size=5, stop=first_6_chars)
    assert stopped == [[c[0][:6]] for c in full]
    # the rule runs once per row per generation step and once on each final text; all 16 steps would make
    # 5 x 16 + 5 calls (a 6-character cut needs at most 6 decodable tokens; split UTF-8 bytes take more)
    assert len(calls) < 5 * 16


def test_sampling_is_reproducible_from_the_seed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer

    def sample(seed):
        return generate_completions(model, tokenizer, PROMPTS[:3], n=3, temperature=1.0, top_p=0.95,
                                    max_new_tokens=8, batch_size=4, seed=seed, stop=keep_all)

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = sample(7)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is untouched
    assert sample(7) == first
    assert sample(8) != first
    assert [len(c) for c in first] == [3, 3, 3]
    assert all(len(set(c)) > 1 for c in first)  # samples of one prompt differ at temperature 1


def test_greedy_with_several_samples_is_refused(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="identical"):
        generate_completions(model, tokenizer, PROMPTS, n=2, temperature=0.0)


# --------------------------------------------------------------------------- the stage

def _generate(argv: list[str]) -> tuple[GenerateConfig, Path]:
    """What `ra3 generate ARGV` does (cli.main: parse the flags into the config, call run)."""
    cfg = parse_config(GenerateConfig, argv, prog="ra3 generate")
    return cfg, run(cfg)


def test_stage_writes_human_eval_samples_reproducibly(tiny_model, tmp_path):
    argv = ["--model", str(tiny_model), "--benchmark", "humaneval", "--limit", "2", "--n", "3",
            "--temperature", "0.8", "--max-new-tokens", "12", "--batch-size", "4", "--seed", "5"]
    cfg, out = _generate([*argv, "--out", str(tmp_path / "a.jsonl")])
    _, again = _generate([*argv, "--out", str(tmp_path / "b.jsonl")])
    _, other_seed = _generate([*argv, "--seed", "6", "--out", str(tmp_path / "c.jsonl")])
    assert out.read_bytes() == again.read_bytes()
    assert out.read_bytes() != other_seed.read_bytes()

    problems = {p.task_id: p for p in load_benchmark("humaneval")[:2]}
    samples = read_samples(out, problems, "humaneval")  # `ra3 evaluate`'s reader
    assert [(s["task_id"], s["completion_id"]) for s in samples] == [
        (f"HumanEval/{t}", j) for t in range(2) for j in range(3)]
    verdicts = check_completions(problems, samples)  # and its checker runs every sample
    assert len(verdicts) == 6 and all(v.status in ("fail", "error") for v in verdicts)  # random model

    assert parse_config(GenerateConfig, ["--config", str(layout.samples_sidecar(out, "config.yaml"))]) == cfg
    compute = json.loads(layout.samples_sidecar(out, layout.COMPUTE).read_text())
    assert (compute["backend"], compute["tasks"], compute["samples"], compute["seed"]) == ("hf", 2, 6, 5)


def test_reuse_answers_a_shared_prompt_once(tiny_model, tmp_path):
    """HumanEval+ holds HumanEval's prompts: with HumanEval's samples to reuse, only the prompt that differs
    (HumanEval/115, EvalPlus fixed its docstring) is generated."""
    argv = ["--model", str(tiny_model), "--max-new-tokens", "8", "--limit", "116"]
    _, base = _generate([*argv, "--benchmark", "humaneval", "--out", str(tmp_path / "he.jsonl")])
    _, plus = _generate([*argv, "--benchmark", "humaneval_plus", "--reuse", str(base),
                         "--out", str(tmp_path / "plus.jsonl")])
    base_samples, plus_samples = list(iter_jsonl(base)), list(iter_jsonl(plus))
    assert [s["task_id"] for s in plus_samples] == [s["task_id"] for s in base_samples]
    differ = [b["task_id"] for b, p in zip(base_samples, plus_samples, strict=True) if b != p]
    assert set(differ) <= {"HumanEval/115"}
    compute = json.loads(layout.samples_sidecar(plus, layout.COMPUTE).read_text())
    assert (compute["tasks"], compute["tasks_generated"]) == (116, 1)

    with pytest.raises(ConfigError, match="other settings.*max_new_tokens=8"):
        _generate(["--model", str(tiny_model), "--max-new-tokens", "9", "--benchmark", "humaneval_plus",
                   "--reuse", str(base), "--out", str(tmp_path / "other.jsonl")])
    with pytest.raises(DataError, match="not a samples file"):
        _generate([*argv, "--benchmark", "humaneval_plus", "--reuse", str(tmp_path / "none.jsonl"),
                   "--out", str(tmp_path / "other.jsonl")])


@pytest.mark.parametrize(("argv", "message"), [
    (["--benchmark", "humaneval_pluss"], "humaneval_pluss"),
    (["--n", "0"], "n must be >= 1"),
    (["--n", "4"], "greedy"),  # temperature 0 with n > 1
    (["--top-p", "0"], "top_p"),
    (["--backend", "vllm"], "vLLM"),  # not installed here
    (["--model", "/nonexistent/ra3-model"], "not found"),
])
def test_bad_input_is_a_one_line_config_error(tiny_model, tmp_path, argv, message):
    with pytest.raises(ConfigError, match=message) as error:
        _generate(["--model", str(tiny_model), "--out", str(tmp_path / "s.jsonl"), *argv])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "s.jsonl").exists()
