"""Shared vs own answer words: the same merge method on the two collection v2 variants, paired.

Usage: python benchmarks/variant_compare.py [--shared DIR] [--own DIR] [--json] [--n-boot 10000]

Six of the nine collection v2 tasks answer " yes"/" no" in the shared-words variant; in the
own-words variant each has answer words of its own (``<task>-own-words``: the same packaged data,
the same examples in the same order, another question and other label words). The other three
tasks (sst2, trec, ag_news) are the same tasks with the same vector files in both variants. Every
method's merged model is scored on every example of every eval split in both variants
(``merge_report.py``, per-example results kept), so the two variants' merged models can be
compared example by example:

- pooled accuracy (all nine tasks; and the six yes/no tasks alone), exact McNemar own vs shared;
- per task, exact McNemar; the number of tasks where own words are significantly better / worse;
- mean normalized accuracy (merged / that variant's individual fine-tuned accuracy, per task),
  own minus shared, with a paired bootstrap interval over the examples. The fine-tuned
  accuracies are held fixed (the rows keep rates only), so the interval covers the merged
  models' sampling only;
- per class, for the tasks that are the same in both variants (``--per-class``; reads the
  packaged task data for the gold labels): which classes the other vectors' answer words move.

Normalized accuracy is the measure of interference between the merged vectors; the accuracies
also differ because the individual vectors differ (e.g. QNLI own words 0.767 vs shared 0.824).
Reads the committed reports (and, for ``--per-class``, the packaged data); seconds, no model loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskvec.eval.bootstrap import paired_bootstrap  # noqa: E402
from taskvec.eval.stats import mcnemar, wilson  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SUFFIX = "-own-words"


def _base(task: str) -> str:
    return task[: -len(SUFFIX)] if task.endswith(SUFFIX) else task


def _correct(method: dict[str, Any], task: str) -> list[bool]:
    return [bool(c) for c in method["tasks"][task]["correct"]]


def compare(shared: dict[str, Any], own: dict[str, Any], n_boot: int = 10_000) -> dict[str, Any]:
    """Every method present in both reports, own against shared on the same examples."""
    own_of = {_base(t): t for t in own["tasks"]}
    if sorted(own_of) != sorted(shared["tasks"]):
        raise SystemExit(f"variant_compare: the reports merge different tasks: {sorted(shared['tasks'])} vs "
                         f"{sorted(own['tasks'])}")
    tasks = list(shared["tasks"])
    renamed = [t for t in tasks if own_of[t] != t]  # the tasks whose answer words differ
    ft = {"shared": {t: shared["collection_summary"][t]["finetuned_accuracy"] for t in tasks},
          "own": {t: own["collection_summary"][own_of[t]]["finetuned_accuracy"] for t in tasks}}
    rows = []
    for name, s in shared["methods"].items():
        o = own["methods"].get(name)
        if o is None:
            continue
        per = {}
        for t in tasks:
            a, b = _correct(o, own_of[t]), _correct(s, t)
            if len(a) != len(b):
                raise SystemExit(f"variant_compare: {name} {t}: {len(a)} vs {len(b)} examples; the variants "
                                 "must be scored on the same examples")
            per[t] = mcnemar(a, b).to_dict()

        def pooled(ts: list[str], o=o, s=s) -> dict[str, Any]:
            a = [c for t in ts for c in _correct(o, own_of[t])]
            b = [c for t in ts for c in _correct(s, t)]
            return mcnemar(a, b).to_dict() | {"own_ci95": list(wilson(sum(a), len(a))),
                                             "shared_ci95": list(wilson(sum(b), len(b)))}

        correct = {t: {"own": _correct(o, own_of[t]), "shared": _correct(s, t)} for t in tasks}

        def diff(r: dict[str, dict[str, float]]) -> float:
            return sum(r[t]["own"] / ft["own"][t] - r[t]["shared"] / ft["shared"][t] for t in r) / len(r)

        ci = paired_bootstrap(correct, diff, n_boot=n_boot, seed=0)
        rows.append({"method": name, "lambda": {"shared": s["lambda"], "own": o["lambda"]},
                     "pooled": pooled(tasks), "renamed_tasks": pooled(renamed), "per_task": per,
                     "mean_normalized": {"shared": s["mean_normalized"], "own": o["mean_normalized"]},
                     "normalized_difference": ci.to_dict()})
    return {"tasks": tasks, "renamed": renamed, "finetuned": ft, "rows": rows}


def same_tasks(shared: dict[str, Any], own: dict[str, Any]) -> list[str]:
    """The tasks under the same name in both reports (same data, answer words and vector)."""
    return [t for t in shared["tasks"] if t in own["tasks"]]


def gold_classes(report: dict[str, Any], tasks: list[str]) -> dict[str, list[str]]:
    """Each listed task's gold answer word per eval example, in the order the report scored them.

    Reads the packaged task data (no model); the split is the one the report's first method names.
    """
    from taskvec.tasks import get_task

    first = next(iter(report["methods"].values()))
    out = {}
    for name in tasks:
        task, rec = get_task(name), first["tasks"][name]
        examples = task.load(rec["split"])
        if len(examples) != rec["n"]:
            raise SystemExit(f"variant_compare: {name} {rec['split']} has {len(examples)} examples, the report "
                             f"scored {rec['n']}; per-class rows need whole-split reports")
        out[name] = [task.answer(ex) for ex in examples]
    return out


def per_class(shared: dict[str, Any], own: dict[str, Any], classes: dict[str, list[str]]) -> dict[str, Any]:
    """Per-class accuracy own vs shared (exact McNemar) for tasks scored identically in both variants.

    ``classes`` maps each task (present under the same name in both reports: same data, same
    answer words, same vector) to its gold answer word per example.
    """
    out: dict[str, Any] = {}
    for task, gold in classes.items():
        rows = []
        for name, s in shared["methods"].items():
            o = own["methods"].get(name)
            if o is None:
                continue
            a, b = _correct(o, task), _correct(s, task)
            if not len(a) == len(b) == len(gold):
                raise SystemExit(f"variant_compare: {name} {task}: {len(a)} / {len(b)} results for "
                                 f"{len(gold)} examples")
            cells = {}
            for c in sorted(set(gold)):
                idx = [i for i, g in enumerate(gold) if g == c]
                cells[c] = mcnemar([a[i] for i in idx], [b[i] for i in idx]).to_dict()
            rows.append({"method": name, "classes": cells})
        out[task] = rows
    return out


def per_class_markdown(res: dict[str, Any]) -> str:
    """One table per task: per-class accuracy shared -> own, points and exact McNemar p."""
    out = ["Per class (gold answer word; accuracy with shared -> own words, points, exact McNemar p; "
           "n per class in the header). These tasks have the same data, answer words and vector file in "
           "both variants, so any difference comes from the other vectors in the merge.", ""]
    for task, rows in res.items():
        if not rows:
            continue
        names = list(rows[0]["classes"])
        out += [f"{task}:", "", "| method | " + " | ".join(
            f"{c.strip()} (n = {rows[0]['classes'][c]['n']})" for c in names) + " |",
            "|---|" + "---|" * len(names)]
        for r in rows:
            out.append(f"| {r['method']} | " + " | ".join(
                f"{t['b_correct'] / t['n']:.2f} -> {t['a_correct'] / t['n']:.2f} ({_pts(t)}, p = {t['p_value']:.2g})"
                for t in r["classes"].values()) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _pts(t: dict[str, Any]) -> str:
    return f"{100 * (t['a_correct'] - t['b_correct']) / t['n']:+.1f}"


def markdown(res: dict[str, Any]) -> str:
    """The comparison tables (own vs shared for every method both reports have)."""
    if not res["rows"]:
        return "(no method in both reports yet)\n"
    n_all, n_ren = res["rows"][0]["pooled"]["n"], res["rows"][0]["renamed_tasks"]["n"]
    out = [f"Own minus shared, same examples; pooled over all nine tasks (n = {n_all}) and over the six tasks "
           f"whose answer words differ (n = {n_ren}); exact McNemar (discordant: right only with own words / "
           "only with shared words); normalized difference: mean over tasks of merged / individual "
           "fine-tuned, own minus shared, paired bootstrap 95% interval (fine-tuned rates fixed).", "",
           "| method | lambda shared / own | pooled shared | pooled own | points | discordant | p | six tasks: "
           "points | discordant | p | tasks better / worse (p < 0.05) | mean normalized shared / own | "
           "difference [95% CI] |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in res["rows"]:
        p, q, d = r["pooled"], r["renamed_tasks"], r["normalized_difference"]
        better = sum(1 for t in r["per_task"].values() if t["significant"] and t["a_correct"] > t["b_correct"])
        worse = sum(1 for t in r["per_task"].values() if t["significant"] and t["a_correct"] < t["b_correct"])
        out.append(f"| {r['method']} | {r['lambda']['shared']:g} / {r['lambda']['own']:g} | "
                   f"{p['b_correct'] / p['n']:.3f} | {p['a_correct'] / p['n']:.3f} | {_pts(p)} | "
                   f"{p['only_a']} / {p['only_b']} | {p['p_value']:.2g} | {_pts(q)} | {q['only_a']} / {q['only_b']} | "
                   f"{q['p_value']:.2g} | {better} / {worse} | {100 * r['mean_normalized']['shared']:.1f}% / "
                   f"{100 * r['mean_normalized']['own']:.1f}% | {100 * d['estimate']:+.1f} "
                   f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] |")
    out += ["", "Per task (points own minus shared, exact McNemar p):", "",
            "| method | " + " | ".join(res["tasks"]) + " |", "|---|" + "---|" * len(res["tasks"])]
    for r in res["rows"]:
        out.append(f"| {r['method']} | " + " | ".join(f"{_pts(t)} (p = {t['p_value']:.2g})"
                                                     for t in r["per_task"].values()) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", default=str(RESULTS / "collection-v2-shared"))
    p.add_argument("--own", default=str(RESULTS / "collection-v2-own"))
    p.add_argument("--json", action="store_true", help="the comparison as JSON instead of markdown")
    p.add_argument("--n-boot", type=int, default=10_000)
    p.add_argument("--per-class", action="store_true",
                   help="per-class accuracy of the tasks that are the same in both variants, instead")
    args = p.parse_args(argv)
    reports = {}
    for k in ("shared", "own"):
        f = Path(getattr(args, k)) / "merge_report.json"
        if not f.exists():
            raise SystemExit(f"variant_compare: {f} not found (run VARIANT={k} bash benchmarks/collection_v2.sh)")
        reports[k] = json.loads(f.read_text(encoding="utf-8"))
    if args.per_class:
        res = per_class(reports["shared"], reports["own"], gold_classes(reports["shared"], same_tasks(reports["shared"],
                                                                                                   reports["own"])))
        print(json.dumps(res, indent=1) if args.json else per_class_markdown(res), end="" if not args.json else "\n")
        return 0
    res = compare(reports["shared"], reports["own"], n_boot=args.n_boot)
    print(json.dumps(res, indent=1) if args.json else markdown(res), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
