"""Markdown table of `taskvec fv eval --json` results: python benchmarks/fv_table.py runs/fv/*-eval.json

Each accuracy carries its 95% Wilson interval (from accuracy and n)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskvec.eval.stats import wilson_of_rate  # noqa: E402


def ci(acc: float, n: int) -> str:
    """``0.xxx [lo, hi]``; ``nan`` stays as it is (no function vector)."""
    if acc != acc:
        return "nan"
    lo, hi = wilson_of_rate(acc, n)
    return f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"


def main(paths: list[str]) -> None:
    rows = []
    for p in paths:
        r = json.load(open(p))
        acc = {row["method"].split(" (")[0]: row for row in r["rows"]}
        fv = next((row for row in r["rows"] if row.get("kind") == "function_vector"), None)
        rows.append((r["task"], acc["zero-shot"]["n"], acc["zero-shot"]["accuracy"],
                     acc["10-shot ICL"]["accuracy"], acc["10-shot shuffled labels"]["accuracy"],
                     fv["accuracy"] if fv else float("nan"), fv.get("layer") if fv else "-"))
    print("| task | n (test) | zero-shot | 10-shot ICL | 10-shot shuffled | function vector | FV layer |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for t, n, z, icl, sh, fv, layer in rows:
        print(f"| {t} | {n} | {ci(z, n)} | {ci(icl, n)} | {ci(sh, n)} | {ci(fv, n)} | {layer} |")
    if rows:
        k = len(rows)
        z, icl, fv = (sum(r[i] for r in rows) / k for i in (2, 3, 5))
        print(f"| **mean** | | {z:.3f} | {icl:.3f} | | {fv:.3f} | |")


if __name__ == "__main__":
    main(sys.argv[1:])
