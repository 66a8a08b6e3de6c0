#!/bin/bash
# The pre-registered fresh-task table (docs/results.md, "Fresh tasks for activation vectors"):
# function vector, residual vector (diff) and soft task vector at their DEFAULT settings on six
# ICL tasks never used in design, then zero-shot, 10-shot ICL (per-query demonstrations) and the
# three vectors on the whole test split, with 95% intervals and paired tests (soft_table.py).
# Resumable: every step writes its file atomically and is skipped when the file exists.
# Usage: [MODEL=smollm2-135m] [TASKS="..."] [FV=1] [TASKVEC=path/to/taskvec] bash benchmarks/fresh_runs.sh [OUT=runs/fresh/smollm2-135m]
# FV=0 skips the function vectors (the model rows of docs/results.md, "Third model").
set -euo pipefail
MODEL=${MODEL:-smollm2-135m}
FV=${FV:-1}
OUT=${1:-runs/fresh/$MODEL}
TASKS=${TASKS:-english-spanish park-country product-company person-instrument conll2003_person choose_first_of_3}
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${TASKVEC:-}" ] && [ -x "$HERE/.venv/bin/taskvec" ]; then TASKVEC="$HERE/.venv/bin/taskvec"; fi
TV=${TASKVEC:-taskvec}
PY=${PYTHON:-$(dirname "$(command -v "$TV" 2>/dev/null || echo python)")/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"

step() {  # step NAME OUTFILE JSONFILE -- command...: run once, time it, keep its JSON
  local name=$1 out=$2 json=$3
  shift 4
  if [ -f "$out" ] && [ -f "$json" ]; then return; fi
  /usr/bin/time -f "%e s wall, %U s user" -o "$json.time" "$@" > "$json.tmp"
  mv "$json.tmp" "$json"
  echo "  $name: $(cat "$json.time")"
}

for t in $TASKS; do
  echo "$t $(date -u +%H:%M:%S)"
  fv=()
  if [ "$FV" = 1 ]; then
    step fv "$OUT/$t-fv.safetensors" "$OUT/$t-fv.json" -- \
      $TV fv extract --model "$MODEL" --task "$t" --out "$OUT/$t-fv.safetensors" --no-progress --json
    fv=(--fv "$OUT/$t-fv.safetensors")
  fi
  step residual "$OUT/$t-rv.safetensors" "$OUT/$t-rv.json" -- \
    $TV residual extract --model "$MODEL" --task "$t" --out "$OUT/$t-rv.safetensors" --no-progress --json
  step soft "$OUT/$t-soft.safetensors" "$OUT/$t-soft.json" -- \
    $TV soft train --model "$MODEL" --task "$t" --out "$OUT/$t-soft.safetensors" --no-progress --json
  step compare "$OUT/$t-compare.json" "$OUT/$t-compare.json" -- \
    $TV soft compare --model "$MODEL" --task "$t" "${fv[@]}" \
    --residual "$OUT/$t-rv.safetensors" --soft "$OUT/$t-soft.safetensors" --shots 10 --no-progress --json
done
"$PY" "$HERE/benchmarks/soft_table.py" "$OUT"/*-compare.json | tee "$OUT/table.md"
