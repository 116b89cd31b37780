#!/usr/bin/env bash
# Issue 3's numbers: held-out pass@1 (greedy, 400 tasks) and pass@10 (n=10, T=0.8, first 100 tasks) of the
# base model and of the NTP-midtrained model for 3 seeds, with each stage's wall time and tokens/s.
#   BASE=runs/base/model WORLD=runs/world OUT=runs/bench-ntp bash scripts/ntp_baseline.sh
# BASE: a pretrained base (configs/pretrain.yaml); WORLD: the `ra3 world` directory it was trained on.
set -euo pipefail
BASE=${BASE:-runs/base/model}; WORLD=${WORLD:-runs/world}; OUT=${OUT:-runs/bench-ntp}; SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$OUT"

evaluate_model() {  # $1 model dir, $2 output prefix
  ra3 generate --model "$1" --benchmark world --data-path "$WORLD" --n 1 --temperature 0 \
    --max-new-tokens 320 --batch-size 32 --out "$2-greedy.jsonl"
  ra3 evaluate --benchmark world --data-path "$WORLD" --samples "$2-greedy.jsonl" --k 1
  ra3 generate --model "$1" --benchmark world --data-path "$WORLD" --n 10 --temperature 0.8 --seed 0 \
    --limit 100 --max-new-tokens 320 --batch-size 32 --out "$2-t08.jsonl"
  ra3 evaluate --benchmark world --data-path "$WORLD" --samples "$2-t08.jsonl" --k 1,10
}

[ -f "$OUT/base-t08_metrics.json" ] || evaluate_model "$BASE" "$OUT/base"
for seed in $SEEDS; do
  ra3 midtrain --method ntp --config configs/ntp.yaml --model "$BASE" --data "$WORLD/demos.jsonl" \
    --out-dir "$OUT/ntp-s$seed" --seed "$seed"
  [ -f "$OUT/ntp-s$seed-t08_metrics.json" ] || evaluate_model "$OUT/ntp-s$seed/model" "$OUT/ntp-s$seed"
done
python scripts/summarize.py "$OUT"
