"""Models: tiny Llama init, load/save of any HF causal LM, line-level encoding, teacher-forced scoring.

A component (imported by stages, never importing one). Every stage that turns text into token ids or
scores tokens does it here, so that training, the E-step's reward and generation agree on one
tokenisation and one definition of log p_θ.

Encoding in pieces. RA3's likelihood term compares the expert code's tokens with and without rationales,
so a text is encoded as a sequence of *pieces* whose ids depend on the piece alone: inserting a
rationale piece never changes the ids of the code around it. Where a piece ends depends on the tokenizer
(`pieces`), chosen so that the pieces' ids, concatenated, are the tokenizer's own whole-text encoding:
- Line pieces: every line with its "\\n". The tokenizer that `train_tokenizer` builds makes every "\\n" a
  token of its own, so no token crosses a line end (`line_level`).
- Unit pieces, for pretrained BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen) whose pre-tokenizer glues a
  line end to the next line's indentation ('):', '\\n   ', ' y'): a piece ends right after the last
  non-blank character of a line, so each piece is "the blank run before a line (trailing spaces, line
  ends, blank lines, its indentation) + the line's text". These tokenizers split a text before every
  whitespace run, so the pieces' ids are the whole-text ids (974 of 974 MBPP solutions, BENCHMARKS.md).
`encode` is the concatenation, and the one text -> ids map of training, scoring and generation.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class Preset:
    """Shape of a tiny Llama; head_dim is 64 throughout, a size every vLLM attention backend supports."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


# Named after the parameter count at vocab_size 1024 (untied embeddings): 2.16M, 5.64M, 25.96M, 100.68M.
# `2m` is the shape the feasibility study found to work on CPU (world-notes.md).
PRESETS: dict[str, Preset] = {
    "2m": Preset(hidden=192, layers=4, heads=3, intermediate=512),
    "6m": Preset(hidden=256, layers=6, heads=4, intermediate=768),
    "25m": Preset(hidden=512, layers=8, heads=8, intermediate=1344),
    "100m": Preset(hidden=768, layers=12, heads=12, intermediate=2560),
}


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024,
                    max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`, with <|bos|>, <|eos|>, <|pad|> (ids 0, 1, 2).

    Pre-tokenization first isolates every "\\n" (so no token crosses a line end and each newline is exactly
    one token), then applies GPT-2's byte-level split. All 256 bytes are in the vocabulary, so any
    unicode text round-trips (`decode(encode(x)) == x`); there is no normalizer, for the same reason.
    Encoding a text prepends <|bos|>, as Llama tokenizers do, so HF and vLLM prompts match training.
    The vocabulary can come out smaller than `vocab_size` when the corpus has too few distinct pairs.
    """
    n_reserved = 256 + 3
    if vocab_size <= n_reserved:
        raise ValueError(f"vocab_size={vocab_size} must exceed {n_reserved} (256 bytes + 3 special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=max_length)


def split_lines(text: str) -> list[str]:
    """Lines of `text`, each keeping its "\\n" (only "\\n" ends a line); "".join(result) == text."""
    return re.findall(r"[^\n]*\n|[^\n]+", text)


UNIT_END = re.compile(r"\S(?=[ \t]*\n)")  # the last non-blank character of a line: a unit piece ends after it
# A text with what unit pieces must get right: trailing spaces, a blank line, indentation, a bracket
# continued on the next line, a comment.
_PROBE = "def f(x):  \n    if x:\n\n        return [x,\n  1]  # one\n\treturn 0\n"


def split_units(text: str) -> list[str]:
    """`text` cut right after the last non-blank character of every line: each piece but the first starts
    with the blank run before a line's text (its line end and indentation); "".join(result) == text."""
    cuts = [0, *(m.end() for m in UNIT_END.finditer(text)), len(text)]
    return [text[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def unit_cut(prompt: str, following: str = "\n") -> int:
    """Where the unit piece holding the end of `prompt` ends when `following` comes after it: right after the
    prompt's last non-blank character if a line end comes next (the blank run then opens the next piece),
    else at the prompt's end."""
    core = len(prompt.rstrip())
    return core if core and UNIT_END.match(prompt + following, core - 1) else len(prompt)


def prompt_to_continue(tokenizer: PreTrainedTokenizerBase, prompt: str) -> tuple[str, str]:
    """(head, tail): the text to feed the model so that it continues `prompt`, and the blank run it must
    write first (token healing). With unit pieces a prompt's trailing line end is one token with the next
    line's indentation in every text the model learnt from ('\\n   '), so ending the ids at a lone '\\n'
    leaves it where it rarely was; it continues from the last non-blank character instead, and the
    completion is what it writes after `tail`. Line pieces: (prompt, "")."""
    cut = len(prompt) if line_level(tokenizer) else unit_cut(prompt)
    return (prompt[:cut], prompt[cut:]) if "\n" in prompt[cut:] else (prompt, "")


@functools.cache
def line_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` never merges across a line end (then pieces are lines, else units)."""
    return encodes_line_by_line(tokenizer, _PROBE)


def pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str]:
    """`text` cut where `tokenizer` never merges: lines (`line_level`), else units (`split_units`)."""
    return split_lines(text) if line_level(tokenizer) else split_units(text)


def encode_pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[list[int]]:
    """Token ids of each piece of `text`, each piece encoded on its own (no special tokens)."""
    parts = pieces(tokenizer, text)
    return tokenizer(parts, add_special_tokens=False)["input_ids"] if parts else []


def encode(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = True) -> list[int]:
    """The project's one text → ids map: the tokenizer's special prefix (e.g. BOS) + the pieces' ids."""
    prefix = special_prefix(tokenizer) if add_special_tokens else []
    return prefix + [i for piece in encode_pieces(tokenizer, text) for i in piece]


def encodes_as_a_whole(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether `encode` gives the tokenizer's own whole-text ids for `text` (what TRL and vLLM feed the
    model when they are handed text)."""
    return encode(tokenizer, text, False) == tokenizer(text, add_special_tokens=False)["input_ids"]


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before any text, as HF and vLLM do (BOS for Llama; none for Qwen)."""
    return tokenizer("", add_special_tokens=True)["input_ids"]


def encodes_line_by_line(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether the tokenizer's whole-text encoding of `text` equals its lines' encodings joined (no token
    crosses a line end). Always true for `train_tokenizer`'s tokenizers; false for GPT-2-like BPEs."""
    lines = split_lines(text)
    joined = [i for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for i in ids] if lines else []
    return tokenizer(text, add_special_tokens=False)["input_ids"] == joined


# ---------------------------------------------------------------------------------------------------------
# Model init, load and save


def tiny_config(preset: str, tokenizer: PreTrainedTokenizerBase, max_positions: int = 2048) -> LlamaConfig:
    """A LlamaConfig for a size preset, with the vocabulary and special ids of `tokenizer`."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}' (valid: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=p.hidden, num_hidden_layers=p.layers,
                       num_attention_heads=p.heads, num_key_value_heads=p.heads,
                       intermediate_size=p.intermediate, max_position_embeddings=max_positions,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def init_tiny_model(preset: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0,
                    max_positions: int = 2048) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM of the given preset; the same seed gives the same weights."""
    config = tiny_config(preset, tokenizer, max_positions)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG stream
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (embeddings and LM head included)."""
    return sum(p.numel() for p in model.parameters())


def _resolve(name_or_path: str | Path) -> tuple[str, bool]:
    """(source, is_local): an existing path is local (the hub is never asked); a missing path is an error."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path), True
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"model directory not found: {text} (a hub id looks like 'owner/name')")
    return text, False


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """AutoTokenizer by local path or hub id; a missing pad token is set to EOS so batches can be padded."""
    source, local = _resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(name_or_path: str | Path, *, dtype: str | torch.dtype = "auto",
                    device: str | torch.device | None = None,
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of any HF causal LM, by local path (never touching the hub) or hub id."""
    source, local = _resolve(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local)
    if device is not None:
        model.to(device)
    return model, load_tokenizer(name_or_path)


def _portable_tokenizer_class(config_file: Path) -> None:
    """Name transformers-5's `TokenizersBackend` by its alias `PreTrainedTokenizerFast`, which transformers 4
    (pinned by vLLM) can load too; transformers 5 maps the alias back to the same class."""
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                    extra_files: Mapping[str, str] | None = None) -> Path:
    """Write model + tokenizer (+ `extra_files`: name → text) as one HF directory, atomically.

    Everything is written to a temporary directory beside `out_dir`, which is then renamed into place,
    so a killed run leaves either the previous directory or the complete new one, never a partial one.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_model_dir(staging, tokenizer, out, extra_files)


def publish_model_dir(staging: str | Path, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                      extra_files: Mapping[str, str] | None = None) -> Path:
    """Complete a directory that holds saved weights (tokenizer, extra files) and rename it to `out_dir`.

    Trainers save weights themselves (FSDP/DeepSpeed gather shards across ranks), into `staging`; this
    finishes the directory and swaps it into place, so readers never see a partial model directory.
    """
    staging, out = Path(staging), Path(out_dir)
    try:
        tokenizer.save_pretrained(staging)
        _portable_tokenizer_class(staging / "tokenizer_config.json")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; a model directory is for everyone to read
        for path in staging.iterdir():  # and transformers writes its weights owner-only
            if path.is_file():
                os.chmod(path, 0o644)
        old = staging.with_suffix(".old")
        if out.exists():
            out.rename(old)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# Teacher-forced scoring (the one definition of log p_θ used by every stage)


def causal_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """logits[b, t] = the model's next-token logits after x_≤t, in at least float32; shape (B, T, V).

    Padding may sit on either side (left-padded prompts, right-padded completions). Position ids count
    real tokens only, so a padded row gets exactly its unpadded values (HF would number pads too).
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits  # (B, T, V)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))  # a bf16 log-softmax keeps ~3 digits


def token_logprobs(model: PreTrainedModel, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """out[b, t] = log p_θ(x_{t+1} | x_≤t) for each row b; shape (B, T-1).

    Entries whose target or context token is padding are 0, so sums over a row are safe.
    Gradients flow through; wrap in `torch.no_grad()` to score a frozen model.
    """
    logits = causal_logits(model, input_ids, attention_mask)[:, :-1]  # (B, T-1, V)
    targets = input_ids[:, 1:]  # (B, T-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (B, T-1)
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # (B, T-1)
    return logp.masked_fill(~valid, 0.0)


class Segment(NamedTuple):
    """A piece of a sequence after its prompt: `scored` pieces count in the likelihood (expert code);
    the others are conditioned on only (rationale comments). Plain (text, bool) tuples work too."""

    text: str
    scored: bool


Example = tuple[str, Sequence[Segment]]  # (prompt, segments); the prompt is conditioned on, never scored


def _encode_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[int]]:
    """(ids, segment index of each id): the prompt (and BOS) get -1, segment k's tokens get k.

    Each segment is encoded on its own, so its first token starts a fresh token: a boundary in the middle
    of a line scores what generation would have produced after that prefix. At line ends (the RA3 format)
    this equals `encode` of the joined text.
    """
    prompt, segments = example
    ids = encode(tokenizer, prompt)
    seg = [-1] * len(ids)
    for k, (text, _) in enumerate(segments):
        piece = encode(tokenizer, text, add_special_tokens=False)
        ids += piece
        seg += [k] * len(piece)
    return ids, seg


def pad_rows(rows: Sequence[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """Stack lists of ints into (B, T_max), filling with `value` on the left or right."""
    width = max((len(r) for r in rows), default=0)
    fills = [[value] * (width - len(r)) for r in rows]
    padded = [f + r if side == "left" else r + f for r, f in zip(rows, fills, strict=True)]
    return torch.tensor(padded, dtype=torch.long)


def segment_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     examples: Sequence[Example], *, padding_side: str = "right",
                     batch_size: int = 16) -> torch.Tensor:
    """out[b, k] = Σ_{t ∈ segment k of example b} log p_θ(x_t | x_<t); shape (B, S_max), 0 past the last.

    One teacher-forced forward pass per batch of `batch_size` examples. Per-segment sums let the E-step
    credit a rationale with the likelihood of the lines it governs (method.md §4). A token at position 0
    has no context and is not scored (only possible with an empty prompt and no BOS).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r} is not one of ['left', 'right']")
    n_segments = max((len(segments) for _, segments in examples), default=0)
    out = []
    for start in range(0, len(examples), batch_size):
        rows = [_encode_example(tokenizer, ex) for ex in examples[start:start + batch_size]]
        ids = pad_rows([r[0] for r in rows], tokenizer.pad_token_id, padding_side).to(model.device)  # (b, T)
        mask = pad_rows([[1] * len(r[0]) for r in rows], 0, padding_side).to(model.device)  # (b, T)
        seg = pad_rows([r[1] for r in rows], -1, padding_side).to(model.device)  # (b, T)
        logp = token_logprobs(model, ids, mask)  # (b, T-1)
        # Column 0 collects the prompt's and the padding's log-probs and is dropped.
        sums = logp.new_zeros(len(rows), n_segments + 1)  # (b, S+1)
        sums.scatter_add_(1, seg[:, 1:] + 1, logp)
        out.append(sums[:, 1:])
    return torch.cat(out) if out else torch.zeros(0, n_segments)


def score_segments(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], *,
                   padding_side: str = "right", batch_size: int = 16) -> torch.Tensor:
    """Σ_t log p_θ(a_t | x, a_<t, z_≤t) over the scored segments of each example; shape (B,).

    The likelihood term of R(z) (method.md §3-4): expert code tokens are scored, rationale tokens and the
    prompt are conditioned on but not scored.
    """
    per_segment = segment_logprobs(model, tokenizer, examples, padding_side=padding_side,
                                   batch_size=batch_size)  # (B, S)
    scored = pad_rows([[int(s) for _, s in segments] for _, segments in examples], 0, "right")  # (B, S)
    return (per_segment * scored.to(per_segment.device)).sum(-1)
