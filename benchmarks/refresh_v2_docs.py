"""Refresh the collection v2 blocks (shared and own words) of docs/results.md from a run's caches.

Usage: python benchmarks/refresh_v2_docs.py [--collection benchmarks/results/collection-v2-shared]
       [--results benchmarks/results/collection-v2-shared] [--doc docs/results.md]

Since 2026-12-06 the run directory *is* the committed results directory (collection_v2.sh's
default), so the copies below are skipped; a run elsewhere (``--collection runs/...``) is copied.

While `benchmarks/collection_v2.sh` runs (hours), this copies what has finished into the
committed results and regenerates the pasted blocks, so every number in the docs comes from a
committed file:

1. merge report: the cached search logs and results of ``<collection>/merge_report/`` are copied
   to ``<results>/merge_report/``; the report is the run's ``merge_report.json`` (every global row
   and the negation) plus the finished per-task rows (``<method>-per-task.json``, in the order
   the script runs them); it is partial until all of them are in. Block ``merge-v2-shared``.
2. basis report: ``<collection>/basis_report/*.json`` and ``basis_report.md`` (written after each
   basis; ``basis_report.py --report-only`` rewrites them from the caches) are copied to
   ``<results>/basis_report/``. Block ``basis-v2-shared``.
3. goals: ``goal_intervals.py``'s table. Block ``goals``.
4. own-words variant (``--own``, default ``benchmarks/results/collection-v2-own``), when its
   ``merge_report.json`` exists: its merge report (block ``merge-v2-own``, as in 1.) and the paired
   comparison of the two variants (``variant_compare.py``, block ``variants-v2``).

No model is loaded; seconds. ``tests/test_results_docs.py`` checks the blocks against the files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_TASK_ORDER = ("task_arithmetic", "ties", "dare_ties", "iso_c", "iso_cts", "breadcrumbs", "tsv")


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- name:start -->`` and ``<!-- name:end -->`` set to ``body``."""
    pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"refresh_v2_docs: no <!-- {name}:start/end --> markers in the doc; add them where the "
                         "block belongs")
    return pattern.sub(lambda m: m.group(1) + body.strip() + "\n" + m.group(2), text, count=1)


def copy_files(src: Path, dst: Path, patterns: tuple[str, ...]) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for pat in patterns:
        for f in sorted(src.glob(pat)):
            if (dst / f.name).exists() and (dst / f.name).samefile(f):
                continue  # the run directory is the results directory
            shutil.copy2(f, dst / f.name)
            n += 1
    return n


def merge_block(collection: Path, results: Path) -> str:
    sys.path.insert(0, str(HERE))
    import merge_report

    cache = collection / "merge_report"
    copy_files(cache, results / "merge_report", ("*.json", "*.jsonl"))
    report = json.loads((collection / "merge_report.json").read_text(encoding="utf-8"))
    report["methods"] = {k: v for k, v in report["methods"].items() if not k.endswith(" (per-task)")}
    done = [m for m in PER_TASK_ORDER if (cache / f"{m}-per-task.json").exists()]
    for m in done:
        report["methods"][f"{m} (per-task)"] = json.loads((cache / f"{m}-per-task.json").read_text(encoding="utf-8"))
    final = len(done) == len(PER_TASK_ORDER) and "negation" in report
    return merge_report.write_report(results, report, final=final)


def basis_block(collection: Path, results: Path) -> str | None:
    cache = collection / "basis_report"
    if not (cache / "basis_report.md").exists():
        return None
    copy_files(cache, results / "basis_report", ("*.json", "basis_report.md"))
    return (cache / "basis_report.md").read_text(encoding="utf-8")


def variants_block(shared: Path, own: Path) -> str:
    sys.path.insert(0, str(HERE))
    import variant_compare

    return variant_compare.markdown(variant_compare.compare(
        json.loads((shared / "merge_report.json").read_text(encoding="utf-8")),
        json.loads((own / "merge_report.json").read_text(encoding="utf-8"))))


def classes_block(shared: Path, own: Path) -> str:
    sys.path.insert(0, str(HERE))
    import variant_compare as vc

    reports = [json.loads((d / "merge_report.json").read_text(encoding="utf-8")) for d in (shared, own)]
    return vc.per_class_markdown(vc.per_class(*reports, vc.gold_classes(reports[0], vc.same_tasks(*reports))))


def goals_block() -> str:
    sys.path.insert(0, str(HERE))
    import goal_intervals

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        goal_intervals.main([])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collection", default=str(HERE / "results" / "collection-v2-shared"))
    p.add_argument("--results", default=str(HERE / "results" / "collection-v2-shared"))
    p.add_argument("--own", default=str(HERE / "results" / "collection-v2-own"),
                   help="the own-words variant's run directory (its committed results directory)")
    p.add_argument("--doc", default=str(HERE.parent / "docs" / "results.md"))
    args = p.parse_args(argv)
    collection, results, doc = Path(args.collection), Path(args.results), Path(args.doc)
    if not (collection / "merge_report.json").exists():
        raise SystemExit(f"refresh_v2_docs: {collection}/merge_report.json not found (run collection_v2.sh first)")
    text = doc.read_text(encoding="utf-8")
    text = replace_block(text, "merge-v2-shared", merge_block(collection, results))
    basis = basis_block(collection, results)
    if basis is not None:
        text = replace_block(text, "basis-v2-shared", basis)
    own = Path(args.own)
    if (own / "merge_report.json").exists():
        text = replace_block(text, "merge-v2-own", merge_block(own, own))
        text = replace_block(text, "variants-v2", variants_block(results, own))
        text = replace_block(text, "variants-v2-classes", classes_block(results, own))
        pred = own / "merge_report" / "task_arithmetic.predictions.json"
        if pred.exists():
            sys.path.insert(0, str(HERE))
            import merge_predictions

            text = replace_block(text, "predictions-v2-own",
                                 merge_predictions.markdown(json.loads(pred.read_text(encoding="utf-8"))))
    text = replace_block(text, "goals", goals_block())  # after the copies: the goals read the results
    tmp = doc.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)
    print(f"refreshed {doc}: merge report, {'basis report, ' if basis else ''}"
          f"{'own-words merge report and variant comparison, ' if (own / 'merge_report.json').exists() else ''}goals",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
