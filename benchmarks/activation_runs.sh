#!/bin/bash
# Function vectors and residual (diff and replace) vectors at the default settings on the 6 ICL
# tasks, evaluated next to zero-shot, 10-shot ICL and shuffled-label ICL on at most 200 held-out
# test examples; then the table of docs/results.md.
# Usage: [MODEL=smollm2-135m] [TASKS="antonym ..."] [FV=1] bash benchmarks/activation_runs.sh [OUT=runs/activations]
# FV=0 skips the function vectors.
set -euo pipefail
OUT=${1:-runs/activations}
MODEL=${MODEL:-smollm2-135m}
TASKS=${TASKS:-antonym capitalize country-capital english-french present-past singular-plural}
FV=${FV:-1}
mkdir -p "$OUT"
for t in $TASKS; do
  if [ "$FV" = 1 ] && [ ! -f "$OUT/$t-fv.safetensors" ]; then
    /usr/bin/time -f "%e s" -o "$OUT/$t-fv.time" \
      taskvec fv extract --model "$MODEL" --task "$t" --out "$OUT/$t-fv.safetensors" --plot-ie "$OUT/$t-ie.png" \
      --plot-layers "$OUT/$t-fv-layers.png" --no-progress --json > "$OUT/$t-fv.json"
  fi
  for mode in diff replace; do
    if [ ! -f "$OUT/$t-$mode.safetensors" ]; then
      /usr/bin/time -f "%e s" -o "$OUT/$t-$mode.time" \
        taskvec residual extract --model "$MODEL" --task "$t" --mode "$mode" --out "$OUT/$t-$mode.safetensors" \
        --plot-layers "$OUT/$t-$mode-layers.png" --no-progress --json > "$OUT/$t-$mode.json"
    fi
  done
  vecs=("$OUT/$t-diff.safetensors" "$OUT/$t-replace.safetensors")
  [ "$FV" = 1 ] && vecs+=("$OUT/$t-fv.safetensors")
  if [ ! -f "$OUT/$t-eval.json" ]; then
    taskvec residual eval --model "$MODEL" --vector "${vecs[@]}" --task "$t" --limit 200 --no-progress --json \
      > "$OUT/$t-eval.json.tmp" && mv "$OUT/$t-eval.json.tmp" "$OUT/$t-eval.json"
  fi
  echo "$t done $(date)"
done
python benchmarks/activation_table.py "$OUT"/*-eval.json
