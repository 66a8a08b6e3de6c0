"""95% bootstrap intervals of every goal stated in docs/results.md, from the committed result files.

Usage: python benchmarks/goal_intervals.py [--json] [--n-boot 10000]

A goal "statistic >= bound" is met only where the interval's lower end clears the bound. Where
the result files keep per-example results, the interval is a paired bootstrap (examples
resampled within each task, the same indices for every method); where they keep only rates and
n (runs saved before taskvec 0.9), every accuracy is redrawn as an independent binomial, which
for differences and ratios of methods scored on the same examples is wider: conservative.
(taskvec.eval.bootstrap.) Seconds on a 2-core CPU; no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from taskvec.eval.bootstrap import (  # noqa: E402
    binomial_bootstrap,
    mean_difference,
    mean_ratio,
    paired_bootstrap,
    ratio_of_means,
)

RESULTS = Path(__file__).resolve().parent / "results"
Goal = tuple[str, str, float, Callable]  # (section, goal, bound, interval thunk)


def _rate_row(r: dict) -> tuple[float, int]:
    return float(r["accuracy"]), int(r["n"])


def merging_goals(name: str, report: Path, summary_key: str = "collection_summary") -> Iterator[Goal]:
    """Average normalized accuracy (merged / individual fine-tuned, per task) >= 85%, per method."""
    rep = json.loads(report.read_text())
    summary = rep[summary_key]
    for method, m in rep["methods"].items():
        rates = {t: {"merged": _rate_row(r), "ft": (float(summary[t]["finetuned_accuracy"]), int(r["n"]))}
                 for t, r in m["tasks"].items()}
        yield (name, f"{method}: mean normalized accuracy >= 85%", 0.85,
               lambda rates=rates: binomial_bootstrap(rates, mean_ratio("merged", "ft"), **OPTS))


def _activation_rows(path: Path) -> dict[str, dict]:
    rows = json.loads(path.read_text())["rows"]
    out: dict[str, dict] = {}
    for r in rows:
        key = r["method"] if r.get("kind") in (None, "prompt") else r["kind"]
        if r.get("mode"):
            key = f"{key}:{r['mode']}"
        out.setdefault(key, r)
    return out


def basis_goals() -> Iterator[Goal]:
    """Bases with M = T/2 (4 of 9): taskvec's addition keeps >= 95% of the full collection's pooled
    accuracy (paired: the same 100 examples per task; equal n, so pooled = mean over tasks)."""
    d = RESULTS / "collection" / "lora" / "basis_report"
    full = json.loads((d / "full.json").read_text())["tasks"]
    for f in sorted(d.glob("*-m4.json")):
        b = json.loads(f.read_text())
        correct = {t: {"basis": b["addition"]["tasks"][t]["correct"], "full": full[t]["correct"]} for t in full}
        yield ("bases, 9-task collection v1 (n = 100 per task, paired)",
               f"{b['method']} M = 4: addition keeps >= 95% of the full collection", 0.95,
               lambda c=correct: paired_bootstrap(c, ratio_of_means("basis", "full"), **OPTS))


def basis_v2_goals() -> Iterator[Goal]:
    """Collection v2 bases with M = T/2 (4 of 9): "kept of full collection" (the basis addition's mean
    normalized accuracy / the full collection's) >= 95%, paired bootstrap over every eval example
    (the fine-tuned denominators are held fixed: the runs kept their rates only)."""
    d = RESULTS / "collection-v2-shared" / "basis_report"
    if not (d / "full.json").exists():
        return
    full = json.loads((d / "full.json").read_text())["tasks"]
    ft = json.loads((d / "basis_report.json").read_text())["denominators"]

    def kept(acc: dict) -> float:
        return (sum(acc[t]["basis"] / ft[t] for t in acc) / sum(acc[t]["full"] / ft[t] for t in acc))

    for f in sorted(d.glob("*-m4.json")):
        b = json.loads(f.read_text())
        correct = {t: {"basis": b["addition"]["tasks"][t]["correct"], "full": full[t]["correct"]} for t in full}
        yield ("bases, collection v2 shared words (whole eval splits, paired)",
               f"{b['method']} M = 4: addition keeps >= 95% of the full collection", 0.95,
               lambda c=correct: paired_bootstrap(c, kept, **OPTS))


def design_activation_goals() -> Iterator[Goal]:
    """The six design tasks, 2026-11-22 defaults (rates only): residual diff / FV goals."""
    files = sorted((RESULTS / "fv").glob("*-activations-eval.json"))
    for key, label in (("residual_vector:diff", "residual vector (diff)"), ("residual_vector:replace",
                       "residual vector (replace)"), ("function_vector", "function vector")):
        rates = {}
        for f in files:
            rows = _activation_rows(f)
            rates[f.name] = {"v": _rate_row(rows[key]), "zs": _rate_row(rows["zero-shot"]),
                             "icl": _rate_row(rows["10-shot ICL"])}
        sec = "design tasks, SmolLM2 (rates only)"
        yield (sec, f"{label}: mean lift over zero-shot >= 30 points", 0.30,
               lambda r=rates: binomial_bootstrap(r, mean_difference("v", "zs"), **OPTS))
        yield (sec, f"{label}: reaches >= 75% of 10-shot ICL (ratio of means)", 0.75,
               lambda r=rates: binomial_bootstrap(r, ratio_of_means("v", "icl"), **OPTS))


def design_soft_goal() -> Iterator[Goal]:
    """Reduced-settings soft table (rates only): soft mean >= 10-shot ICL mean."""
    files = sorted((RESULTS / "soft").glob("*-compare.json"))
    for subset, keep in (("7 tasks", lambda f: True), ("6 ICL tasks", lambda f: not f.name.startswith("sst2"))):
        rates = {f.name: {"soft": _rate_row(_activation_rows(f)["soft_task_vector"]),
                          "icl": _rate_row(_activation_rows(f)["10-shot ICL"])} for f in files if keep(f)}
        yield ("design tasks, soft vectors at reduced settings (rates only)",
               f"soft vector mean - 10-shot ICL mean >= 0 ({subset})", 0.0,
               lambda r=rates: binomial_bootstrap(r, mean_difference("soft", "icl"), **OPTS))


def fresh_goals(model: str) -> Iterator[Goal]:
    """The six fresh tasks (per-example results: paired bootstrap)."""
    files = sorted((RESULTS / "fresh" / model).glob("*-compare.json"))
    correct = {}
    for f in files:
        rows = _activation_rows(f)
        correct[f.name] = {"zs": rows["zero-shot"]["correct"], "icl": rows["10-shot ICL"]["correct"],
                           "rv": rows["residual_vector:diff"]["correct"] if "residual_vector:diff" in rows
                           else rows["residual_vector"]["correct"],
                           "fv": rows["function_vector"]["correct"], "soft": rows["soft_task_vector"]["correct"]}
    sec = f"fresh tasks, {model} (paired)"
    for v, label in (("rv", "residual vector"), ("fv", "function vector")):
        yield (sec, f"{label}: mean lift over zero-shot >= 30 points", 0.30,
               lambda v=v: paired_bootstrap(correct, mean_difference(v, "zs"), **OPTS))
        yield (sec, f"{label}: reaches >= 75% of 10-shot ICL (ratio of means)", 0.75,
               lambda v=v: paired_bootstrap(correct, ratio_of_means(v, "icl"), **OPTS))
    yield (sec, "soft vector mean - 10-shot ICL mean >= 0", 0.0,
           lambda: paired_bootstrap(correct, mean_difference("soft", "icl"), **OPTS))


def all_goals() -> Iterator[Goal]:
    yield from merging_goals("collection v1 (n = 300 per task, rates only)",
                             RESULTS / "collection" / "merge_report.json")
    v2 = RESULTS / "collection-v2-shared" / "merge_report.json"
    if v2.exists():
        yield from merging_goals("collection v2 shared words (whole eval splits; fine-tuned rates only)", v2)
    own = RESULTS / "collection-v2-own" / "merge_report.json"
    if own.exists():
        yield from merging_goals("collection v2 own words (whole eval splits; fine-tuned rates only)", own)
    yield from basis_goals()
    yield from basis_v2_goals()
    yield from design_activation_goals()
    yield from design_soft_goal()
    for model in ("smollm2-135m", "gemma3-270m"):
        if (RESULTS / "fresh" / model).is_dir():
            yield from fresh_goals(model)


OPTS: dict = {"n_boot": 10_000, "seed": 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON list instead of the markdown table")
    p.add_argument("--n-boot", type=int, default=10_000)
    args = p.parse_args(argv)
    OPTS["n_boot"] = args.n_boot
    out = []
    for section, goal, bound, thunk in all_goals():
        ci = thunk()
        out.append({"section": section, "goal": goal, "bound": bound, **ci.to_dict(), "met": ci.clears(bound)})
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print("| results | goal | estimate | 95% bootstrap interval | met (lower end clears the bound) |")
    print("|---|---|---:|---|---|")
    for r in out:
        pct = r["bound"] != 0.0 or "lift" in r["goal"]
        f = (lambda x: f"{100 * x:.1f}%") if pct and "lift" not in r["goal"] else (lambda x: f"{100 * x:+.1f} pts")
        print(f"| {r['section']} | {r['goal']} | {f(r['estimate'])} | [{f(r['low'])}, {f(r['high'])}] | "
              f"{'**yes**' if r['met'] else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
