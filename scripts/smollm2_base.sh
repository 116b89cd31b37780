#!/usr/bin/env bash
# Greedy pass@1 of SmolLM2-135M-Instruct (dequantised Q4_1, `ra3 import-model`'s default) on the full
# HumanEval, HumanEval+, sanitized MBPP (test split) and MBPP+, with ra3's generate/evaluate. HumanEval+ is
# judged on the HumanEval samples (same prompts and task ids), as EvalPlus does.
#   bash scripts/smollm2_base.sh [OUT_DIR]      (2-core CPU: see BENCHMARKS.md for the wall time)
set -euo pipefail
out="${1:-runs/smollm2-base}"
model=runs/models/smollm2-135m
ra3 import-model --out-dir "$model"
for bench in humaneval mbpp_sanitized mbpp_plus; do
  /usr/bin/time -f "$bench generate: %e s" ra3 generate --model "$model" --benchmark "$bench" --n 1 \
    --temperature 0 --max-new-tokens 384 --batch-size 16 --out "$out/$bench-greedy.jsonl"
done
for pair in humaneval:humaneval humaneval_plus:humaneval mbpp_sanitized:mbpp_sanitized mbpp_plus:mbpp_plus; do
  bench="${pair%%:*}"; samples="${pair##*:}"
  cp -n "$out/$samples-greedy.jsonl" "$out/$bench-judged.jsonl" 2>/dev/null || true
  ra3 evaluate --benchmark "$bench" --samples "$out/$bench-judged.jsonl" --k 1
done
