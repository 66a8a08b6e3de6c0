"""Markdown table from `taskvec soft compare --json` outputs: python benchmarks/soft_table.py runs/soft/*-compare.json

One row per task: zero-shot, 5-shot and 10-shot ICL, function vector, residual vector, soft task
vector and LoRA weight-space vector (where the file gave one), all first-token accuracy on the same
held-out examples; then the mean over tasks of each column (over the tasks that have it) and the
parameter counts.
"""

from __future__ import annotations

import json
import sys

COLUMNS = (("zero-shot", "zero-shot"), ("5-shot ICL", "5-shot"), ("10-shot ICL", "10-shot"),
           ("function_vector", "function vector"), ("residual_vector", "residual vector"),
           ("soft_task_vector", "soft task vector"), ("task_vector", "LoRA vector"))


def cells(rows: list[dict]) -> dict[str, dict]:
    """Column key -> row (prompt rows by method name, vector rows by kind)."""
    out = {}
    for r in rows:
        key = r["method"] if r.get("kind") == "prompt" else r.get("kind", r["method"])
        out.setdefault(key, r)
    return out


def main(paths: list[str]) -> None:
    table = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            r = json.load(fh)
        table.append((r["task"], r["rows"][0]["n"], cells(r["rows"])))
    heads = [h for _, h in COLUMNS]
    print("| task | n (test) | " + " | ".join(heads) + " |")
    print("|---|---:|" + "---:|" * len(heads))
    for task, n, c in table:
        vals = [f"{c[k]['accuracy']:.3f}" if k in c else "-" for k, _ in COLUMNS]
        print(f"| {task} | {n} | " + " | ".join(vals) + " |")
    means = []
    for k, _ in COLUMNS:
        xs = [c[k]["accuracy"] for _, _, c in table if k in c]
        means.append(f"**{sum(xs) / len(xs):.3f}** ({len(xs)})" if xs else "-")
    print("| **mean** (tasks) | | " + " | ".join(means) + " |")
    params = {}
    for _, _, c in table:
        for k, h in COLUMNS:
            if k in c and c[k].get("params"):
                params[h] = c[k]["params"]
    if params:
        print("\nParameters: " + ", ".join(f"{h} {v:,}" for h, v in params.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
