"""Markdown table of `taskvec residual eval --json` / `taskvec fv eval --json` results, one row per
task, with the issue's two goal numbers for every vector column. Each accuracy carries its 95%
Wilson interval (from accuracy and n: these files keep rates, not per-example results).

    python benchmarks/activation_table.py runs/rv_diff/*-eval.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskvec.eval.stats import wilson_of_rate  # noqa: E402

BASE = ("zero-shot", "10-shot ICL", "10-shot shuffled labels")


def column(row: dict) -> str | None:
    """The table column of a vector row: 'function vector' or 'residual (MODE)'."""
    if row.get("kind") == "function_vector":
        return "function vector"
    if row.get("kind") == "residual_vector":
        return f"residual ({row.get('mode', 'replace')})"
    return None


def main(paths: list[str]) -> None:
    tasks, cols = [], []
    for p in paths:
        r = json.load(open(p))
        cells: dict[str, tuple[float, str]] = {"n": (r["rows"][0]["n"], "")}
        for row in r["rows"]:
            name = column(row)
            if name is None:
                cells[row["method"]] = (row["accuracy"], "")
            else:
                how = f"L{row['layer']}" + (f" x{row['scale']:g}" if row.get("scale", 1) != 1 else "")
                cells[name] = (row["accuracy"], how)
                if name not in cols:
                    cols.append(name)
        tasks.append((r["task"], cells))
    head = ["task", "n (test)", *BASE, *cols]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    def ci(acc: float, n: int) -> str:
        lo, hi = wilson_of_rate(acc, n)
        return f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"

    for t, c in tasks:
        n = c["n"][0]
        vals = [ci(c[b][0], n) if b in c else "-" for b in BASE]
        vecs = [f"{ci(c[k][0], n)} ({c[k][1]})" if k in c else "-" for k in cols]
        print(f"| {t} | {c['n'][0]} | " + " | ".join(vals + vecs) + " |")
    k = len(tasks)
    if not k:
        return
    mean = {name: sum(c[name][0] for _, c in tasks if name in c) / k for name in (*BASE, *cols)}
    print("| **mean** | | " + " | ".join(f"**{mean[b]:.3f}**" for b in (*BASE, *cols)) + " |")
    print()
    for name in cols:
        lift = 100 * (mean[name] - mean["zero-shot"])
        frac = 100 * mean[name] / mean["10-shot ICL"]
        print(f"- {name}: lifts zero-shot by {lift:+.1f} points; {frac:.1f}% of 10-shot ICL")


if __name__ == "__main__":
    main(sys.argv[1:])
