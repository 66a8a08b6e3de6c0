"""Merge a task-vector collection with several methods: coefficient search, eval, normalized accuracy.

Usage:
    python benchmarks/merge_report.py --collection runs/collection \
        [--methods task_arithmetic,ties,dare_ties,tsv,breadcrumbs] [--grid 0.1:1.0:0.1] \
        [--method-grid ties=0.5:2.0:0.25] [--per-task-grid ties=0.25:2.0:0.25] [--param ties:density=0.2] [--search-limit 100] \
        [--eval-limit 500] [--negate sst2:ag_news] [--negate-grid 0.1:2.0:0.1] \
        [--per-task [task_arithmetic,tsv]] [--variant ties_core=ties:space=core]

Every accuracy carries its 95% Wilson interval and per-example results; the methods are ranked by
pooled accuracy and each is tested against task_arithmetic on the same examples (exact McNemar,
pooled over all tasks, and per task). For each method: ``lambda`` is chosen by ``taskvec.weights.search.search_coefficients`` on the
held-out train slice of every task (the slice ``build_collection.py`` did not train on, read
from ``collection.json``), then the merged vector at that ``lambda`` is applied in memory and
every task is evaluated on its eval split. Normalized accuracy = merged accuracy / the task's
individual fine-tuned accuracy (``collection.json``; same split and limit). One negation
(``--negate TARGET:CONTROL``) follows the protocol of ``taskvec.weights.negate``.

Resumable: each method's result is cached in ``<collection>/merge_report/<method>.json`` (and
the negation in ``negation.json``) with the settings that made it; a rerun with the same
settings reuses it. Within a method, every scored search setting is logged in
``<method>.search.jsonl`` (``taskvec.weights.search_log``), so an interrupted search resumes
at the setting it was scoring. Writes ``merge_report.json`` and ``merge_report.md`` (tables for
docs/results.md) in the collection directory (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from build_collection import load_collection, mean, read_json, write_json

ALL_METHODS = ("task_arithmetic", "ties", "dare_ties", "tsv", "breadcrumbs")
#: lambda grids when --grid is not given: summing methods need small lambdas for 9 vectors,
#: ties / dare_ties take a disjoint *mean* (normalize=true), so their lambda is around 1
DEFAULT_GRIDS = {"ties": "0.5:2.0:0.25", "dare_ties": "0.5:2.0:0.25"}
SUM_GRID = "0.1:1.0:0.1"


def parse_method_params(items: list[str]) -> dict[str, dict[str, str]]:
    """``["ties:density=0.2"]`` -> ``{"ties": {"density": "0.2"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        method, sep, kv = item.partition(":")
        key, sep2, value = kv.partition("=")
        if not sep or not sep2 or not key.strip():
            raise SystemExit(f"merge_report: --param needs METHOD:KEY=VALUE, got {item!r}")
        out.setdefault(method.strip(), {})[key.strip()] = value.strip()
    return out


def parse_variants(items: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """``["ties_core=ties:space=core"]`` -> ``{"ties_core": ("ties", {"space": "core"})}``: a named
    method with fixed parameters (a LoRA-native variant next to the dense method), usable in
    ``--methods``, ``--per-task``, ``--method-grid`` and ``--param`` like a method name."""
    from taskvec.weights.merge import get_method

    out: dict[str, tuple[str, dict[str, str]]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        method, _, kvs = spec.partition(":")
        name = name.strip()
        if not sep or not name or not method.strip():
            raise SystemExit(f"merge_report: --variant needs NAME=METHOD[:KEY=VALUE,...], got {item!r}")
        params: dict[str, str] = {}
        for kv in filter(None, (x.strip() for x in kvs.split(","))):
            key, sep2, value = kv.partition("=")
            if not sep2 or not key.strip():
                raise SystemExit(f"merge_report: --variant {name}: {kv!r} is not KEY=VALUE")
            params[key.strip()] = value.strip()
        out[name] = (get_method(method.strip()).name, params)
    return out


def run_method(model: Any, tok: Any, method: str, vectors: list[Any], tasks: list[Any], coll: dict[str, Any],
               key: dict[str, Any], progress: bool, log: Path | None = None) -> dict[str, Any]:
    """Search lambda on the held-out slices, then evaluate the merged model on every eval split.

    ``log``: the search's resumable log (every scored setting; shared by a method's global and
    per-task searches, whose global stages are the same settings)."""
    from taskvec.eval import evaluate
    from taskvec.eval.stats import wilson
    from taskvec.weights.search import applied, merged_at, search_coefficients

    t0 = time.perf_counter()
    res = search_coefficients(model, tok, vectors, tasks, method=method, grid=key["grid"], params=key["params"],
                              limit=key["search_limit"], holdout=coll["holdout"]["n"],
                              seed=coll["holdout"]["seed"], batch_size=key["batch_size"], progress=progress,
                              per_task=key.get("per_task", False), log=log)
    merged = merged_at(vectors, method, key["params"], res.best)
    per_task: dict[str, dict[str, Any]] = {}
    with applied(model, merged):
        for t in tasks:
            r = evaluate(model, tok, t, limit=key["eval_limit"], batch_size=key["batch_size"], progress=progress)
            ft = coll["tasks"][t.name]["finetuned_accuracy"]
            per_task[t.name] = {"accuracy": r.accuracy, "n": r.n, "split": r.split,
                                "ci95": list(wilson(sum(r.correct), r.n)), "correct": [int(c) for c in r.correct],
                                "normalized": r.accuracy / ft if ft else None}
    return {"key": key, "lambda": res.best.lam, "search": res.to_dict(), "tasks": per_task,
            "coefficients": list(res.best.coefficients),
            "mean_accuracy": mean([v["accuracy"] for v in per_task.values()]),
            "mean_normalized": mean([v["normalized"] for v in per_task.values()]),
            "seconds": round(time.perf_counter() - t0, 1)}


def _cell(v: float | None, pct: bool = False, ci: list[float] | None = None) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def _lam(m: dict[str, Any]) -> str:
    """The chosen lambda, marked when it is an edge of the method's grid (the best may lie beyond);
    for a per-task row, also each task whose coefficient is at an edge."""
    from taskvec.weights.search import grid_edge

    s = m.get("search", {})
    edge = grid_edge(s.get("grid", []), m["lambda"])
    out = f"{m['lambda']:g}" + (f" (grid {edge})" if edge else "")
    if s.get("per_task"):  # a per-task coefficient at a grid edge: its best may lie beyond the grid too
        edges = [f"{t} {e}" for t, c in zip(s["tasks"], s["best"]["coefficients"]) if (e := grid_edge(s["grid"], c))]
        out += f" (coefficients at the grid's edge: {', '.join(edges)})" if edges else ""
    return out


def paired_table(report: dict[str, Any], ref: str = "task_arithmetic") -> list[str]:
    """Pooled accuracy (all examples of all tasks) with its Wilson interval per method, ranked, and
    the exact McNemar test of each method against ``ref`` on the same examples (pooled, and the
    number of tasks where it is significantly better / worse)."""
    from taskvec.eval.stats import mcnemar, wilson

    tasks, methods = report["tasks"], report["methods"]
    have = {m: v for m, v in methods.items() if all("correct" in v["tasks"][t] for t in tasks)}
    if not have:
        return []
    pooled = {m: [bool(c) for t in tasks for c in v["tasks"][t]["correct"]] for m, v in have.items()}
    rows = ["| rank | method | lambda | pooled accuracy [95% CI] | n | vs " + ref + " (points) | discordant | p "
            "| significant | tasks better / worse (p < 0.05) |", "|---:|---|---|---|---:|---:|---:|---:|---|---|"]
    ranked = sorted(have, key=lambda m: -sum(pooled[m]))
    for i, m in enumerate(ranked, 1):
        k, n = sum(pooled[m]), len(pooled[m])
        lo, hi = wilson(k, n)
        cells = ["-", "-", "-", "-", "-"]
        if ref in pooled and m != ref:
            t = mcnemar(pooled[m], pooled[ref])
            per = [mcnemar([bool(c) for c in have[m]["tasks"][x]["correct"]],
                           [bool(c) for c in have[ref]["tasks"][x]["correct"]]) for x in tasks]
            better = sum(1 for q in per if q.significant and q.a_correct > q.b_correct)
            worse = sum(1 for q in per if q.significant and q.a_correct < q.b_correct)
            cells = [f"{100 * (t.a_correct - t.b_correct) / n:+.1f}", f"{t.only_a} / {t.only_b}", f"{t.p_value:.2g}",
                     "yes" if t.significant else "no", f"{better} / {worse}"]
        rows.append(f"| {i} | {m} | {_lam(have[m])} | {k / n:.3f} [{lo:.3f}, {hi:.3f}] | {n} | "
                    + " | ".join(cells) + " |")
    return rows


def variant_table(report: dict[str, Any]) -> list[str]:
    """Each ``--variant`` row against its own method's row on the same examples (exact McNemar,
    pooled over all tasks): e.g. TIES on the LoRA cores against dense TIES."""
    from taskvec.eval.stats import mcnemar

    tasks, methods = report["tasks"], report["methods"]
    rows = []
    for name, v in methods.items():
        ref = v.get("key", {}).get("method")
        if not v.get("key", {}).get("variant") or ref not in methods or ref == name:
            continue
        try:
            a = [bool(c) for t in tasks for c in v["tasks"][t]["correct"]]
            b = [bool(c) for t in tasks for c in methods[ref]["tasks"][t]["correct"]]
        except KeyError:
            continue
        t = mcnemar(a, b)
        rows.append(f"| {name} | {ref} | {sum(a) / len(a):.3f} | {sum(b) / len(b):.3f} | "
                    f"{100 * (t.a_correct - t.b_correct) / len(a):+.1f} | {t.only_a} / {t.only_b} | "
                    f"{t.p_value:.2g} | {'yes' if t.significant else 'no'} |")
    if not rows:
        return []
    return ["| variant | against | variant pooled | against pooled | points | discordant | p | significant |",
            "|---|---|---:|---:|---:|---:|---:|---|", *rows]


def _avg_cells(rates: dict[str, tuple[float, int]], ft: dict[str, float]) -> tuple[str, str]:
    """The "avg" cells of one row: the unweighted mean over tasks of the accuracy and of the
    normalized accuracy, each with its 95% bootstrap interval (every task's accuracy redrawn as
    Binomial(n, accuracy) / n, 10,000 draws, seed 0: the computation of ``goal_intervals.py``,
    so the normalized interval is the goals table's)."""
    from taskvec.eval.bootstrap import binomial_bootstrap, mean_of, mean_ratio

    opts = {"n_boot": 10_000, "seed": 0}
    acc = binomial_bootstrap({t: {"m": r} for t, r in rates.items()}, mean_of("m"), **opts)
    cells = [f"{acc.estimate:.3f} [{acc.low:.3f}, {acc.high:.3f}]"]
    if all(ft.get(t) for t in rates):
        nrm = binomial_bootstrap({t: {"m": r, "ft": (ft[t], r[1])} for t, r in rates.items()},
                                 mean_ratio("m", "ft"), **opts)
        cells.append(f"{100 * nrm.estimate:.1f}% [{100 * nrm.low:.1f}%, {100 * nrm.high:.1f}%]")
    else:
        cells.append("-")
    return cells[0], cells[1]


def markdown(report: dict[str, Any]) -> str:
    """Two tables (absolute, normalized accuracy) and the negation line."""
    tasks = report["tasks"]
    coll = report["collection_summary"]
    head = "| method | lambda | " + " | ".join(tasks) + " | avg |"
    sep = "|---|---|" + "---|" * (len(tasks) + 1)
    n_head = "| method | lambda | " + " | ".join(f"{t} (n={coll[t]['n']})" for t in tasks) + " | avg |"
    abs_rows, norm_rows = [n_head, sep], [head, sep]
    zs = {t: coll[t]["zero_shot_accuracy"] for t in tasks}
    ft = {t: coll[t]["finetuned_accuracy"] for t in tasks}
    zs_norm = {t: (zs[t] / ft[t] if ft[t] else None) for t in tasks}
    zs_avg, zs_norm_avg = _avg_cells({t: (zs[t], int(coll[t]["n"])) for t in tasks}, ft)
    ft_avg, _ = _avg_cells({t: (ft[t], int(coll[t]["n"])) for t in tasks}, ft)
    abs_rows.append("| zero-shot base | - | " + " | ".join(_cell(zs[t], ci=coll[t].get("zero_shot_ci95")) for t in tasks)
                    + f" | {zs_avg} |")
    abs_rows.append("| individual fine-tuned | - | " + " | ".join(_cell(ft[t], ci=coll[t].get("finetuned_ci95"))
                                                               for t in tasks) + f" | {ft_avg} |")
    norm_rows.append("| zero-shot base | - | " + " | ".join(_cell(zs_norm[t], True) for t in tasks)
                     + f" | {zs_norm_avg} |")
    for name, m in report["methods"].items():
        lam = _lam(m)
        avg, norm_avg = _avg_cells({t: (m["tasks"][t]["accuracy"], int(m["tasks"][t]["n"])) for t in tasks}, ft)
        abs_rows.append(f"| {name} | {lam} | " + " | ".join(_cell(m["tasks"][t]["accuracy"], ci=m["tasks"][t].get("ci95"))
                                                           for t in tasks) + f" | {avg} |")
        norm_rows.append(f"| {name} | {lam} | " + " | ".join(_cell(m["tasks"][t]["normalized"], True) for t in tasks)
                         + f" | {norm_avg} |")
    s = report["settings"]
    evald = f"the first {s['eval_limit']} examples" if s["eval_limit"] else "all examples"
    out = [f"Model {report['model']}; eval: {evald} of each eval split; "
           f"lambda chosen on {s['search_limit'] or 'all'} held-out train examples per task.", "",
           "Accuracy [95% Wilson interval] (avg: unweighted mean over tasks [95% bootstrap interval, each task's "
           "accuracy redrawn as a binomial]):", "", *abs_rows, "",
           "Normalized accuracy (merged / individual fine-tuned; avg: as above, the interval of goal_intervals.py):",
           "", *norm_rows]
    paired = paired_table(report)
    if paired:
        out += ["", "Methods ranked by pooled accuracy, each against task_arithmetic on the same examples "
                "(exact McNemar):", "", *paired]
    variants = variant_table(report)
    if variants:
        out += ["", "Each variant against its own method on the same examples (exact McNemar, pooled):", "",
                *variants]
    neg = report.get("negation")
    if neg:
        out += ["", f"Negation of {neg['target']} (control {neg['control']}, rule: control >= "
                f"{neg['threshold']:g} x base on held-out data): chosen c = {neg['chosen']}; "
                f"{neg['target']} {_cell(neg['base_target'])} -> {_cell(neg['target_at_c'])}, "
                f"{neg['control']} {_cell(neg['base_control'])} -> {_cell(neg['control_at_c'])} (eval splits)."]
        ci = neg.get("eval_ci95") or {}
        for task, t in (neg.get("paired") or {}).items():
            b, a = ci.get("base", {}).get(task), ci.get("negated", {}).get(task)
            out.append(f"- {task} (n = {t['n']}): base {_cell(t['b_correct'] / t['n'], ci=b)}, negated "
                       f"{_cell(t['a_correct'] / t['n'], ci=a)}; discordant {t['only_a']} / {t['only_b']} "
                       f"(right only negated / only base), exact McNemar p = {t['p_value']:.2g}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", required=True, help="directory written by build_collection.py")
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--tasks", default=None, help="comma-separated subset of the collection's tasks")
    p.add_argument("--grid", default=None, help=f"lambda grid for every method (default {SUM_GRID}; ties/dare_ties 0.5:2.0:0.25)")
    p.add_argument("--method-grid", action="append", default=[], metavar="METHOD=GRID")
    p.add_argument("--per-task-grid", action="append", default=[], metavar="METHOD=GRID",
                   help="the grid of METHOD's per-task search (default: its --method-grid), e.g. one extended "
                        "where a per-task coefficient sat at an edge; the global row keeps its grid")
    p.add_argument("--param", action="append", default=[], metavar="METHOD:KEY=VALUE", help="merge parameter")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD[:KEY=VALUE,...]",
                   help="a named method with fixed parameters, e.g. ties_core=ties:space=core (the LoRA-native "
                        "variant); use NAME in --methods / --per-task")
    p.add_argument("--search-limit", type=int, default=100, help="held-out examples per task for the search")
    p.add_argument("--eval-limit", type=int, default=None, help="eval examples per task (default: the collection's)")
    p.add_argument("--per-task", nargs="?", const="all", default=None, metavar="METHODS",
                   help="also choose one coefficient per task vector (coordinate ascent from the global "
                        "lambda, on the same held-out examples): rows 'METHOD (per-task)'; for every method, "
                        "or for the comma-separated METHODS in that order (hours each on a CPU)")
    p.add_argument("--negate", default="sst2:ag_news", help="TARGET:CONTROL, or 'none'")
    p.add_argument("--negate-grid", default="0.1:2.0:0.1")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default=None, help="report directory (default: the collection directory)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from taskvec.errors import TaskVecError
    from taskvec.models import load_model
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector
    from taskvec.weights.merge import get_method
    from taskvec.weights.search import parse_grid

    cdir = Path(args.collection)
    coll = load_collection(cdir, "merge_report")
    if coll is None:
        return 2
    out_dir = Path(args.out) if args.out else cdir
    cache = out_dir / "merge_report"
    cache.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    try:
        names = [t for t in (args.tasks.split(",") if args.tasks else coll["tasks"]) if t]
        missing = [t for t in names if t not in coll["tasks"]]
        if missing:
            raise SystemExit(f"merge_report: tasks {missing} are not in the collection")
        variants = parse_variants(args.variant)

        def name_of(m: str) -> str:  # a variant's name, or the registry's name of a method
            return m if m in variants else get_method(m).name

        methods = [name_of(m.strip()) for m in args.methods.split(",") if m.strip()]
        base = {m: variants[m][0] if m in variants else m for m in methods}  # the merge method itself
        grids = {m: args.grid or DEFAULT_GRIDS.get(base[m], SUM_GRID) for m in methods}
        for item in args.method_grid:
            m, _, g = item.partition("=")
            grids[name_of(m.strip())] = g
        per_grids = dict(grids)
        for item in args.per_task_grid:
            m, _, g = item.partition("=")
            per_grids[name_of(m.strip())] = g
        params = parse_method_params(args.param)
        for m in methods:
            if m in variants:
                params[m] = variants[m][1] | params.get(m, {})
        eval_limit = args.eval_limit if args.eval_limit is not None else coll.get("eval_limit")
        tasks = [get_task(t) for t in names]
        vectors = [TaskVector.load(cdir / coll["tasks"][t]["vector"]) for t in names]
        for m in methods:
            parse_grid(grids[m])
            parse_grid(per_grids[m])
        per_methods = [] if args.per_task is None else methods if args.per_task == "all" else [
            name_of(m.strip()) for m in args.per_task.split(",") if m.strip()]
        if set(per_methods) - set(methods):
            raise SystemExit(f"merge_report: --per-task {sorted(set(per_methods) - set(methods))} not in --methods")
        if set(per_grids) - set(methods):
            raise SystemExit(f"merge_report: --per-task-grid {sorted(set(per_grids) - set(methods))} not in --methods")
        model, tok = load_model(coll["model"])
        report: dict[str, Any] = {
            "model": coll["model"], "collection": str(cdir), "tasks": names,
            "settings": {"search_limit": args.search_limit, "eval_limit": eval_limit, "holdout": coll["holdout"],
                         "eval_limit_matches_collection": eval_limit == coll.get("eval_limit")},
            "collection_summary": {t: coll["tasks"][t] for t in names}, "methods": {},
        }
        def run(per: bool, m: str) -> None:
            grid = per_grids[m] if per else grids[m]
            key = {"method": base[m], "grid": grid, "params": params.get(m, {}), "tasks": names, "per_task": per,
                   "search_limit": args.search_limit, "eval_limit": eval_limit, "holdout": coll["holdout"],
                   "batch_size": args.batch_size, "base_fingerprint": coll["base_fingerprint"],
                   "collection_recipe": coll["recipe"], "per_example": True}
            if m in variants:
                key["variant"] = m
            label, path = (f"{m} (per-task)", cache / f"{m}-per-task.json") if per else (m, cache / f"{m}.json")
            old = read_json(path)
            if old and old.get("key") == key:
                print(f"{label}: cached ({path})", file=sys.stderr)
                report["methods"][label] = old
                return
            print(f"{label}: searching over {grid}", file=sys.stderr)
            report["methods"][label] = run_method(model, tok, base[m], vectors, tasks, coll, key, progress,
                                                  log=cache / f"{m}.search.jsonl")
            write_json(path, report["methods"][label])
            write_report(out_dir, report)

        # every method's global search first, then the negation (minutes), then the per-task searches
        # (hours each on a CPU), so a partial run already ranks every method; the report is rewritten
        # after each step
        for m in methods:
            run(False, m)
        if args.negate and args.negate != "none":
            report["negation"] = _negation(model, tok, args, coll, cdir, cache, eval_limit, progress)
            write_report(out_dir, report)
        for m in per_methods:
            run(True, m)
    except TaskVecError as exc:
        print(f"merge_report: error: {exc}", file=sys.stderr)
        return 2
    print(write_report(out_dir, report, final=True))
    return 0


def write_report(out_dir: Path, report: dict[str, Any], final: bool = False) -> str:
    """``merge_report.json`` and ``.md`` (``partial: true`` until every method and the negation ran)."""
    report["partial"] = not final
    write_json(out_dir / "merge_report.json", report)
    md = markdown(report)
    if not final:
        md = "(partial: the methods finished so far)\n\n" + md
    (out_dir / "merge_report.md").write_text(md, encoding="utf-8")
    return md


def _negation(model: Any, tok: Any, args: argparse.Namespace, coll: dict[str, Any], cdir: Path, cache: Path,
              eval_limit: int | None, progress: bool) -> dict[str, Any]:
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector
    from taskvec.weights.negate import negate

    target, _, control = args.negate.partition(":")
    if target not in coll["tasks"] or not control:
        raise SystemExit(f"merge_report: --negate {args.negate}: give TARGET:CONTROL with TARGET in the collection")
    key = {"target": target, "control": control, "grid": args.negate_grid, "search_limit": args.search_limit,
           "eval_limit": eval_limit, "holdout": coll["holdout"], "base_fingerprint": coll["base_fingerprint"],
           "collection_recipe": coll["recipe"], "per_example": True}
    path = cache / "negation.json"
    old = read_json(path)
    if old and old.get("key") == key:
        print(f"negation: cached ({path})", file=sys.stderr)
        return old
    print(f"negation: {target} (control {control})", file=sys.stderr)
    vec = TaskVector.load(cdir / coll["tasks"][target]["vector"])
    res = negate(model, tok, vec, get_task(target), get_task(control), args.negate_grid, args.search_limit,
                 eval_limit=eval_limit or 0, holdout=coll["holdout"]["n"], seed=coll["holdout"]["seed"],
                 batch_size=args.batch_size, progress=progress)
    out = res.to_dict() | {"key": key}
    write_json(path, out)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
