"""docs/results.md agrees with the committed result files it was generated from.

The blocks between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers are pasted output of
benchmark scripts; these tests regenerate them from ``benchmarks/results`` and compare.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "docs" / "results.md"


def block(name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", RESULTS_MD.read_text(encoding="utf-8"),
                  re.S)
    assert m, f"no {name} block in docs/results.md"
    return m.group(1)


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))

    def load(name: str):
        sys.modules.pop(name, None)
        return importlib.import_module(name)
    return load


@pytest.mark.parametrize("variant", ["shared", "own"])
def test_merge_report_block_is_the_committed_report(bench, variant) -> None:
    mr = bench("merge_report")
    d = REPO / "benchmarks" / "results" / f"collection-v2-{variant}"
    report = json.loads((d / "merge_report.json").read_text())
    md = mr.markdown(report)
    if report.get("partial"):
        md = "(partial: the methods finished so far)\n\n" + md
    _same_tables(block(f"merge-v2-{variant}"), md)
    _same_tables((d / "merge_report.md").read_text(encoding="utf-8"), md)


def _same_tables(doc: str, fresh: str) -> None:
    """``doc`` is ``fresh``, except that the bootstrap interval of a table's last ("avg") cell may
    differ in its last digit (another numpy may draw differently); its estimate may not."""
    a, b = doc.strip().splitlines(), fresh.strip().splitlines()
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x == y:
            continue
        cx, cy = x.strip("|").split("|"), y.strip("|").split("|")
        assert cx[:-1] == cy[:-1], x
        nx, ny = _num(cx[-1]), _num(cy[-1])
        assert len(nx) == len(ny) == 3 and nx[0] == ny[0], x
        assert nx[1:] == pytest.approx(ny[1:], abs=0.3 if "%" in cx[-1] else 0.003), x


def test_avg_cells_hand_computed_and_the_goal_interval(bench) -> None:
    """The "avg" interval of a merge table: the unweighted mean of per-task accuracies, close to
    the normal approximation computed by hand; its normalized interval is the goals table's."""
    mr = bench("merge_report")
    # two tasks: 0.5 (n=100), 0.9 (n=1000); SE of the mean = sqrt(.25/100 + .09/1000) / 2 = 0.02546
    acc, norm = mr._avg_cells({"a": (0.5, 100), "b": (0.9, 1000)}, {"a": 0.5, "b": 0.9})
    est, lo, hi = _num(acc)
    assert est == 0.7 and lo == pytest.approx(0.7 - 1.96 * 0.02546, abs=0.004)
    assert hi == pytest.approx(0.7 + 1.96 * 0.02546, abs=0.004)
    assert _num(norm)[0] == 100.0 and _num(norm)[1] < 100.0 < _num(norm)[2]
    assert mr._avg_cells({"a": (0.5, 100)}, {"a": 0.0})[1] == "-"  # no fine-tuned rate: no ratio
    gi = bench("goal_intervals")
    own = REPO / "benchmarks" / "results" / "collection-v2-own" / "merge_report.json"
    goal = next(g for g in gi.merging_goals("own", own) if g[1].startswith("iso_c: "))
    iv = goal[3]()
    row = next(r for r in _rows(block("merge-v2-own").split("Normalized accuracy")[1].split("\n\n", 1)[1])
               if r[0] == "iso_c")
    assert _num(row[-1]) == pytest.approx([100 * iv.estimate, 100 * iv.low, 100 * iv.high], abs=0.051)


def test_variants_block_is_the_comparison_of_the_committed_reports(bench) -> None:
    vc = bench("variant_compare")
    d = REPO / "benchmarks" / "results"
    res = vc.compare(json.loads((d / "collection-v2-shared" / "merge_report.json").read_text()),
                     json.loads((d / "collection-v2-own" / "merge_report.json").read_text()))
    assert block("variants-v2").strip() == vc.markdown(res).strip()


def test_variants_classes_block_is_the_per_class_comparison(bench) -> None:
    vc = bench("variant_compare")
    d = REPO / "benchmarks" / "results"
    shared, own = (json.loads((d / f"collection-v2-{v}" / "merge_report.json").read_text()) for v in ("shared", "own"))
    assert vc.same_tasks(shared, own) == ["sst2", "trec", "ag_news"]
    res = vc.per_class(shared, own, vc.gold_classes(shared, vc.same_tasks(shared, own)))
    assert block("variants-v2-classes").strip() == vc.per_class_markdown(res).strip()


def test_per_class_splits_the_paired_test_by_gold_class(bench) -> None:
    vc = bench("variant_compare")
    shared = _report(["a"], {"a": [1, 1, 0, 0, 1]})
    own = _report(["a"], {"a": [0, 1, 1, 1, 1]})
    res = vc.per_class(shared, own, {"a": ["x", "y", "x", "y", "y"]})
    (row,) = res["a"]
    x, y = row["classes"]["x"], row["classes"]["y"]
    # class x = examples 0, 2: shared right alone on 0, own right alone on 2
    assert (x["n"], x["only_a"], x["only_b"], x["a_correct"], x["b_correct"]) == (2, 1, 1, 1, 1)
    # class y = examples 1, 3, 4: own right alone on 3
    assert (y["n"], y["only_a"], y["only_b"], y["a_correct"], y["b_correct"]) == (3, 1, 0, 3, 2)
    md = vc.per_class_markdown(res)
    assert "| task_arithmetic | 0.50 -> 0.50 (+0.0, p = 1) | 0.67 -> 1.00 (+33.3, p = 1) |" in md
    with pytest.raises(SystemExit, match="3 / 3 results for 2 examples"):
        vc.per_class(_report(["a"], {"a": [1, 0, 1]}), _report(["a"], {"a": [1, 0, 1]}), {"a": ["x", "y"]})


def _report(tasks: list[str], correct: dict[str, list[int]], lam: float = 0.4) -> dict:
    return {"tasks": tasks,
            "collection_summary": {t: {"finetuned_accuracy": 0.5} for t in tasks},
            "methods": {"task_arithmetic": {"lambda": lam, "mean_normalized": 1.0,
                                            "tasks": {t: {"correct": correct[t]} for t in tasks}}}}


def test_variant_compare_pairs_renamed_tasks_by_their_base_name(bench) -> None:
    vc = bench("variant_compare")
    shared = _report(["a", "b"], {"a": [1, 1, 0, 0], "b": [1, 0, 1, 0]})
    own = _report(["a-own-words", "b"], {"a-own-words": [1, 0, 1, 1], "b": [1, 0, 1, 0]}, lam=0.5)
    res = vc.compare(shared, own, n_boot=200)
    assert res["renamed"] == ["a"]
    (row,) = res["rows"]
    # task a: own right alone on examples 2, 3; shared right alone on example 1
    assert (row["per_task"]["a"]["only_a"], row["per_task"]["a"]["only_b"]) == (2, 1)
    assert row["per_task"]["b"]["only_a"] + row["per_task"]["b"]["only_b"] == 0
    assert (row["pooled"]["only_a"], row["pooled"]["only_b"], row["pooled"]["n"]) == (2, 1, 8)
    assert row["renamed_tasks"]["n"] == 4
    # mean over tasks of (own - shared) / 0.5: task a (0.75 - 0.5) / 0.5 = 0.5, task b 0 -> 0.25
    assert row["normalized_difference"]["estimate"] == pytest.approx(0.25)
    assert row["lambda"] == {"shared": 0.4, "own": 0.5}
    with pytest.raises(SystemExit, match="different tasks"):
        vc.compare(shared, _report(["a", "c"], {"a": [1], "c": [1]}))
    with pytest.raises(SystemExit, match="same examples"):
        vc.compare(shared, _report(["a", "b"], {"a": [1], "b": [1, 0, 1, 0]}))


def test_basis_v2_block_is_the_committed_report(bench) -> None:
    br = bench("basis_report")
    d = REPO / "benchmarks" / "results" / "collection-v2-shared" / "basis_report"
    if not (d / "basis_report.json").exists():
        assert block("basis-v2-shared").strip() == ""
        return
    md = br.markdown(json.loads((d / "basis_report.json").read_text()))
    assert block("basis-v2-shared").strip() == md.strip()
    assert (d / "basis_report.md").read_text(encoding="utf-8").strip() == md.strip()


def test_refresh_replace_block(bench) -> None:
    rd = bench("refresh_v2_docs")
    text = "a\n<!-- x:start -->\nold\nlines\n<!-- x:end -->\nb\n"
    assert rd.replace_block(text, "x", "new\n") == "a\n<!-- x:start -->\nnew\n<!-- x:end -->\nb\n"
    empty = "<!-- x:start -->\n<!-- x:end -->"
    assert rd.replace_block(empty, "x", "n") == "<!-- x:start -->\nn\n<!-- x:end -->"
    with pytest.raises(SystemExit, match="no <!-- y:start/end --> markers"):
        rd.replace_block(text, "y", "n")


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def _num(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell)]


def test_goals_block_matches_goal_intervals(bench, capsys) -> None:
    gi = bench("goal_intervals")
    assert gi.main([]) == 0
    fresh = _rows(capsys.readouterr().out.strip())
    docs = _rows(block("goals"))
    assert [r[:2] for r in docs] == [r[:2] for r in fresh]
    for d, f in zip(docs, fresh):
        assert _num(d[2]) == _num(f[2]), d[1]  # the estimate: no randomness
        # the interval: the same seeded draws; a tolerance in case another numpy draws differently
        assert _num(d[3]) == pytest.approx(_num(f[3]), abs=0.3), d[1]
        assert d[4] == f[4], d[1]


def test_refresh_in_place_regenerates_the_same_doc(bench, tmp_path) -> None:
    """The run directory is the results directory (collection_v2.sh's default): the copies are
    skipped and the regenerated doc equals the committed one."""
    import shutil

    rd = bench("refresh_v2_docs")
    res, own = tmp_path / "collection-v2-shared", tmp_path / "collection-v2-own"
    for d in (res, own):
        shutil.copytree(REPO / "benchmarks" / "results" / d.name, d, ignore=shutil.ignore_patterns("runs", "*.safetensors"))
    doc = tmp_path / "results.md"
    shutil.copy2(RESULTS_MD, doc)
    assert rd.main(["--collection", str(res), "--results", str(res), "--own", str(own), "--doc", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == RESULTS_MD.read_text(encoding="utf-8")


def test_merge_predictions_confusion_and_table(bench) -> None:
    mp = bench("merge_predictions")
    cm = mp.confusion([" a", " b"], [" a", " a", " b", " b", " b"], [" a", " b", " b", " b", " a"])
    assert cm == {" a": {" a": 1, " b": 1}, " b": {" a": 1, " b": 2}}
    with pytest.raises(ValueError):
        mp.confusion([" a"], [" a"], [])
    md = mp.markdown({"method": "m", "collection": "c", "coefficients": [0.5], "tasks": {
        "t": {"n": 5, "confusion": cm, "reproduces": False, "mismatches": 2}}})
    assert "| a | 1 | 1 |\n| b | 1 | 2 |" in md
    assert "reproduces the cached row's right/wrong per example: False (2 examples differ)" in md


def test_merge_predictions_refuses_a_missing_row(bench, tmp_path) -> None:
    mp = bench("merge_predictions")
    (tmp_path / "collection.json").write_text("{}")
    with pytest.raises(SystemExit, match="merge_report/nope.json not found"):
        mp.main(["--collection", str(tmp_path), "--method", "nope"])


def test_predictions_block_is_the_committed_confusion(bench) -> None:
    mp = bench("merge_predictions")
    f = REPO / "benchmarks" / "results" / "collection-v2-own" / "merge_report" / "task_arithmetic.predictions.json"
    res = json.loads(f.read_text())
    assert block("predictions-v2-own").strip() == mp.markdown(res).strip()
    row = json.loads((f.parent / "task_arithmetic.json").read_text())
    for task, r in res["tasks"].items():
        # the diagonal is the cached row's correct count; every example is in one cell
        assert sum(r["confusion"][g][g] for g in r["confusion"]) == sum(row["tasks"][task]["correct"])
        assert sum(sum(c.values()) for c in r["confusion"].values()) == row["tasks"][task]["n"] == r["n"]


def test_merge_predictions_names_missing_vector_files(bench, tmp_path) -> None:
    mp = bench("merge_predictions")
    (tmp_path / "collection.json").write_text(json.dumps({"tasks": {"a": {"vector": "a.safetensors"}}}))
    (tmp_path / "merge_report").mkdir()
    (tmp_path / "merge_report" / "m.json").write_text(json.dumps({"key": {"tasks": ["a"]}, "tasks": {"sst2": {}}}))
    with pytest.raises(SystemExit, match=r"lacks the vector files \['a.safetensors'\]"):
        mp.main(["--collection", str(tmp_path), "--method", "m", "--tasks", "sst2"])
