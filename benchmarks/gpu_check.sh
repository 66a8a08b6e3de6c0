#!/usr/bin/env bash
# The GPU path in one prepared script (at most ~10 minutes on one GPU):
#   1. the fast test suite with the CUDA tests enabled (tests marked `cuda`; skipped without CUDA),
#   2. benchmarks/gpu_check.py: fine-tune + extract + eval on cuda in float32 and bfloat16,
#      streaming apply, a merge, function-vector extraction and soft training -> one JSON.
# Without CUDA both parts take their skip path and the script exits 0 (CI runs it that way).
# Usage: bash benchmarks/gpu_check.sh [OUT_JSON]   (PY=path/to/python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/gpu_check.json}
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  timeout 360 "$PY" -m pytest -q -m "not slow" -p no:cacheprovider tests/   # CUDA tests included
else
  echo "gpu_check: no CUDA device; the CUDA tests skip:"
  "$PY" -m pytest -q -m "cuda" -p no:cacheprovider tests/test_cuda.py -rs | tail -3
fi
timeout 480 "$PY" benchmarks/gpu_check.py --out "$OUT"
