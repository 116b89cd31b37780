"""What line-by-line encoding costs a pretrained model: negative log-likelihood per character of MBPP
reference solutions, with the tokenizer's own whole-text ids (what `models.encode` gives for it, in unit
pieces) and with every line encoded on its own (what ra3 did before unit pieces, and still does for its
own tokenizers, where the two agree). Same characters both ways; a token counts for the solution when its
first character is the solution's.

    python scripts/tokenisation_cost.py --model runs/models/smollm2-135m --limit 200
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from ra3.benchmarks import load_humaneval, load_mbpp
from ra3.models import encode, load_pretrained, pad_rows, special_prefix, split_lines, token_logprobs


def encodings(tok, prompt: str, code: str) -> dict[str, tuple[list[int], list[bool]]]:
    """{way: (ids, whether each id is a solution token)} for the whole text and for its lines alone."""
    text, start = prompt + code, len(prompt)
    whole = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    head = special_prefix(tok)
    ways = {"whole text": (head + whole["input_ids"], [False] * len(head) + [a >= start for a, _ in whole["offset_mapping"]])}
    ids, is_code, offset = list(head), [False] * len(head), 0
    for line in split_lines(text):
        line_ids = tok(line, add_special_tokens=False)["input_ids"]
        ids += line_ids
        is_code += [offset >= start] * len(line_ids)
        offset += len(line)
    ways["line by line"] = (ids, is_code)
    assert ways["whole text"][0] == encode(tok, text), "models.encode is not the whole-text encoding here"
    return ways


@torch.no_grad()
def nll_per_char(model, tok, problems, batch: int = 8) -> dict[str, list[float]]:
    """Per way, each solution's NLL (nats) per character."""
    out: dict[str, list[float]] = {}
    for i in range(0, len(problems), batch):
        chunk = problems[i:i + batch]
        per = [encodings(tok, p.prompt, p.metadata["canonical_solution"]) for p in chunk]
        for way in per[0]:
            rows = [e[way][0] for e in per]
            ids = pad_rows(rows, tok.pad_token_id or 0)
            mask = pad_rows([[1] * len(r) for r in rows], 0)
            logp = token_logprobs(model, ids, mask)  # (b, T-1): logp[:, j-1] scores token j
            for b, (e, p) in enumerate(zip(per, chunk, strict=True)):
                code = torch.tensor(e[way][1][1:] + [False] * (ids.shape[1] - len(e[way][1])))
                out.setdefault(way, []).append(-logp[b][code].sum().item() / len(p.metadata["canonical_solution"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--limit", type=int, default=200, help="MBPP train solutions (ids 601-974) to score")
    args = parser.parse_args()
    model, tok = load_pretrained(args.model, dtype=torch.float32)
    texts = [t for p in load_mbpp(split="all") + load_humaneval()
             for t in (p.prompt, p.prompt + p.metadata["canonical_solution"])]
    same = sum(encode(tok, t, False) == tok(t, add_special_tokens=False)["input_ids"] for t in texts)
    print(f"models.encode (unit pieces) = the tokenizer's whole-text ids for {same} of {len(texts)} MBPP and "
          "HumanEval prompts and prompt + solution texts")
    problems = load_mbpp(split="train")[:args.limit]
    result = nll_per_char(model.eval(), tok, problems)
    agree = sum(encodings(tok, p.prompt, p.metadata["canonical_solution"])["whole text"][0]
                == encodings(tok, p.prompt, p.metadata["canonical_solution"])["line by line"][0] for p in problems)
    print(f"{len(problems)} MBPP train solutions; line-by-line ids equal the whole-text ids for {agree}")
    for way, values in result.items():
        print(f"{way}: {statistics.fmean(values):.4f} nats/char (median {statistics.median(values):.4f})")
    cost = [b - a for a, b in zip(result["whole text"], result["line by line"], strict=True)]
    print(f"line by line costs {statistics.fmean(cost):+.4f} nats/char (± {statistics.stdev(cost) / math.sqrt(len(cost)):.4f} "
          f"s.e.), worse on {sum(c > 0 for c in cost)} of {len(cost)} solutions")


if __name__ == "__main__":
    main()
