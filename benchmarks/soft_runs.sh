#!/bin/bash
# Soft task vectors on the 6 ICL tasks + SST-2, then one comparison table (docs/results.md).
# Usage: bash benchmarks/soft_runs.sh [OUT=runs/soft] [FV_DIR=runs/fv] [COLLECTION=runs/collection]
# Reduced settings for a 2-core CPU: 100 training steps, 50 ICL prompts for the head means,
# 100 held-out test examples per task. FV/residual files come from `taskvec fv extract` /
# `taskvec residual extract` (docs/activations.md); the SST-2 LoRA vector from build_collection.py.
set -euo pipefail
OUT=${1:-runs/soft}; FV=${2:-runs/fv}; COLL=${3:-runs/collection}
mkdir -p "$OUT"
for t in antonym capitalize country-capital english-french present-past singular-plural sst2; do
  if [ ! -f "$OUT/$t.safetensors" ]; then
    taskvec soft train --task "$t" --out "$OUT/$t.safetensors" --steps 100 --n-prompts 50 --val-limit 50 \
      --no-progress --json > "$OUT/$t-train.json"
  fi
  extra=()
  [ -f "$FV/$t-fv.safetensors" ] && extra+=(--fv "$FV/$t-fv.safetensors")
  [ -f "$FV/$t-rv.safetensors" ] && extra+=(--residual "$FV/$t-rv.safetensors")
  [ -f "$COLL/$t.safetensors" ] && extra+=(--lora "$COLL/$t.safetensors")
  if [ ! -f "$OUT/$t-compare.json" ]; then
    taskvec soft compare --task "$t" --soft "$OUT/$t.safetensors" "${extra[@]}" --limit 100 --shots 5,10 \
      --no-progress --json > "$OUT/$t-compare.json.tmp" && mv "$OUT/$t-compare.json.tmp" "$OUT/$t-compare.json"
  fi
  echo "$t done $(date)"
done
python benchmarks/soft_table.py "$OUT"/*-compare.json
