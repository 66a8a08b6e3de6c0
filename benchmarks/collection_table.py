"""Markdown table of a (possibly unfinished) collection: python benchmarks/collection_table.py runs/collection-v2-shared

Reads the per-task rows ``<dir>/<task>.json`` that build_collection.py writes as each task
finishes, so it works while the collection is still being built. One row per task: n, zero-shot
and fine-tuned accuracy with 95% Wilson intervals, the exact McNemar test of fine-tuned vs
zero-shot on the same examples, the majority-class rate of the evaluated examples (the best a
constant answer can score, chosen in hindsight) and whether the fine-tuned interval's lower end
clears it, the early-stopping step (best / last) and the training time; then the tasks a merge
report would keep (significantly above zero-shot) and those it drops.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def task_rows(cdir: Path) -> list[dict]:
    """The finished task rows of a collection directory, in file-name order."""
    rows = []
    for p in sorted(cdir.glob("*.json")):
        if p.name == "collection.json":
            continue
        row = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(row, dict) and "finetuned_accuracy" in row:
            rows.append(row)
    return rows


def ci(acc: float, bounds: list[float] | None) -> str:
    """``0.812 [0.785, 0.837]`` (the interval where the row has one)."""
    return f"{acc:.3f} [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else f"{acc:.3f}"


def stopping(row: dict) -> str:
    """``best 350 / last 550`` from the row's early-stopping record, ``-`` without one."""
    es = row.get("early_stopping")
    if not es:
        return "-"
    return f"{es['best_step']} / {es['last_step']}" + ("" if es.get("stopped_early") else " (step limit)")


def majority_rate(row: dict) -> float | None:
    """Share of the most frequent label among the row's evaluated examples (None when the task is
    not a registered one or its rows carry no ``label``)."""
    from taskvec.errors import TaskVecError
    from taskvec.tasks import get_task

    try:
        examples = get_task(row["task"]).load(row["split"], (row.get("eval") or {}).get("limit"))
    except (TaskVecError, KeyError, OSError):
        return None
    labels = [e.get("label") for e in examples]
    if not labels or None in labels or len(labels) != row["n"]:
        return None
    return Counter(labels).most_common(1)[0][1] / len(labels)


def majority_cells(row: dict) -> str:
    """``0.693 | yes`` (majority rate, fine-tuned lower bound above it), ``- | -`` when unknown."""
    rate = majority_rate(row)
    if rate is None:
        return "- | -"
    lo = (row.get("finetuned_ci95") or [None])[0]
    return f"{rate:.3f} | {'-' if lo is None else 'yes' if lo > rate else 'no'}"


def table(rows: list[dict]) -> str:
    """The markdown table and the keep / drop lines."""
    out = ["| task | split | n | zero-shot | fine-tuned | difference | ft / zs only | McNemar p | "
           "above zero-shot | majority class | ft above majority | best / last step | train |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    keep, drop, untested = [], [], []
    for r in rows:
        t = r.get("vs_zero_shot") or {}
        above = bool(t.get("above_zero_shot"))
        (untested if not t else keep if above else drop).append(r["task"])
        verdict = "-" if not t else "yes" if above else "no"
        p = "-" if "p_value" not in t else f"{t['p_value']:.2g}"
        diff = 100 * (r["finetuned_accuracy"] - r["zero_shot_accuracy"])
        secs = r.get("train_seconds")
        out.append(
            f"| {r['task']} | {r['split']} | {r['n']} | {ci(r['zero_shot_accuracy'], r.get('zero_shot_ci95'))} | "
            f"{ci(r['finetuned_accuracy'], r.get('finetuned_ci95'))} | {diff:+.1f} | "
            f"{t.get('only_finetuned', '-')} / {t.get('only_zero_shot', '-')} | {p} | "
            f"{verdict} | {majority_cells(r)} | {stopping(r)} | {'-' if secs is None else f'{secs / 60:.1f} min'} |")
    out.append("")
    out.append(f"Significantly above zero-shot (exact McNemar, p < 0.05), merged: {', '.join(keep) or 'none'}.")
    out.append(f"Not significantly above zero-shot, dropped from merging: {', '.join(drop) or 'none'}.")
    if untested:
        out.append(f"No paired test in the row (made before taskvec recorded one): {', '.join(untested)}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="collection_table.py", description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="the collection directory (build_collection.py --out)")
    args = p.parse_args(argv)
    rows = task_rows(args.dir)
    if not rows:
        print(f"collection_table.py: error: no finished task rows in {args.dir}: run build_collection.py first.",
              file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
