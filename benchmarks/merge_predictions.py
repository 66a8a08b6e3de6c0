"""Which answer a merged model gives: confusion matrices of a cached merge-report row.

Usage:
    python benchmarks/merge_predictions.py --collection benchmarks/results/collection-v2-own \
        --method task_arithmetic [--tasks ag_news,sst2] [--out FILE.json]

``merge_report.py`` keeps right/wrong per example, not the predicted answer word. This script
rebuilds the merged vector of one cached row (``<collection>/merge_report/<method>.json``: the
method, its parameters and the chosen coefficients), scores the listed tasks' eval splits again
and writes the confusion matrix (gold x predicted answer word) per task. It also checks that the
per-example right/wrong list reproduces the cached row exactly; a mismatch (another CPU: matmul
rounding differs between machines) is reported, not hidden, and the matrix is still written.
Minutes on a CPU (2026-12-07, AMD EPYC, 2 cores: 179 s to score AG News and SST-2, 2,872 examples).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from build_collection import load_collection, read_json, write_json


def confusion(labels: list[str], gold: list[str], pred: list[str]) -> dict[str, dict[str, int]]:
    """``{gold: {predicted: count}}`` over ``labels`` (every cell present, zeros included)."""
    out = {g: dict.fromkeys(labels, 0) for g in labels}
    for g, p in zip(gold, pred, strict=True):
        out[g][p] += 1
    return out


def markdown(res: dict[str, Any]) -> str:
    """One table per task: rows gold, columns predicted; the reproduction check under it."""
    out = [f"{res['method']} on {res['collection']} (coefficients {res['coefficients']}):", ""]
    for task, r in res["tasks"].items():
        labels = list(r["confusion"])
        out += [f"{task} (n = {r['n']}; rows gold, columns predicted):", "",
                "| gold \\ predicted | " + " | ".join(x.strip() for x in labels) + " |",
                "|---|" + "---:|" * len(labels)]
        for g in labels:
            out.append(f"| {g.strip()} | " + " | ".join(str(r["confusion"][g][p]) for p in labels) + " |")
        out += ["", f"reproduces the cached row's right/wrong per example: {r['reproduces']}"
                    + ("" if r["reproduces"] else f" ({r['mismatches']} examples differ)"), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collection", required=True)
    p.add_argument("--method", required=True, help="a cached row: merge_report/<METHOD>.json")
    p.add_argument("--tasks", default="ag_news,sst2")
    p.add_argument("--out", default=None, help="JSON output (default: <collection>/merge_report/"
                                               "<METHOD>.predictions.json)")
    args = p.parse_args(argv)
    cdir = Path(args.collection)
    coll = load_collection(cdir, "merge_predictions")
    row = read_json(cdir / "merge_report" / f"{args.method}.json")
    if coll is None or row is None:
        raise SystemExit(f"merge_predictions: {cdir}/merge_report/{args.method}.json not found: run merge_report.py "
                         "first")
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in row["tasks"]]
    if unknown:
        raise SystemExit(f"merge_predictions: {unknown} not in the row; it has {list(row['tasks'])}")

    from taskvec.eval import evaluate
    from taskvec.models import load_model
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector
    from taskvec.weights.search import Candidate, applied, merged_at

    key = row["key"]
    missing = [coll["tasks"][t]["vector"] for t in key["tasks"] if not (cdir / coll["tasks"][t]["vector"]).exists()]
    if missing:
        raise SystemExit(f"merge_predictions: {cdir} lacks the vector files {missing}: rebuild them with the "
                         "collection's build_collection.py command (collection_v2.sh) first")
    vectors = [TaskVector.load(cdir / coll["tasks"][t]["vector"]) for t in key["tasks"]]
    best = row["search"]["best"]
    cand = Candidate(best["lam"], list(best["coefficients"]), dict(best["accuracy"]), best["mean"],
                     best.get("stage", "global"))
    merged = merged_at(vectors, key["method"], key["params"], cand)
    model, tok = load_model(coll["model"])
    t0 = time.perf_counter()
    res: dict[str, Any] = {"collection": str(cdir), "method": args.method, "coefficients": row["coefficients"],
                           "tasks": {}}
    with applied(model, merged):
        for name in names:
            task = get_task(name)
            r = evaluate(model, tok, task, limit=key["eval_limit"], batch_size=key["batch_size"], progress=False)
            gold = [task.answer(ex) for ex in task.load(r.split)][: r.n]
            cached = row["tasks"][name]["correct"]
            mism = sum(int(a) != int(b) for a, b in zip(r.correct, cached, strict=True))
            res["tasks"][name] = {"n": r.n, "split": r.split, "accuracy": r.accuracy,
                                  "confusion": confusion(task.choices(), gold,
                                                         [task.label_words[x] for x in r.predictions]),
                                  "reproduces": mism == 0, "mismatches": mism}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out) if args.out else cdir / "merge_report" / f"{args.method}.predictions.json"
    write_json(out, res)
    print(markdown(res), end="")
    print(f"wrote {out} ({res['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
