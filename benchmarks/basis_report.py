"""Task vector bases on a collection: storage, reconstruction error, addition and negation accuracy.

Usage:
    python benchmarks/basis_report.py --collection runs/collection \
        [--methods pca,autoencoder,random,random_sample] [--ms 2,half,T-1] [--grid 0.1:0.5:0.1] \
        [--search-limit 30] [--eval-limit 100 (0: whole splits)] [--negate sst2:ag_news] [--negate-grid 0.1:0.5:0.1] \
        [--negate-ms half] [--keep-bases]

For every method and M: the basis is built by streaming over the collection's vector files
(``taskvec.basis.build_basis``), its storage is compared with the collection (as stored, low-rank,
and as dense float32), and the relative L2 reconstruction error of every task is read from the
stored Gram matrices (``Basis.info``). Multi-task addition through the basis (``Basis.addition``)
gets its coefficient lambda searched on the held-out train slices (never the eval split), then
every task is evaluated on the first ``--eval-limit`` examples of its eval split; the same is
done for the full collection (task arithmetic on the original vectors) as the reference.
Normalized accuracy = accuracy / the task's individual fine-tuned accuracy from
``collection.json`` (evaluated on the first ``eval_limit`` examples there: with a smaller
``--eval-limit`` here the denominators are re-measured on the same examples). Negation of one
task through the basis follows ``taskvec.weights.negate`` (``random_sample`` refuses tasks it did
not sample: recorded as refused).

Resumable: each (method, M) result is cached in ``<collection>/basis_report/`` with its
settings. Bases are deleted after use (they are dense: ~0.4 GB each) unless ``--keep-bases``.
Writes ``basis_report.json`` and ``basis_report.md`` there.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from build_collection import load_collection, mean, read_json, write_json

ALL_METHODS = ("pca", "autoencoder", "random", "random_sample")


def parse_ms(spec: str, t: int) -> list[int]:
    """``"2,half,T-1"`` -> ``[2, T // 2, T - 1]`` (deduplicated, each in 1..T-1)."""
    out: list[int] = []
    for item in spec.split(","):
        item = item.strip()
        m = t // 2 if item == "half" else t - 1 if item == "T-1" else int(item)
        if not 1 <= m <= t:
            raise SystemExit(f"basis_report: M={m} is outside 1..{t}")
        if m not in out:
            out.append(m)
    return out


def addition_eval(model: Any, tok: Any, vector: Any, tasks: list[Any], denominators: dict[str, float],
                  coll: dict[str, Any], args: argparse.Namespace, progress: bool, grid: str | None = None) -> dict[str, Any]:
    """Search lambda for ``lambda * vector`` on the held-out slices, then evaluate every task."""
    from taskvec.eval import evaluate
    from taskvec.weights.search import applied, search_coefficients

    res = search_coefficients(model, tok, [vector], tasks, method="task_arithmetic", grid=grid or args.grid,
                              limit=args.search_limit, holdout=coll["holdout"]["n"], seed=coll["holdout"]["seed"],
                              batch_size=args.batch_size, progress=progress)
    lam = res.best.lam
    per_task: dict[str, dict[str, Any]] = {}
    with applied(model, vector, lam):
        for t in tasks:
            r = evaluate(model, tok, t, limit=args.eval_limit, batch_size=args.batch_size, progress=progress)
            ft = denominators[t.name]
            per_task[t.name] = {"accuracy": r.accuracy, "n": r.n, "normalized": r.accuracy / ft if ft else None,
                                "correct": [int(c) for c in r.correct]}
    return {"lambda": lam, "search": res.to_dict(), "tasks": per_task,
            "mean_accuracy": mean([v["accuracy"] for v in per_task.values()]),
            "mean_normalized": mean([v["normalized"] for v in per_task.values()])}


def negation_eval(model: Any, tok: Any, vector: Any, coll: dict[str, Any], args: argparse.Namespace,
                  progress: bool) -> dict[str, Any]:
    from taskvec.tasks import get_task
    from taskvec.weights.negate import negate

    target, _, control = args.negate.partition(":")
    res = negate(model, tok, vector, get_task(target), get_task(control), args.negate_grid, args.search_limit,
                 eval_limit=args.eval_limit or 0, holdout=coll["holdout"]["n"], seed=coll["holdout"]["seed"],
                 batch_size=args.batch_size, progress=progress)
    return res.to_dict()


def denominators_for(model_tok: Callable[[], tuple[Any, Any]], tasks: list[Any], coll: dict[str, Any], cdir: Path,
                     cache: Path, args: argparse.Namespace, progress: bool) -> dict[str, float]:
    """Individual fine-tuned accuracies on the first ``--eval-limit`` examples (re-measured if needed)."""
    from taskvec.eval import evaluate
    from taskvec.weights import TaskVector
    from taskvec.weights.search import applied

    if args.eval_limit == coll.get("eval_limit"):
        return {t.name: coll["tasks"][t.name]["finetuned_accuracy"] for t in tasks}
    path = cache / "denominators.json"
    key = {"eval_limit": args.eval_limit, "collection_recipe": coll["recipe"], "tasks": [t.name for t in tasks]}
    old = read_json(path)
    if old and old.get("key") == key:
        return old["finetuned"]
    if args.report_only:
        raise SystemExit("basis_report: --report-only: nothing cached for these settings yet (run without it)")
    model, tok = model_tok()
    out = {}
    for t in tasks:
        vec = TaskVector.load(cdir / coll["tasks"][t.name]["vector"])
        with applied(model, vec):
            out[t.name] = evaluate(model, tok, t, limit=args.eval_limit, batch_size=args.batch_size,
                                   progress=progress).accuracy
        print(f"denominator {t.name}: {out[t.name]:.3f}", file=sys.stderr)
    write_json(path, {"key": key, "finetuned": out})
    return out


def run_one(model: Any, tok: Any, method: str, m: int, files: list[Path], tasks: list[Any], denominators: dict,
            coll: dict[str, Any], cache: Path, args: argparse.Namespace, do_negate: bool,
            progress: bool) -> dict[str, Any]:
    from taskvec.basis import build_basis
    from taskvec.errors import UserInputError

    t0 = time.perf_counter()
    path = cache / "bases" / f"{method}-m{m}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    b = build_basis(files, path, method=method, m=m, seed=args.seed, progress=progress)
    build_seconds = time.perf_counter() - t0
    info = b.info()
    row: dict[str, Any] = {"method": method, "M": b.M, "T": b.T, "build_seconds": round(build_seconds, 1),
                           "storage": info["storage"], "rel_error": {r["task"]: r["rel_error"] for r in info["tasks"]},
                           "in_basis": {r["task"]: r["in_basis"] for r in info["tasks"]}, "fit": info["fit"]}
    row["addition"] = addition_eval(model, tok, b.addition(1.0), tasks, denominators, coll, args, progress)
    if args.source_grid != "none":  # uiuctml/TaskVectorBasis's addition: the sum of the M basis vectors
        row["source_addition"] = addition_eval(model, tok, b.basis_sum(), tasks, denominators, coll, args,
                                               progress, grid=args.source_grid)
    if do_negate:
        target = args.negate.partition(":")[0]
        try:
            vec = -b.negation(target)
        except UserInputError as exc:
            row["negation"] = {"refused": str(exc)}
        else:
            row["negation"] = negation_eval(model, tok, vec, coll, args, progress)
    b.close()
    if not args.keep_bases:
        path.unlink(missing_ok=True)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _task_cell(r: dict[str, Any]) -> str:
    """One task's accuracy with its Wilson interval (from its per-example results when kept)."""
    return _ci(r["correct"]) if r.get("correct") else _acc(r.get("accuracy"))


def pooled(result: dict[str, Any], tasks: list[str]) -> list[int]:
    """Per-example correctness over every task's eval examples, in task order (for paired tests)."""
    return [c for t in tasks for c in result["tasks"][t].get("correct", [])]


def _ci(correct: list[int]) -> str:
    from taskvec.eval.stats import wilson

    if not correct:
        return "-"
    lo, hi = wilson(sum(correct), len(correct))
    return f"{sum(correct) / len(correct):.3f} [{lo:.3f}, {hi:.3f}]"


def _paired(a: list[int], b: list[int]) -> str:
    """``p = ...`` of the exact McNemar test of a vs b, and the sign when significant."""
    from taskvec.eval.stats import mcnemar

    if not a or len(a) != len(b):
        return "-"
    t = mcnemar(a, b)
    verdict = ("higher" if t.only_a > t.only_b else "lower") if t.significant else "n.s."
    return f"{t.p_value:.2g} ({verdict})"


def markdown(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    full = report["full"]
    s = report["settings"]
    evald = f"first {s['eval_limit']} examples" if s["eval_limit"] else "every example"
    lines = [f"Model {report['model']}, T = {len(tasks)} task vectors; eval: {evald} "
             f"of each eval split; lambda chosen on {s['search_limit']} held-out train examples per task "
             f"(grid {s['grid']}).", ""]
    lines += ["Addition columns: taskvec's addition (the sum of the T tasks recovered from the basis); "
              "\"kept of full collection\" = its normalized accuracy / the full collection's. \"pooled, 95% CI\" = "
              "accuracy over all eval examples of all tasks with its Wilson interval; \"vs full\" = exact McNemar "
              "p-value against the full collection on the same examples (higher/lower when p < 0.05, else n.s.). "
              "The source's addition (the sum of the M basis vectors) is in its own table below.", ""]
    full_c = pooled(full, tasks)
    lines += ["| method | M | storage vs collection (dense fp32) | vs collection as stored (LoRA) | "
              "mean rel. recon. error | max | lambda | addition acc. | pooled, 95% CI | vs full | "
              "addition normalized | kept of full collection |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| full collection (task arithmetic) | {len(tasks)} | 100% | 100% | 0 | 0 | {full['lambda']:g} | "
                 f"{_acc(full['mean_accuracy'])} | {_ci(full_c)} | - | {_pct(full['mean_normalized'])} | 100% |")
    for r in report["rows"]:
        st = r["storage"]
        vals = [float(v) for v in r["rel_error"].values() if v is not None]
        add = r["addition"]
        kept = add["mean_normalized"] / full["mean_normalized"] if full["mean_normalized"] else None
        lines.append(
            f"| {r['method']} | {r['M']} | {_pct(st.get('basis_vs_collection_dense'))} | "
            f"{_pct(st.get('basis_vs_collection'))} | "
            f"{(sum(vals) / len(vals)) if vals else float('nan'):.3f} | {max(vals) if vals else float('nan'):.3f} | "
            f"{add['lambda']:g} | {_acc(add['mean_accuracy'])} | {_ci(pooled(add, tasks))} | "
            f"{_paired(pooled(add, tasks), full_c)} | {_pct(add['mean_normalized'])} | {_pct(kept)} |")
    src = [r for r in report["rows"] if "source_addition" in r]
    if src:
        lines += ["", "Addition as uiuctml/TaskVectorBasis defines it: lambda x (the sum of the M basis vectors; "
                  "PCA: variance-scaled, no mean), lambda chosen on the held-out slices (grid "
                  f"{s.get('source_grid')}), next to taskvec's (the sum of the T recovered tasks); \"source vs "
                  "taskvec\" = exact McNemar p-value of the source's addition against taskvec's on the same examples:",
                  "", "| method | M | source: lambda | source: acc. | source: pooled, 95% CI | source: normalized | "
                  "taskvec: acc. | taskvec: pooled, 95% CI | taskvec: normalized | source vs taskvec | source vs full |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in src:
            a, t = r["source_addition"], r["addition"]
            ac, tc = pooled(a, tasks), pooled(t, tasks)
            lines.append(f"| {r['method']} | {r['M']} | {a['lambda']:g} | {_acc(a['mean_accuracy'])} | {_ci(ac)} | "
                         f"{_pct(a['mean_normalized'])} | {_acc(t['mean_accuracy'])} | {_ci(tc)} | "
                         f"{_pct(t['mean_normalized'])} | {_paired(ac, tc)} | {_paired(ac, full_c)} |")
    lines += ["", "Relative L2 reconstruction error per task, ||v - v_hat|| / ||v|| (from the stored Gram matrices):",
              "", "| method | M | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['M']} | " + " | ".join(
            "-" if r["rel_error"].get(t) is None else f"{r['rel_error'][t]:.3f}" for t in tasks) + " |")
    lines += ["", "Per-task addition accuracy (absolute) [95% Wilson interval]:", "",
              "| method | M | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    lines.append("| full collection | " + str(len(tasks)) + " | "
                 + " | ".join(_task_cell(full["tasks"][t]) for t in tasks) + " |")
    for r in report["rows"]:
        lines.append(f"| {r['method']} | {r['M']} | "
                     + " | ".join(_task_cell(r["addition"]["tasks"][t]) for t in tasks) + " |")
    negs = [r for r in report["rows"] if "negation" in r]
    if negs or report.get("full_negation"):
        target, _, control = s["negate"].partition(":")
        lines += ["", f"Negation of {target} through the basis (control {control}; coefficient = largest "
                  f"keeping control >= 95% of base on held-out data; accuracies on the eval splits):", "",
                  f"| method | M | coefficient | {target} base -> negated | {control} base -> negated |",
                  "|---|---|---|---|---|"]
        rows = ([("full collection (the vector itself)", len(tasks), report["full_negation"])]
                if report.get("full_negation") else [])
        rows += [(r["method"], r["M"], r["negation"]) for r in negs]
        for name, m, n in rows:
            if "refused" in n:
                lines.append(f"| {name} | {m} | refused: {n['refused']} | - | - |")
                continue
            ci = n.get("eval_ci95") or {}

            def cell(task: str, base: float, at_c: float, n: dict = n, ci: dict = ci) -> str:
                if task not in ci.get("base", {}):
                    return f"{_acc(base)} -> {_acc(at_c)}"
                (bl, bh), (nl, nh) = ci["base"][task], ci["negated"][task]
                pt = n.get("paired", {}).get(task)
                test = f" (n = {pt['n']}, McNemar p = {pt['p_value']:.2g})" if pt else ""
                return f"{base:.3f} [{bl:.3f}, {bh:.3f}] -> {at_c:.3f} [{nl:.3f}, {nh:.3f}]{test}"

            lines.append(f"| {name} | {m} | {n['chosen']} | "
                         f"{cell(target, n['base_target'], n['target_at_c'])} | "
                         f"{cell(control, n['base_control'], n['control_at_c'])} |")
    if report.get("pending"):
        lines = [f"(partial: {len(report['rows'])} of {len(report['rows']) + len(report['pending'])} bases so far; "
                 f"to run: {', '.join(report['pending'])})", ""] + lines
    return "\n".join(lines) + "\n"


def write_report(cache: Path, report: dict[str, Any]) -> str:
    """``basis_report.json`` and ``.md`` in ``cache`` (``partial: true`` while bases are pending)."""
    report["partial"] = bool(report.get("pending"))
    write_json(cache / "basis_report.json", report)
    md = markdown(report)
    (cache / "basis_report.md").write_text(md, encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", required=True)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--tasks", default=None, help="comma-separated subset of the collection's tasks (default: all)")
    p.add_argument("--ms", default="2,half,T-1", help="basis sizes: integers, 'half' (T // 2), 'T-1'")
    p.add_argument("--grid", default="0.1:0.5:0.1", help="lambda grid for the addition")
    p.add_argument("--search-limit", type=int, default=30)
    p.add_argument("--eval-limit", type=int, default=100, help="eval examples per task; 0: the whole split")
    p.add_argument("--negate", default="sst2:ag_news", help="TARGET:CONTROL or 'none'")
    p.add_argument("--negate-grid", default="0.1:0.5:0.1")
    p.add_argument("--source-grid", default="0.1,0.2,0.3,0.5,0.7,1.0",
                   help="lambda grid for the source's addition (sum of the M basis vectors), or 'none'")
    p.add_argument("--negate-ms", default="half", help="the M values whose bases get the negation ('all' or a --ms list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--keep-bases", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="no model: write the report from the cached results of these settings (partial while some "
                        "bases are still to run), e.g. to refresh the docs while a run goes on")
    args = p.parse_args(argv)
    if args.eval_limit < 0:
        raise SystemExit("basis_report: --eval-limit must be >= 0 (0: every example of each eval split)")
    args.eval_limit = args.eval_limit or None  # 0 -> the whole split, as build_collection / merge_report

    from taskvec.errors import TaskVecError
    from taskvec.models import load_model
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector

    cdir = Path(args.collection)
    coll = load_collection(cdir, "basis_report")
    if coll is None:
        return 2
    cache = cdir / "basis_report"
    cache.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    names = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(coll["tasks"])
    missing = [t for t in names if t not in coll["tasks"]]
    if missing or not names:
        raise SystemExit(f"basis_report: --tasks {missing or args.tasks!r}: not in the collection")
    ms = parse_ms(args.ms, len(names))
    neg_ms = ms if args.negate_ms == "all" else parse_ms(args.negate_ms, len(names))
    do_neg = args.negate != "none"
    if do_neg and args.negate.partition(":")[0] not in names:
        raise SystemExit(f"basis_report: --negate {args.negate}: the target is not among the tasks {names}")
    settings = {"format": 2, "eval_limit": args.eval_limit, "search_limit": args.search_limit, "grid": args.grid,
                "source_grid": args.source_grid,
                "negate": args.negate, "negate_grid": args.negate_grid, "seed": args.seed,
                "holdout": coll["holdout"], "collection_recipe": coll["recipe"]}
    if names != list(coll["tasks"]):  # a subset (e.g. the vectors merge_report merges); all: older caches hold
        settings["tasks"] = names
    try:
        tasks = [get_task(t) for t in names]
        files = [cdir / coll["tasks"][t]["vector"] for t in names]
        loaded: list[Any] = []

        def model_tok() -> tuple[Any, Any]:  # loaded on first use: a cached or --report-only run needs none
            if not loaded:
                loaded.extend(load_model(coll["model"]))
            return loaded[0], loaded[1]

        denominators = denominators_for(model_tok, tasks, coll, cdir, cache, args, progress)
        report: dict[str, Any] = {"model": coll["model"], "tasks": names, "settings": settings,
                                  "denominators": denominators, "rows": [], "pending": []}
        full_path = cache / "full.json"
        old = read_json(full_path)
        if old and old.get("settings") == settings:
            full = old
        elif args.report_only:
            raise SystemExit("basis_report: --report-only: the full-collection reference of these settings is not "
                             f"cached in {cache} yet (run without --report-only)")
        else:
            print("full collection: task arithmetic addition", file=sys.stderr)
            vectors = [TaskVector.load(f) for f in files]
            total = vectors[0]
            for v in vectors[1:]:
                total = total + v
            full = addition_eval(*model_tok(), total, tasks, denominators, coll, args, progress)
            if do_neg:
                target = args.negate.partition(":")[0]
                full["negation"] = negation_eval(*model_tok(), vectors[names.index(target)], coll, args, progress)
            full["settings"] = settings
            write_json(full_path, full)
        report["full"] = full
        report["full_negation"] = full.get("negation")
        todo = [(method, m) for method in [x.strip() for x in args.methods.split(",") if x.strip()] for m in ms]
        report["pending"] = [f"{method} M={m}" for method, m in todo]
        for method, m in todo:
            path = cache / f"{method}-m{m}.json"
            key = settings | {"method": method, "M": m, "negate_here": do_neg and m in neg_ms}
            old = read_json(path)
            if old and old.get("key") == key:
                print(f"{method} M={m}: cached", file=sys.stderr)
                row = old
            elif args.report_only:
                continue
            else:
                print(f"{method} M={m}: building and evaluating", file=sys.stderr)
                row = run_one(*model_tok(), method, m, files, tasks, denominators, coll, cache, args,
                              do_neg and m in neg_ms, progress)
                row["key"] = key
                write_json(path, row)
            report["rows"].append(row)
            report["pending"].remove(f"{method} M={m}")
            write_report(cache, report)  # partial until the last basis is in
    except TaskVecError as exc:
        print(f"basis_report: error: {exc}", file=sys.stderr)
        return 2
    print(write_report(cache, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
