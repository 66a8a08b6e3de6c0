"""Paired differences of every basis addition vs the full collection, from the basis report cache.

Usage: python benchmarks/basis_paired_ci.py [benchmarks/results/collection/lora/basis_report]

For each (method, M) and each addition (taskvec's, the source's): pooled accuracy, its paired
difference from task arithmetic on the same examples with a 95% normal-approximation interval,
and the kept fraction of the full collection's pooled accuracy with the interval's lower end.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def pooled(result: dict, tasks: list[str]) -> list[int]:
    return [c for t in tasks for c in result["tasks"][t]["correct"]]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d = Path(argv[0] if argv else "runs/collection/basis_report")
    full = json.loads((d / "full.json").read_text())
    tasks = list(full["tasks"])
    fc = pooled(full, tasks)
    n = len(fc)
    fa = sum(fc) / n
    print(f"full {fa:.3f} n={n}")
    for m in ("pca", "autoencoder", "random", "random_sample"):
        for big_m in (2, 4, 8):
            p = d / f"{m}-m{big_m}.json"
            if not p.exists():
                continue
            r = json.loads(p.read_text())
            if r.get("key", {}).get("format") != 2:
                continue
            for kind in ("addition", "source_addition"):
                c = pooled(r[kind], tasks)
                a = sum(c) / n
                b = sum(1 for x, y in zip(c, fc) if x and not y)
                cc = sum(1 for x, y in zip(c, fc) if y and not x)
                diff = (b - cc) / n
                se = math.sqrt(max((b + cc) - (b - cc) ** 2 / n, 0)) / n
                lo, hi = diff - 1.96 * se, diff + 1.96 * se
                print(f"{m} M={big_m} {kind:16s} acc {a:.3f} diff {diff:+.3f} [{lo:+.3f}, {hi:+.3f}]  "
                      f"kept(pooled) {a / fa:.1%} lower {(fa + lo) / fa:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
