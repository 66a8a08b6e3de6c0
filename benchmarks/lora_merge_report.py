"""LoRA-native merging on a LoRA collection: every method in core space next to its dense
counterpart (file size, merge time, peak RSS, accuracy with 95% intervals, paired test), and
core-space vs dense bases (storage, reconstruction error).

Usage:
    python benchmarks/lora_merge_report.py --collection runs/collection [--search-limit 40] \
        [--variants all] [--out benchmarks/results/collection/lora]

Protocol (as ``merge_report.py``): for each variant one ``lambda`` (the same for every task) is
chosen on the held-out train slice of every task (``--search-limit`` examples each, never the
eval split), then the merged vector is applied in memory and every task is evaluated on the
collection's eval examples. The merge itself is then run again as ``taskvec merge`` in a child
process, which reports its wall time and peak RSS and writes the file whose size is listed.
Accuracies carry Wilson 95% intervals; the mean over tasks is pooled over all eval examples.
Core vs dense of the same method is compared on the same examples with the exact McNemar test.

Resumable: each variant's result is cached in ``<out>/<variant>.json`` with the settings that
made it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from basis_report import denominators_for  # noqa: E402
from build_collection import load_collection, read_json, write_json  # noqa: E402
from child import taskvec_merge  # noqa: E402
from machine import describe, machine_info  # noqa: E402

SUM = "0.05,0.1,0.2,0.3"
MEAN = "0.5,0.75,1.0,1.5"
ISO = "0.1,0.2,0.4,0.8"
#: name -> (method, params, lambda grid, dense counterpart's name or None)
VARIANTS: dict[str, tuple[str, dict[str, str], str, str | None]] = {
    "task_arithmetic": ("task_arithmetic", {}, SUM, None),
    "tsv (core)": ("tsv", {}, "0.4,0.6,0.8,1.0", "tsv (dense)"),
    "tsv (dense)": ("tsv", {"space": "dense"}, "0.4,0.6,0.8,1.0", None),
    "iso_c (core)": ("iso_c", {}, ISO, "iso_c (dense)"),
    "iso_c (dense)": ("iso_c", {"space": "dense"}, ISO, None),
    "iso_cts (core)": ("iso_cts", {}, ISO, "iso_cts (dense)"),
    "iso_cts (dense)": ("iso_cts", {"space": "dense"}, ISO, None),
    "ties (core)": ("ties", {"space": "core"}, MEAN, "ties (dense)"),
    "ties (dense)": ("ties", {}, MEAN, None),
    "dare_ties (core)": ("dare_ties", {"space": "core"}, MEAN, "dare_ties (dense)"),
    "dare_ties (dense)": ("dare_ties", {}, MEAN, None),
    "breadcrumbs (core)": ("breadcrumbs", {"space": "core"}, "0.2,0.4,0.6,0.8", "breadcrumbs (dense)"),
    "breadcrumbs (dense)": ("breadcrumbs", {}, "0.2,0.4,0.6,0.8", None),
}


def slug(name: str) -> str:
    return name.replace(" (", "-").replace(")", "").replace(" ", "_")


def run_variant(name: str, model: Any, tok: Any, vectors: list[Any], files: list[Path], tasks: list[Any],
                coll: dict[str, Any], key: dict[str, Any], workdir: Path, progress: bool,
                denominators: dict[str, float]) -> dict[str, Any]:
    from taskvec.eval import evaluate
    from taskvec.eval.stats import wilson
    from taskvec.weights.search import applied, merged_at, search_coefficients

    method, params, grid, _ = VARIANTS[name]
    t0 = time.perf_counter()
    res = search_coefficients(model, tok, vectors, tasks, method=method, grid=grid, params=dict(params),
                              limit=key["search_limit"], holdout=coll["holdout"]["n"], seed=coll["holdout"]["seed"],
                              batch_size=16, progress=progress)
    merged = merged_at(vectors, method, dict(params), res.best)
    per_task: dict[str, dict[str, Any]] = {}
    with applied(model, merged):
        for t in tasks:
            r = evaluate(model, tok, t, limit=key["eval_limit"], batch_size=16, progress=progress)
            k = sum(r.correct)
            ft = denominators[t.name]
            per_task[t.name] = {"accuracy": r.accuracy, "n": r.n, "ci95": wilson(k, r.n),
                                "normalized": r.accuracy / ft if ft else None, "correct": r.correct}
    k = sum(sum(v["correct"]) for v in per_task.values())
    n = sum(v["n"] for v in per_task.values())
    out = {"key": key, "lambda": res.best.lam, "search": res.to_dict(), "tasks": per_task,
           "pooled": {"accuracy": k / n, "n": n, "ci95": wilson(k, n)},
           "mean_normalized": sum(v["normalized"] for v in per_task.values()) / len(per_task),
           "eval_seconds": round(time.perf_counter() - t0, 1)}
    out["merge"] = taskvec_merge(method, params | {"lambda": res.best.lam}, files, workdir / f"{slug(name)}.safetensors")
    return out


def same_vector(name: str, twin: dict[str, Any], vectors: list[Any], files: list[Path], workdir: Path) -> dict[str, Any]:
    """An exact method's dense path at its core twin's lambda: the same vector (relative
    Frobenius difference over all modules), so its accuracy is the twin's; size/time/RSS measured."""
    from taskvec.weights.merge import merge_vectors

    method, params, _, _ = VARIANTS[name]
    lam = twin["lambda"]
    core = merge_vectors(method, vectors, None, {"lambda": lam})
    dense = merge_vectors(method, vectors, None, dict(params) | {"lambda": lam})
    e2 = n2 = 0.0
    for k in dense.names:
        a, b = core[k].to_dense().double(), dense[k].double()
        e2 += float((a - b).pow(2).sum())
        n2 += float(b.pow(2).sum())
    out = {k: v for k, v in twin.items() if k not in ("key", "merge")}
    return out | {"same_as": "core twin", "rel_difference": (e2 / n2) ** 0.5,
                  "merge": taskvec_merge(method, params | {"lambda": lam}, files, workdir / f"{slug(name)}.safetensors")}


def bases(files: list[Path], workdir: Path, M: int) -> list[dict[str, Any]]:
    """Core-space vs dense bases of the collection: storage and errors against the files."""
    from taskvec.basis import build_basis
    from taskvec.basis.core_basis import build_core_basis

    rows = []
    for method in ("pca", "autoencoder", "random_sample"):
        for space in ("core", "dense"):
            out = workdir / f"basis-{method}-{space}.safetensors"
            t0 = time.perf_counter()
            build = build_core_basis if space == "core" else build_basis
            b = build(files, out, method=method, m=M, seed=0)
            secs = time.perf_counter() - t0
            inf = b.info(vectors=files)
            rows.append({"method": method, "space": space, "M": M, "seconds": round(secs, 1),
                         "basis_bytes": inf["storage"]["basis_bytes"], "collection_bytes": inf["storage"]["collection_bytes"],
                         "basis_vs_collection": inf["storage"]["basis_vs_collection"],
                         "rel_error_measured": {r["task"]: r["rel_error_measured"] for r in inf["tasks"]}})
            b.close()
            out.unlink()
    return rows


def markdown(report: dict[str, Any]) -> str:
    from taskvec.eval.stats import mcnemar

    lines = ["| variant | lambda | file | merge time | peak RSS | accuracy, pooled [95% CI] | normalized | vs dense (only core / only dense right, p) |",
             "|---|---|---|---|---|---|---|---|"]
    vs = report["variants"]
    for name, v in vs.items():
        mg, pl = v["merge"], v["pooled"]
        pair = "-"
        dense = VARIANTS[name][3]
        if "rel_difference" in v:
            pair = f"same vector as its core twin (rel. difference {v['rel_difference']:.1e})"
        elif dense and dense in vs and "rel_difference" in vs[dense]:
            pair = "identical (exact method)"
        elif dense and dense in vs:
            a = [c for t in v["tasks"].values() for c in t["correct"]]
            b = [c for t in vs[dense]["tasks"].values() for c in t["correct"]]
            test = mcnemar(a, b)
            pair = f"{test.only_a} / {test.only_b}, p = {test.p_value:.3g}{' (significant)' if test.significant else ''}"
        lines.append(f"| {name} | {v['lambda']:g} | {mg['file_bytes'] / 2**20:.1f} MiB ({mg['storage']}) | "
                     f"{mg['seconds']:.1f} s | {mg['peak_rss_bytes'] / 2**20:.0f} MiB | {pl['accuracy']:.3f} "
                     f"[{pl['ci95'][0]:.3f}, {pl['ci95'][1]:.3f}] (n = {pl['n']}) | {100 * v['mean_normalized']:.1f}% | {pair} |")
    tasks = report["tasks"]
    lines += ["", "| variant | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, v in vs.items():
        cells = [f"{v['tasks'][t]['accuracy']:.3f} [{v['tasks'][t]['ci95'][0]:.2f}, {v['tasks'][t]['ci95'][1]:.2f}]" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.get("bases"):
        lines += ["", "| basis | space | M | file | vs the LoRA files | mean rel. error (measured) | build |", "|---|---|---|---|---|---|---|"]
        for b in report["bases"]:
            errs = [e for e in b["rel_error_measured"].values() if e is not None]
            lines.append(f"| {b['method']} | {b['space']} | {b['M']} | {b['basis_bytes'] / 2**20:.1f} MiB | "
                         f"{b['basis_vs_collection']:.2f}x | {sum(errs) / len(errs):.3f} | {b['seconds']} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", required=True, type=Path)
    p.add_argument("--variants", default="all", help="comma-separated variant names, or all")
    p.add_argument("--search-limit", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-limit", type=int, default=None, help="eval examples per task (default: the collection's)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/collection/lora"))
    p.add_argument("--skip-bases", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from taskvec.models import load_model
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector

    coll = load_collection(args.collection, "lora_merge_report")
    if coll is None:
        return 2
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"lora_merge_report: error: unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    tnames = list(coll["tasks"])
    files = [args.collection / coll["tasks"][t]["vector"] for t in tnames]
    eval_limit = args.eval_limit if args.eval_limit is not None else coll.get("eval_limit")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine_info(), "tasks": tnames,
                              "collection": str(args.collection), "variants": {}}
    model = tok = None
    denominators: dict[str, float] = {}
    vectors = [TaskVector.load(f) for f in files]
    tasks = [get_task(t) for t in tnames]
    for name in names:
        method, params, grid, _ = VARIANTS[name]
        key = {"variant": name, "method": method, "params": params, "grid": grid, "search_limit": args.search_limit,
               "eval_limit": eval_limit, "holdout": coll["holdout"], "base_fingerprint": coll["base_fingerprint"],
               "recipe": coll["recipe"]}
        path = args.out / f"{slug(name)}.json"
        old = read_json(path)
        if old and old.get("key") == key:
            report["variants"][name] = old
            print(f"{name}: cached", file=sys.stderr)
            continue
        # exact methods: the dense path gives the same vector, so it is compared, not re-evaluated
        twin = name.replace("(dense)", "(core)") if method in ("tsv", "iso_c", "iso_cts") and "(dense)" in name else None
        if twin and twin in report["variants"]:  # exact method: same vector, no second evaluation
            report["variants"][name] = same_vector(name, report["variants"][twin], vectors, files, work) | {"key": key}
            write_json(path, report["variants"][name])
            continue
        if model is None:
            model, tok = load_model(coll["model"])
            den_args = argparse.Namespace(eval_limit=eval_limit, batch_size=args.batch_size)
            denominators = denominators_for(model, tok, tasks, coll, args.collection, args.out, den_args,
                                            not args.no_progress)
        print(f"{name}: searching lambda over {grid}", file=sys.stderr)
        report["variants"][name] = run_variant(name, model, tok, vectors, files, tasks, coll, key, work,
                                               not args.no_progress, denominators)
        write_json(path, report["variants"][name])
    if not args.skip_bases:
        cached = read_json(args.out / "bases.json")
        M = len(files) // 2
        if cached and cached.get("M") == M and cached.get("files") == [f.name for f in files]:
            report["bases"] = cached["rows"]
        else:
            report["bases"] = bases(files, work, M)
            write_json(args.out / "bases.json", {"M": M, "files": [f.name for f in files], "rows": report["bases"]})
    md = markdown(report)
    summary = {k: v for k, v in report.items() if k != "variants"} | {
        "variants": {n: {k: x for k, x in v.items() if k != "tasks"} | {
            "tasks": {t: {k: x for k, x in r.items() if k != "correct"} for t, r in v["tasks"].items()}}
            for n, v in report["variants"].items()}}
    write_json(args.out / "report.json", summary)
    (args.out / "report.md").write_text(f"Measured {report['date']} on {describe(report['machine'])}.\n\n{md}")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
