"""The benchmark report scripts end to end on a tiny collection (build -> merge report -> basis report)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from taskvec.models import tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A 4-task collection of a tiny Llama, 2 training steps each (``build_collection.py``)."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(REPO / "benchmarks"))
    for m in ("build_collection", "merge_report", "basis_report", "collection_table"):
        sys.modules.pop(m, None)
    d = tmp_path_factory.mktemp("reports")
    model, tok = tiny_model("llama", seed=0)
    model.save_pretrained(d / "tiny")
    tok.save_pretrained(d / "tiny")
    bc = importlib.import_module("build_collection")
    rc = bc.main(["--out", str(d / "coll"), "--model", str(d / "tiny"), "--tasks", "sst2,trec,cola,rte",
                  "--steps", "2", "--batch-size", "4", "--eval-limit", "6", "--holdout", "12", "--no-progress"])
    assert rc == 0
    yield d / "coll"
    mp.undo()


def test_collection_rows_carry_intervals_paired_test_and_early_stopping(collection, tmp_path):
    row = json.loads((collection / "sst2.json").read_text())
    lo, hi = row["finetuned_ci95"]
    assert lo <= row["finetuned_accuracy"] <= hi and row["n"] == 6
    vz = row["vs_zero_shot"]
    assert set(vz) == {"only_finetuned", "only_zero_shot", "p_value", "above_zero_shot"} and 0 <= vz["p_value"] <= 1
    # early stopping: a one-task collection, the held-out slice scored every step
    bc = importlib.import_module("build_collection")
    tiny = collection.parent / "tiny"
    rc = bc.main(["--out", str(tmp_path / "es"), "--model", str(tiny), "--tasks", "sst2", "--steps", "3",
                  "--batch-size", "4", "--eval-limit", "6", "--holdout", "12", "--eval-every", "1",
                  "--patience", "1", "--no-progress"])
    assert rc == 0
    es = json.loads((tmp_path / "es" / "sst2.json").read_text())
    assert es["recipe"]["eval_every"] == 1 and es["early_stopping"]["best_step"] in (1, 2, 3)
    summary = json.loads((tmp_path / "es" / "collection.json").read_text())
    assert summary["tasks"]["sst2"]["early_stopping"] == es["early_stopping"]


def test_collection_table_partial_and_by_hand(collection, tmp_path, capsys):
    """collection_table.py reads finished task rows (no collection.json needed) and sorts keep / drop."""
    ct = importlib.import_module("collection_table")
    assert ct.main([str(collection)]) == 0
    out = capsys.readouterr().out
    rows = [ln.split(" | ")[0] for ln in out.splitlines() if ln.startswith("| ")]
    assert rows == ["| task", "| cola", "| rte", "| sst2", "| trec"]  # header, then one row per task
    row = {"task": "a", "split": "validation", "n": 10, "zero_shot_accuracy": 0.2, "finetuned_accuracy": 0.9,
           "zero_shot_ci95": [0.1, 0.3], "finetuned_ci95": [0.8, 0.95],
           "vs_zero_shot": {"only_finetuned": 7, "only_zero_shot": 0, "p_value": 0.015625, "above_zero_shot": True},
           "early_stopping": {"best_step": 50, "last_step": 250, "stopped_early": True}, "train_seconds": 90}
    (tmp_path / "a.json").write_text(json.dumps(row))
    (tmp_path / "b.json").write_text(json.dumps(row | {"task": "b", "vs_zero_shot": {}}))
    text = ct.table(ct.task_rows(tmp_path))
    assert "| a | validation | 10 | 0.200 [0.100, 0.300] | 0.900 [0.800, 0.950] | +70.0 | 7 / 0 | 0.016 | yes | - | - | 50 / 250 | 1.5 min |" in text
    assert "merged: a." in text and "dropped from merging: none." in text and "recorded one): b." in text
    assert ct.main([str(tmp_path / "empty")]) == 2
    # majority class: RTE's validation split holds 146 entailment of 277 (counted by hand from the file)
    rte = {"task": "rte", "split": "validation", "n": 277, "eval": {"limit": None}, "finetuned_ci95": [0.6, 0.7]}
    assert ct.majority_rate(rte) == 146 / 277
    assert ct.majority_cells(rte) == "0.527 | yes"
    assert ct.majority_cells(rte | {"finetuned_ci95": [0.5, 0.6]}) == "0.527 | no"
    assert ct.majority_cells(rte | {"n": 276}) == "- | -"  # not the examples the row scored


def test_merge_report_on_tiny_collection(collection, capsys):
    mr = importlib.import_module("merge_report")
    rc = mr.main(["--collection", str(collection), "--methods", "task_arithmetic,ties", "--grid", "0.5,1",
                  "--search-limit", "4", "--negate", "sst2:trec", "--negate-grid", "0.5,1", "--no-progress",
                  "--per-task"])
    assert rc == 0
    rep = json.loads((collection / "merge_report.json").read_text())
    assert set(rep["methods"]) == {"task_arithmetic", "ties", "task_arithmetic (per-task)", "ties (per-task)"}
    per = rep["methods"]["ties (per-task)"]
    assert len(per["coefficients"]) == 4 and all(c in (0.5, 1.0) for c in per["coefficients"])
    for m in rep["methods"].values():
        assert m["lambda"] in (0.5, 1.0)
        assert set(m["tasks"]) == {"sst2", "trec", "cola", "rte"}
        assert all(0.0 <= t["accuracy"] <= 1.0 for t in m["tasks"].values())
    assert rep["negation"]["target"] == "sst2" and rep["partial"] is False
    logs = sorted(p.name for p in (collection / "merge_report").glob("*.search.jsonl"))
    assert logs == ["task_arithmetic.search.jsonl", "ties.search.jsonl"]
    # global and per-task searches share a log: the 2 global settings once, then 4 x 1 coordinate steps
    assert len((collection / "merge_report" / "ties.search.jsonl").read_text().splitlines()) == 1 + 2 + 4
    cap = capsys.readouterr()
    out = cap.out
    # order: global searches, then the negation (minutes), then the per-task searches (hours)
    assert cap.err.index("ties: searching") < cap.err.index("negation: sst2") < cap.err.index(
        "task_arithmetic (per-task): searching")
    assert "| task_arithmetic |" in out and "Methods ranked by pooled accuracy" in out
    ta = next(ln for ln in out.splitlines() if ln.startswith("| task_arithmetic |"))
    acc, ci = rep["methods"]["task_arithmetic"]["tasks"]["sst2"]["accuracy"], \
        rep["methods"]["task_arithmetic"]["tasks"]["sst2"]["ci95"]
    assert f"| {acc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |" in ta  # every accuracy cell carries its interval
    for m in rep["methods"].values():
        for t in m["tasks"].values():
            assert len(t["correct"]) == t["n"] and abs(sum(t["correct"]) / t["n"] - t["accuracy"]) < 1e-6
    # per-task searches for a subset only (all cached now)
    argv = ["--collection", str(collection), "--methods", "task_arithmetic,ties", "--grid", "0.5,1",
            "--search-limit", "4", "--negate", "none", "--no-progress"]
    assert mr.main([*argv, "--per-task", "ties"]) == 0
    rep = json.loads((collection / "merge_report.json").read_text())
    assert list(rep["methods"]) == ["task_arithmetic", "ties", "ties (per-task)"]
    with pytest.raises(SystemExit, match="not in --methods"):
        mr.main([*argv, "--per-task", "tsv"])
    # a per-task grid of its own (extended where a coefficient sat at an edge): the global row stays cached
    capsys.readouterr()
    assert mr.main([*argv, "--per-task", "ties", "--per-task-grid", "ties=0.5,1,1.5"]) == 0
    rep = json.loads((collection / "merge_report.json").read_text())
    assert rep["methods"]["ties"]["key"]["grid"] == "0.5,1"
    per = rep["methods"]["ties (per-task)"]
    assert per["key"]["grid"] == "0.5,1,1.5" and per["search"]["grid"] == [0.5, 1.0, 1.5]
    assert all(c in (0.5, 1.0, 1.5) for c in per["coefficients"])
    err = capsys.readouterr().err
    assert "ties: cached" in err and "ties (per-task): searching over 0.5,1,1.5" in err
    with pytest.raises(SystemExit, match="--per-task-grid .* not in --methods"):
        mr.main([*argv, "--per-task-grid", "tsv=0.5,1"])
    # a named variant (the LoRA-native TIES) sits next to the dense method, with its own cache and log;
    # the dense rows stay cached (their keys do not change)
    assert mr.main([*argv[:2], "--methods", "task_arithmetic,ties,ties_core", "--variant", "ties_core=ties:space=core",
                    *argv[4:]]) == 0
    rep = json.loads((collection / "merge_report.json").read_text())
    assert list(rep["methods"]) == ["task_arithmetic", "ties", "ties_core"]
    core = rep["methods"]["ties_core"]
    assert core["key"]["method"] == "ties" and core["key"]["params"] == {"space": "core"}
    assert core["key"]["variant"] == "ties_core" and "variant" not in rep["methods"]["ties"]["key"]
    assert (collection / "merge_report" / "ties_core.search.jsonl").exists()
    cap = capsys.readouterr()
    assert "ties: cached" in cap.err
    line = next(ln for ln in cap.out.splitlines() if ln.startswith("| ties_core | ties |"))
    pooled = {m: [c for t in rep["tasks"] for c in rep["methods"][m]["tasks"][t]["correct"]] for m in ("ties", "ties_core")}
    from taskvec.eval.stats import mcnemar

    t = mcnemar(pooled["ties_core"], pooled["ties"])
    assert f"| {t.only_a} / {t.only_b} | {t.p_value:.2g} |" in line
    with pytest.raises(SystemExit, match="NAME=METHOD"):
        mr.main([*argv, "--variant", "=ties"])
    with pytest.raises(SystemExit, match="is not KEY=VALUE"):
        mr.main([*argv, "--variant", "x=ties:space"])


def test_merge_report_paired_table_by_hand():
    mr = importlib.import_module("merge_report")
    ta = {"x": [1, 0, 0, 0], "y": [1, 1, 0, 0]}   # 3 of 8
    ti = {"x": [1, 1, 1, 1], "y": [1, 1, 1, 0]}   # 7 of 8: ti-only 4, ta-only 0 -> p = 2 / 2**4
    report = {"tasks": ["x", "y"], "methods": {
        m: {"lambda": lam, "tasks": {t: {"correct": c} for t, c in cs.items()}}
        for m, lam, cs in (("task_arithmetic", 0.3, ta), ("ties", 1.0, ti))}}
    from taskvec.eval.stats import wilson

    rows = mr.paired_table(report)
    lo, hi = wilson(7, 8)
    assert rows[2] == f"| 1 | ties | 1 | 0.875 [{lo:.3f}, {hi:.3f}] | 8 | +50.0 | 4 / 0 | 0.12 | no | 0 / 0 |"
    assert rows[3].startswith("| 2 | task_arithmetic | 0.3 | 0.375 [")
    report["methods"]["ties"]["search"] = {"grid": [0.5, 0.75, 1.0]}  # 1 is the grid's top: marked
    assert mr.paired_table(report)[2].startswith("| 1 | ties | 1 (grid top) | 0.875")
    # a per-task row names each task whose coefficient sits at an edge of the grid
    report["methods"]["ties"]["search"] = {"grid": [0.5, 0.75, 1.0], "per_task": True, "tasks": ["x", "y"],
                                           "best": {"coefficients": [0.75, 0.5]}}
    assert mr.paired_table(report)[2].startswith("| 1 | ties | 1 (grid top) (coefficients at the grid's edge: "
                                                 "y bottom) | 0.875")


def test_basis_report_on_tiny_collection(collection, capsys, monkeypatch):
    br = importlib.import_module("basis_report")
    assert br.parse_ms("2,half,T-1", 9) == [2, 4, 8]
    rc = br.main(["--collection", str(collection), "--methods", "pca,random_sample", "--ms", "1,T-1",
                  "--grid", "0.5,1", "--search-limit", "4", "--eval-limit", "5", "--negate", "sst2:trec",
                  "--negate-grid", "1", "--negate-ms", "all", "--no-progress"])
    assert rc == 0
    rep = json.loads((collection / "basis_report" / "basis_report.json").read_text())
    rows = {(r["method"], r["M"]): r for r in rep["rows"]}
    assert set(rows) == {("pca", 1), ("pca", 3), ("random_sample", 1), ("random_sample", 3)}
    # PCA with M = T - 1 components reconstructs every (centred) vector exactly
    assert max(rows[("pca", 3)]["rel_error"].values()) < 1e-4
    assert max(rows[("pca", 1)]["rel_error"].values()) > 1e-3
    # random_sample: negation of a task outside the sample is refused, never faked
    for m in (1, 3):
        r = rows[("random_sample", m)]
        assert ("refused" in r["negation"]) == (not r["in_basis"]["sst2"])
    assert rep["denominators"].keys() == {"sst2", "trec", "cola", "rte"}
    assert not list((collection / "basis_report" / "bases").glob("*.safetensors"))  # deleted after use
    assert "kept of full collection" in capsys.readouterr().out
    assert rep["partial"] is False and rep["pending"] == []
    assert "eval: first 5 examples of each eval split" in br.markdown(rep)
    # --report-only: the report from the caches, without a model, partial while a basis is missing
    same = ["--collection", str(collection), "--methods", "pca,random_sample", "--ms", "1,T-1", "--grid", "0.5,1",
            "--search-limit", "4", "--eval-limit", "5", "--negate", "sst2:trec", "--negate-grid", "1",
            "--negate-ms", "all", "--no-progress", "--report-only"]
    (collection / "basis_report" / "random_sample-m3.json").unlink()

    def no_model(*a, **k):
        raise AssertionError("--report-only loaded a model")

    monkeypatch.setattr("taskvec.models.load_model", no_model)
    assert br.main(same) == 0
    part = json.loads((collection / "basis_report" / "basis_report.json").read_text())
    assert part["partial"] is True and part["pending"] == ["random_sample M=3"]
    assert [(r["method"], r["M"]) for r in part["rows"]] == [("pca", 1), ("pca", 3), ("random_sample", 1)]
    assert part["rows"][0] == rep["rows"][0]  # the cached row, unchanged
    assert capsys.readouterr().out.startswith("(partial: 3 of 4 bases so far; to run: random_sample M=3)")
    with pytest.raises(SystemExit, match="--report-only: .*not cached|--report-only: nothing cached"):
        br.main([("3" if a == "5" else a) for a in same])  # other settings: nothing cached to report
    rep["settings"]["eval_limit"] = None  # --eval-limit 0: whole splits
    assert "eval: every example of each eval split" in br.markdown(rep)
    with pytest.raises(SystemExit, match="eval-limit must be >= 0"):
        br.main(["--collection", str(collection), "--eval-limit", "-1"])
    with pytest.raises(SystemExit, match="not in the collection"):
        br.main(["--collection", str(collection), "--tasks", "sst2,mnli"])
    with pytest.raises(SystemExit, match="target is not among the tasks"):
        br.main(["--collection", str(collection), "--tasks", "trec,cola", "--negate", "sst2:trec"])


def test_fv_table_intervals(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("fv_table", None)
    ft = importlib.import_module("fv_table")
    rows = [{"method": "zero-shot", "accuracy": 0.0, "n": 10}, {"method": "10-shot ICL", "accuracy": 0.5, "n": 10},
            {"method": "10-shot shuffled labels", "accuracy": 0.2, "n": 10},
            {"method": "function vector (layer 3)", "kind": "function_vector", "layer": 3, "accuracy": 0.4, "n": 10}]
    (tmp_path / "a-eval.json").write_text(json.dumps({"task": "a", "rows": rows}))
    ft.main([str(tmp_path / "a-eval.json")])
    assert ("| a | 10 | 0.000 [0.000, 0.278] | 0.500 [0.237, 0.763] | 0.200 [0.057, 0.510] | "
            "0.400 [0.168, 0.687] | 3 |") in capsys.readouterr().out


def test_activation_table_goal_numbers(tmp_path, capsys, monkeypatch):
    """activation_table.py: per-task rows, the mean row and the two goal numbers, by hand."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("activation_table", None)
    at = importlib.import_module("activation_table")
    paths = []
    for task, zero, icl, diff in (("a", 0.0, 0.5, 0.4), ("b", 0.1, 0.7, 0.5)):
        rows = [{"method": "zero-shot", "accuracy": zero, "n": 10},
                {"method": "10-shot ICL", "accuracy": icl, "n": 10},
                {"method": "10-shot shuffled labels", "accuracy": 0.2, "n": 10},
                {"method": "residual vector (layer 3, diff, x2)", "kind": "residual_vector",
                 "mode": "diff", "layer": 3, "scale": 2.0, "accuracy": diff, "n": 10}]
        p = tmp_path / f"{task}.json"
        p.write_text(json.dumps({"task": task, "rows": rows}))
        paths.append(str(p))
    at.main(paths)
    out = capsys.readouterr().out
    # Wilson 95% intervals of k / 10 (standard tables: 0/10 -> [0, 0.278], 5/10 -> [0.237, 0.763])
    assert ("| a | 10 | 0.000 [0.000, 0.278] | 0.500 [0.237, 0.763] | 0.200 [0.057, 0.510] | "
            "0.400 [0.168, 0.687] (L3 x2) |") in out
    assert "| **mean** | | **0.050** | **0.600** | **0.200** | **0.450** |" in out
    # lift 0.45 - 0.05 = +40.0 points; 0.45 / 0.60 = 75.0% of ICL
    assert "residual (diff): lifts zero-shot by +40.0 points; 75.0% of 10-shot ICL" in out


def test_soft_table_intervals_and_paired(tmp_path, capsys, monkeypatch):
    """soft_table.py: Wilson intervals per cell, pooled micro accuracy and McNemar, by hand."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("soft_table", None)
    st = importlib.import_module("soft_table")
    from taskvec.eval.stats import wilson

    paths = []
    for task, icl, soft in (("a", [1, 0, 0, 0], [1, 1, 1, 0]), ("b", [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0])):
        n = len(icl)
        rows = [{"method": m, "kind": k, "accuracy": sum(c) / n, "n": n, "ci95": list(wilson(sum(c), n)),
                 "correct": c, "params": p}
                for m, k, c, p in (("zero-shot", "prompt", [0] * n, 0), ("10-shot ICL", "prompt", icl, 0),
                                   ("soft task vector", "soft_task_vector", soft, 8))]
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps({"task": task, "rows": rows}))
        paths.append(str(path))
    st.main(paths)
    out = capsys.readouterr().out
    lo, hi = wilson(3, 4)
    assert f"| a | 4 | 0.000 [0.000, {wilson(0, 4)[1]:.3f}] | 0.250 [" in out
    assert f"0.750 [{lo:.3f}, {hi:.3f}] |" in out
    # pooled soft: 8 of 10; ICL 3 of 10; soft-only 5, ICL-only 0 -> p = 2 / 2**5 = 0.0625
    plo, phi = wilson(8, 10)
    assert f"0.800 [{plo:.3f}, {phi:.3f}] (n=10)" in out
    assert "| a | 10-shot ICL | 4 | +50.0 | 2 / 0 | 0.5 | no |" in out
    assert "| **pooled** | | 10 | +50.0 | 5 / 0 | 0.062 | no |" in out
    # vs zero-shot (all wrong): task b, soft 5 of 6 -> 5 / 0 discordant, p = 2 / 2**5; ICL 2 / 0, p = 0.5
    assert "| b | 10-shot +33.3 (p = 0.5); soft task vector +83.3 (p = 0.062) |" in out
