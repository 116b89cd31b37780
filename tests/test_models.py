"""ra3.models and the `init-model` stage: tokenizer guarantees, HF round trips, teacher-forced scoring."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

from ra3 import init_model
from ra3.config import ConfigError, parse_config
from ra3.models import (
    PRESETS,
    Segment,
    count_parameters,
    encode,
    encode_pieces,
    encodes_line_by_line,
    line_level,
    load_pretrained,
    pieces,
    prompt_to_continue,
    save_pretrained,
    score_segments,
    segment_logprobs,
    split_lines,
    split_units,
    tiny_config,
    token_logprobs,
)

torch.set_num_threads(1)

CODE = (
    "def running_max(xs):\n"
    "    best = None\n"
    "    out = []\n"
    "    for x in xs:\n"
    "        if best is None or x > best:\n"
    "            best = x\n"
    "        out.append(best)\n"
    "\n"
    "    return out\n"
)
# Indentation with spaces and tabs, blank lines, CRLF, trailing spaces, unicode in strings and names, no final
# newline: everything a tokenizer could silently normalise away.
TRICKY = (
    "class Café:\n\tdef naïve(self, s='héllo 中文 🙂'):  \r\n\t\treturn s  # ünïcode\n\n\n"
    "    x = '\\n'  \n        \n\ty = f'{x!r:>10}'\u00a0\u2028z"
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """Real Python source (a few stdlib modules) plus a JSONL file of prompts with unicode."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("textwrap.py", "heapq.py", "bisect.py", "string.py", "colorsys.py"):
        shutil.copy(stdlib / name, root / name)
    records = [{"task_id": f"t/{i}", "prompt": f"Return the running maxima of xs, {i} × café.", "n": i}
               for i in range(50)]
    (root / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def model_dir(corpus_dir, tmp_path_factory) -> Path:
    cfg = init_model.InitModelConfig(out_dir=tmp_path_factory.mktemp("run") / "model", vocab_size=512,
                                     corpus=[str(corpus_dir), str(corpus_dir / "tasks.jsonl")], seed=3)
    return init_model.run(cfg)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def sharp_model(tokenizer) -> LlamaForCausalLM:
    """A random 2m model with large weights, so log-probs vary a lot between positions (a wrong position
    or shift cannot hide behind a near-uniform distribution); in float64, so that atol 1e-5 measures the
    scoring code rather than float32 rounding of log-probs near -10."""
    config = tiny_config("2m", tokenizer)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    return LlamaForCausalLM(config).double().eval()


def test_init_model_directory_loads_in_transformers(model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == 512 == model.config.vocab_size
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer("x = 1\n")["input_ids"][0] == tokenizer.bos_token_id
    meta = json.loads((model_dir / "ra3_meta.json").read_text())
    assert meta["parameters"] == count_parameters(model)
    assert meta["vocab_size"] == 512
    # transformers 4 (vLLM) knows PreTrainedTokenizerFast, not transformers 5's TokenizersBackend.
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    # the saved resolved config reads back as a config
    cfg = parse_config(init_model.InitModelConfig, ["--config", str(model_dir / "ra3_config.yaml")])
    assert (cfg.seed, cfg.vocab_size, cfg.preset) == (3, 512, "2m")
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_forward_backward(model_dir, tokenizer):
    model, _ = load_pretrained(model_dir)
    model.train()
    ids = torch.tensor([encode(tokenizer, CODE)])  # (1, T)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    # a fresh model predicts about uniformly over the vocabulary
    assert abs(loss.item() - torch.log(torch.tensor(512.0)).item()) < 0.5
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_init_model_is_deterministic_and_rejects_bad_config(corpus_dir, model_dir, tmp_path):
    again = init_model.run(init_model.InitModelConfig(
        out_dir=tmp_path / "again", vocab_size=512, corpus=[str(corpus_dir), str(corpus_dir / "tasks.jsonl")],
        seed=3))
    for name in ("tokenizer.json", "model.safetensors"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes()
    with pytest.raises(ConfigError, match="preset"):
        parse_config(init_model.InitModelConfig, ["--preset", "3m"])
    with pytest.raises(ConfigError, match="vocab_size"):
        parse_config(init_model.InitModelConfig, ["--vocab-size", "200"])


def test_read_corpus_stdlib_is_capped_and_seeded():
    texts = init_model.read_corpus(["stdlib"], max_chars=50_000, seed=1)
    assert sum(map(len, texts)) == 50_000
    assert texts == init_model.read_corpus(["stdlib"], max_chars=50_000, seed=1)
    assert texts != init_model.read_corpus(["stdlib"], max_chars=50_000, seed=2)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_parameter_count_matches_its_name(preset, tokenizer):
    # the presets are named at vocab_size 1024; build on the meta device (no memory, no time)
    tok_1024 = type("Tok", (), {"__len__": lambda self: 1024, "bos_token_id": 0, "eos_token_id": 1,
                                "pad_token_id": 2})()
    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_config(preset, tok_1024))
    expected = float(preset.rstrip("m")) * 1e6
    assert abs(count_parameters(model) - expected) / expected < 0.15


@pytest.mark.parametrize("text", [CODE, TRICKY, "", "\n", "\n\n\n", "   ", "é"])
def test_tokenizer_round_trips_python_source(tokenizer, text):
    ids = encode(tokenizer, text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert "".join(split_lines(text)) == text


def test_inserting_a_comment_never_changes_code_token_ids(tokenizer):
    lines = split_lines(CODE)
    raw_lines = encode_pieces(tokenizer, CODE)
    for k in range(len(lines) + 1):
        comment = "    # comment\n"
        annotated = "".join(lines[:k] + [comment] + lines[k:])
        annotated_lines = encode_pieces(tokenizer, annotated)
        assert annotated_lines[:k] + annotated_lines[k + 1:] == raw_lines
        # the tokenizer's own whole-text encoding (what HF and vLLM use) agrees with the line-level one
        assert encodes_line_by_line(tokenizer, annotated)
        whole = tokenizer(annotated)["input_ids"]
        n_before = 1 + sum(map(len, raw_lines[:k]))  # BOS + the code before the comment
        n_comment = len(annotated_lines[k])
        assert whole[:n_before] + whole[n_before + n_comment:] == tokenizer(CODE)["input_ids"]
    assert encodes_line_by_line(tokenizer, TRICKY)


def test_encodes_line_by_line_detects_tokens_across_newlines():
    # GPT-2's pre-tokenizer alone glues "\n" to the next line's indentation; the check must say so.
    assert not encodes_line_by_line(gpt2_like(), CODE)


def gpt2_like() -> PreTrainedTokenizerFast:
    """A byte-level BPE with GPT-2's pre-tokenizer (which glues a line end to the next indentation), trained
    on code with blank lines, trailing spaces and comments so that such merges exist."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [CODE, TRICKY, CODE.replace("\n", "  \n"), CODE.replace("\n    ", "\n\n    ")]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_a_prompts_final_line_end_is_healed_only_for_unit_pieces(tokenizer):
    prompt = 'def f(x):\n    """Twice x."""\n'
    assert prompt_to_continue(gpt2_like(), prompt) == ('def f(x):\n    """Twice x."""', "\n")
    assert prompt_to_continue(gpt2_like(), "x = 1  \n\n") == ("x = 1", "  \n\n")
    assert prompt_to_continue(gpt2_like(), "def f(x):") == ("def f(x):", "")  # no line end to heal
    assert prompt_to_continue(tokenizer, prompt) == (prompt, "")  # line pieces: the prompt as it is


def test_unit_pieces_are_the_whole_text_encoding_and_survive_an_inserted_comment():
    """For a tokenizer that merges across line ends, pieces are units (cut after each line's last
    non-blank character); their ids joined are the tokenizer's whole-text ids, and a comment piece
    inserted before unit k leaves every code piece's ids unchanged."""
    tok = gpt2_like()
    assert not line_level(tok) and any("\n" in t and t != "\n" for t in map(tok.decode, ([i] for i in range(len(tok)))))
    for text in (CODE, TRICKY, CODE.replace("\n", "  \n"), CODE.replace("\n    ", "\n\n    ")):
        assert pieces(tok, text) == split_units(text) and "".join(split_units(text)) == text
        assert encode(tok, text, False) == tok(text)["input_ids"]
        units = split_units(text)
        for k in range(1, len(units)):
            last_line = units[k].split("\n")[-1]
            indent = last_line[: len(last_line) - len(last_line.lstrip())]
            annotated = "".join([*units[:k], f"\n{indent}# comment", *units[k:]])
            assert encode(tok, annotated, False) == tok(annotated)["input_ids"]
            ids = encode_pieces(tok, annotated)
            assert ids[:k] + ids[k + 1:] == encode_pieces(tok, text)


def _manual_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(x_{t+1} | x_≤t) of one unpadded sequence, straight from the logits; shape (T-1,)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)  # (T, V)
    return torch.stack([logp[t, ids[t + 1]] for t in range(len(ids) - 1)])


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_logprobs_matches_manual_per_sequence(sharp_model, tokenizer, side):
    texts = [CODE, "x = 1\n", TRICKY]
    seqs = [encode(tokenizer, t) for t in texts]
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    rows = [[pad] * (width - len(s)) + s if side == "left" else s + [pad] * (width - len(s)) for s in seqs]
    masks = [[int(i >= width - len(s) if side == "left" else i < len(s)) for i in range(width)] for s in seqs]
    with torch.no_grad():
        got = token_logprobs(sharp_model, torch.tensor(rows), torch.tensor(masks))  # (B, T-1)
        assert got.shape == (3, width - 1)
        for b, s in enumerate(seqs):
            want = _manual_logprobs(sharp_model, s)
            real = got[b, width - len(s):] if side == "left" else got[b, : len(s) - 1]
            torch.testing.assert_close(real, want, atol=1e-5, rtol=0)
            assert want.std() > 0.5  # the comparison is discriminative
            assert got[b].count_nonzero() == len(s) - 1  # padding contributes exactly 0


def test_token_logprobs_is_differentiable(sharp_model, tokenizer):
    ids = torch.tensor([encode(tokenizer, CODE)])
    token_logprobs(sharp_model, ids, torch.ones_like(ids)).sum().backward()
    assert sharp_model.lm_head.weight.grad.abs().sum() > 0
    sharp_model.zero_grad()


EXAMPLES = [
    ("def f(xs):\n", [Segment("    # keep the evens\n", False),
                     Segment("    ys = [x for x in xs if x % 2 == 0]\n", True),
                     Segment("    return ys\n", True)]),
    ("Sum xs.\n", [Segment("    return sum(xs)\n", True)]),
    ("def g(a, b):\n", [Segment("    # clamp\n", False), Segment("    a = max(a, 0)\n", True),
                        Segment("    # then add\n", False), Segment("    return a + b  # café\n", True)]),
]


def _manual_segment_sums(model, tokenizer, prompt: str, segments) -> list[float]:
    """Per-segment log-likelihood from one unpadded pass over the joined text."""
    ids = encode(tokenizer, prompt + "".join(text for text, _ in segments))
    logp = _manual_logprobs(model, ids)  # (T-1,): logp[t-1] scores token t
    start, sums = len(encode(tokenizer, prompt)), []
    for text, _ in segments:
        n = len(encode(tokenizer, text, add_special_tokens=False))
        sums.append(logp[start - 1: start - 1 + n].sum().item())
        start += n
    assert start == len(ids)
    return sums


@pytest.mark.parametrize("side", ["left", "right"])
def test_scored_segment_sums_with_padding(sharp_model, tokenizer, side):
    with torch.no_grad():
        per_segment = segment_logprobs(sharp_model, tokenizer, EXAMPLES, padding_side=side, batch_size=2)
        scores = score_segments(sharp_model, tokenizer, EXAMPLES, padding_side=side, batch_size=2)
        manual = [_manual_segment_sums(sharp_model, tokenizer, p, segs) for p, segs in EXAMPLES]
    assert per_segment.shape == (3, 4) and scores.shape == (3,)
    for b, (_, segments) in enumerate(EXAMPLES):
        n = len(segments)
        want_segments = torch.tensor(manual[b], dtype=per_segment.dtype)
        torch.testing.assert_close(per_segment[b, :n], want_segments, atol=1e-5, rtol=0)
        assert per_segment[b, n:].eq(0).all()
        want = sum(v for v, (_, scored) in zip(manual[b], segments, strict=True) if scored)
        assert abs(scores[b].item() - want) < 1e-5
    # the unscored rationale really is left out: the two sums differ by its log-likelihood
    assert abs(per_segment[0, :3].sum().item() - scores[0].item() - manual[0][0]) < 1e-5


def test_save_pretrained_replaces_atomically(model_dir, tokenizer, tmp_path):
    model, _ = load_pretrained(model_dir)
    out = save_pretrained(model, tokenizer, tmp_path / "m", {"note.txt": "first"})
    save_pretrained(model, tokenizer, out, {"note.txt": "second"})
    assert (out / "note.txt").read_text() == "second"
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}  # artifacts are for anyone to read
    with pytest.raises(FileNotFoundError):  # a failure mid-write (a file in a missing folder) ...
        save_pretrained(model, tokenizer, out, {"missing/note.txt": "third"})
    assert (out / "note.txt").read_text() == "second"  # ... leaves the previous directory whole
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    reloaded, _ = load_pretrained(out)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_local_path_never_reaches_the_hub(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_pretrained(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="not found"):
        load_pretrained("./runs/typo")
