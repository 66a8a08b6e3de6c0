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
    for m in ("build_collection", "merge_report", "basis_report"):
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


def test_merge_report_on_tiny_collection(collection, capsys):
    mr = importlib.import_module("merge_report")
    rc = mr.main(["--collection", str(collection), "--methods", "task_arithmetic,ties", "--grid", "0.5,1",
                  "--search-limit", "4", "--negate", "sst2:trec", "--negate-grid", "0.5,1", "--no-progress"])
    assert rc == 0
    rep = json.loads((collection / "merge_report.json").read_text())
    assert set(rep["methods"]) == {"task_arithmetic", "ties"}
    for m in rep["methods"].values():
        assert m["lambda"] in (0.5, 1.0)
        assert set(m["tasks"]) == {"sst2", "trec", "cola", "rte"}
        assert all(0.0 <= t["accuracy"] <= 1.0 for t in m["tasks"].values())
    assert rep["negation"]["target"] == "sst2"
    assert "| task_arithmetic |" in capsys.readouterr().out


def test_basis_report_on_tiny_collection(collection, capsys):
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
