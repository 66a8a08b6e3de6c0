"""Markdown table from `taskvec soft compare --json` outputs: python benchmarks/soft_table.py runs/soft/*-compare.json

One row per task: zero-shot, 5-shot and 10-shot ICL, function vector, residual vector, soft task
vector and LoRA weight-space vector (where the file gave one), all first-token accuracy on the same
held-out examples; then the mean over tasks of each column (over the tasks that have it) and the
parameter counts.

Every cell shows its 95% Wilson interval (from the row's ``ci95``, or for files saved before
taskvec 0.9 from its accuracy and n). Where the rows carry per-example results (``correct``), a
second table gives the soft vector's paired difference to
the ICL row with most shots per task (exact McNemar) and pooled over all examples of all tasks,
and a third every method's paired difference to zero-shot per task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskvec.eval.stats import mcnemar, wilson, wilson_of_rate  # noqa: E402

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


def fmt(row: dict) -> str:
    """Accuracy, with its 95% interval where the row has one."""
    ci = row.get("ci95") or (wilson_of_rate(row["accuracy"], row["n"]) if row.get("n") else None)
    return f"{row['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{row['accuracy']:.3f}"


def pooled(table: list[tuple[str, int, dict]], key: str) -> str:
    """Micro accuracy over all examples of the tasks that have the column, with its interval."""
    xs = [c[key] for _, _, c in table if key in c and c[key].get("correct") is not None]
    if not xs or len(xs) != sum(1 for _, _, c in table if key in c):
        return "-"
    k, n = sum(sum(r["correct"]) for r in xs), sum(len(r["correct"]) for r in xs)
    lo, hi = wilson(k, n)
    return f"{k / n:.3f} [{lo:.3f}, {hi:.3f}] (n={n})"


def paired_rows(table: list[tuple[str, int, dict]], vec: str = "soft_task_vector") -> list[str]:
    """Per task and pooled: the vector's difference to the ICL row with most shots, McNemar p."""
    out, a_all, b_all = [], [], []
    for task, _, c in table:
        icl = [k for k in c if k.endswith("-shot ICL")]
        if vec not in c or not icl or c[vec].get("correct") is None:
            continue
        ref = max(icl, key=lambda k: int(k.split("-")[0]))
        a, b = [bool(x) for x in c[vec]["correct"]], [bool(x) for x in c[ref]["correct"]]
        t = mcnemar(a, b)
        a_all += a
        b_all += b
        out.append(f"| {task} | {ref} | {t.n} | {100 * (t.a_correct - t.b_correct) / t.n:+.1f} | "
                   f"{t.only_a} / {t.only_b} | {t.p_value:.2g} | {'yes' if t.significant else 'no'} |")
    if a_all:
        t = mcnemar(a_all, b_all)
        out.append(f"| **pooled** | | {t.n} | {100 * (t.a_correct - t.b_correct) / t.n:+.1f} | "
                   f"{t.only_a} / {t.only_b} | {t.p_value:.2g} | {'yes' if t.significant else 'no'} |")
    return out


def vs_zero_shot_rows(table: list[tuple[str, int, dict]]) -> list[str]:
    """Per task: every other column's difference to zero-shot on the same examples, exact McNemar."""
    out = []
    for task, _, c in table:
        zs = c.get("zero-shot")
        if zs is None or zs.get("correct") is None:
            continue
        cells_ = []
        for k, h in COLUMNS:
            if k == "zero-shot" or k not in c or c[k].get("correct") is None:
                continue
            t = mcnemar([bool(x) for x in c[k]["correct"]], [bool(x) for x in zs["correct"]])
            sig = "*" if t.significant and t.a_correct > t.b_correct else ""
            cells_.append(f"{h} {100 * (t.a_correct - t.b_correct) / t.n:+.1f} (p = {t.p_value:.2g}){sig}")
        out.append(f"| {task} | " + "; ".join(cells_) + " |")
    return out


def main(paths: list[str]) -> None:
    table = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            r = json.load(fh)
        table.append((r["task"], r["rows"][0]["n"], cells(r["rows"])))
    cols = [(k, h) for k, h in COLUMNS if any(k in c for _, _, c in table)]
    heads = [h for _, h in cols]
    print("| task | n (test) | " + " | ".join(heads) + " |")
    print("|---|---:|" + "---:|" * len(heads))
    for task, n, c in table:
        vals = [fmt(c[k]) if k in c else "-" for k, _ in cols]
        print(f"| {task} | {n} | " + " | ".join(vals) + " |")
    means = []
    for k, _ in cols:
        xs = [c[k]["accuracy"] for _, _, c in table if k in c]
        means.append(f"**{sum(xs) / len(xs):.3f}** ({len(xs)})" if xs else "-")
    print("| **mean** (tasks) | | " + " | ".join(means) + " |")
    if any(r.get("ci95") for _, _, c in table for r in c.values()):
        print("| **pooled** (all examples) | | " + " | ".join(pooled(table, k) for k, _ in cols) + " |")
    params = {}
    for _, _, c in table:
        for k, h in cols:
            if k in c and c[k].get("params"):
                params[h] = c[k]["params"]
    if params:
        print("\nParameters: " + ", ".join(f"{h} {v:,}" for h, v in params.items()))
    rows = paired_rows(table)
    if rows:
        print("\nSoft task vector vs ICL on the same examples (exact McNemar; difference in points):\n")
        print("| task | against | n | difference | only soft / only ICL | p | significant |")
        print("|---|---|---:|---:|---:|---:|---|")
        print("\n".join(rows))
    rows = vs_zero_shot_rows(table)
    if rows:
        print("\nEach method vs zero-shot on the same examples (points; exact McNemar p; * = significantly "
              "above):\n")
        print("| task | differences |")
        print("|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
