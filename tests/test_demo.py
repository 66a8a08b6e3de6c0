"""``taskvec demo`` end to end on a tiny model: the seed, intervals, paired tests, reuse."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from taskvec.eval.stats import wilson


def _demo(capsys, tiny_dir: Path, out: Path, *extra) -> dict:
    code, stdout, err = run_cli(capsys, "demo", "--model", tiny_dir, "--out", out, "--steps", 2,
                                "--batch-size", 2, "--limit", 6, "--no-progress", "--json", *extra)
    assert code == 0, err
    return json.loads(stdout)


def test_demo_reports_intervals_and_paired_tests(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    res = _demo(capsys, tiny_dir, tmp_path / "a", "--seed", 3)
    assert res["recipe"]["seed"] == 3 and res["n"] == 6
    assert json.loads((tmp_path / "a" / "finetune" / "recipe.json").read_text())["seed"] == 3
    for key, acc in res["accuracy"].items():  # each accuracy with its Wilson interval at n = 6
        assert list(wilson(round(acc * 6), 6)) == res["ci95"][key]
    # base + vector reproduces the fine-tuned model, so the paired test sees no discordant pair
    same = res["paired"]["base_plus_vector_vs_finetuned"]
    assert res["same_predictions"] == 6 and same["only_a"] == same["only_b"] == 0 and same["p_value"] == 1.0
    assert json.loads((tmp_path / "a" / "demo_result.json").read_text())["ci95"] == res["ci95"]


def test_demo_seed_changes_the_run_and_a_finished_run_is_reused(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    a = _demo(capsys, tiny_dir, tmp_path / "s", "--seed", 0)
    vec_a = Path(a["vector"]).read_bytes()
    b = _demo(capsys, tiny_dir, tmp_path / "s", "--seed", 1)  # another seed: trained again
    assert b["recipe"]["seed"] == 1 and Path(b["vector"]).read_bytes() != vec_a
    c = _demo(capsys, tiny_dir, tmp_path / "s", "--seed", 1)  # same recipe: the run is reused
    assert c["train_seconds"] == b["train_seconds"]
    assert (a["training_reused"], b["training_reused"], c["training_reused"]) == (False, False, True)


def test_demo_says_when_the_training_time_is_from_a_reused_run(capsys, tiny_dir: Path, tmp_path: Path) -> None:
    args = ("demo", "--model", tiny_dir, "--out", tmp_path, "--steps", 2, "--batch-size", 2, "--limit", 6,
            "--no-progress")
    code, first, _ = run_cli(capsys, *args)
    assert code == 0 and "of which training" in first and "reused" not in first.split("vector:")[-1]
    code, again, _ = run_cli(capsys, *args)
    assert code == 0 and "training reused from the earlier run" in again.split("vector:")[-1]
