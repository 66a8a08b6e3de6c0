"""Representative subsets: seeded samples, the first-N label-skew warning, and the CLI flags."""

from __future__ import annotations

import json
import random
import warnings

import pytest
from tests.conftest import run_cli

from taskvec.errors import SubsetWarning, UserInputError
from taskvec.tasks.subsets import choose, label_skew, sample_indices


def test_sample_indices_are_seeded_sorted_and_without_replacement():
    a = sample_indices(1000, 100, seed=3)
    assert a == sample_indices(1000, 100, seed=3) and a != sample_indices(1000, 100, seed=4)
    assert a == sorted(a) and len(set(a)) == 100 and all(0 <= i < 1000 for i in a)
    assert sample_indices(5, 10, seed=0) == [0, 1, 2, 3, 4]
    # pinned: the same subset on every machine and Python (random.Random with an int seed)
    assert sample_indices(10, 3, seed=0) == sorted(random.Random(0).sample(range(10), 3)) == [0, 6, 9]


def test_sorted_file_is_flagged_and_a_shuffled_one_is_not():
    # the case from the issue: 1,999 examples listed class by class, the first 1,000 nearly all one class
    labels = ["neg"] * 1000 + ["pos"] * 999
    msg = label_skew(labels, labels[:1000])
    assert msg is not None and '"neg" is 100.0% of the first 1000' in msg and "50.0% of the split" in msg
    assert label_skew(labels, labels) is None  # the whole split is never skewed
    rng = random.Random(0)
    alarms = 0
    for _ in range(300):  # random orders: 4 standard errors -> (almost) never a false alarm
        shuffled = labels[:]
        rng.shuffle(shuffled)
        alarms += label_skew(shuffled, shuffled[:100]) is not None
    assert alarms <= 1


def test_choose_warns_on_skewed_first_n_and_never_on_samples():
    rows = [{"label": "neg"}] * 60 + [{"label": "pos"}] * 40
    with pytest.warns(SubsetWarning, match=r"--sample 30 --seed 0"):
        first = choose(rows, limit=30, label_of=lambda r: r["label"], where="task t split test")
    assert first == rows[:30]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = choose(rows, sample=30, seed=1, label_of=lambda r: r["label"])
    assert len(s) == 30 and 10 <= sum(r["label"] == "pos" for r in s) <= 20
    with pytest.raises(UserInputError, match="exclusive"):
        choose(rows, limit=3, sample=3)
    with pytest.raises(UserInputError, match="--sample"):
        choose(rows, sample=0)


@pytest.fixture()
def sorted_task(tmp_path):
    rows = [{"text": f"bad {i}", "label": "neg"} for i in range(30)] + [
        {"text": f"good {i}", "label": "pos"} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text(
        'name: sorted\ntemplate: "{text} ->"\nlabel_words: {pos: " yes", neg: " no"}\n'
        "data: {validation: d.jsonl, train: d.jsonl}\n")
    return tmp_path / "t.yaml"


def test_eval_cli_warns_once_in_one_line_and_samples(capsys, tiny_dir, sorted_task):
    code, out, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", sorted_task, "--limit", "20",
                             "--json", "--no-progress")
    assert code == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and warn[0].startswith("taskvec eval: warning: task sorted split validation: ")
    assert '"neg" is 100.0% of the first 20' in warn[0]
    assert json.loads(out)["subset"] == "first 20"
    code, out, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", sorted_task, "--sample", "20",
                             "--seed", "5", "--json", "--no-progress")
    assert code == 0 and "warning" not in err, err
    res = json.loads(out)
    assert res["n"] == 20 and res["subset"] == "sample 20 (seed 5)"
    code, _, err = run_cli(capsys, "eval", "--model", tiny_dir, "--task", sorted_task, "--sample", "5",
                           "--limit", "5")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "exclusive" in err


def test_sampled_eval_equals_eval_on_the_same_examples(tiny_dir, sorted_task):
    """--sample is a choice of examples, nothing else: the same predictions as passing them."""
    from taskvec.eval import evaluate
    from taskvec.models import load_model
    from taskvec.tasks import get_task

    model, tok = load_model(str(tiny_dir))
    task = get_task(str(sorted_task))
    a = evaluate(model, tok, task, sample=12, seed=2, progress=False)
    rows = task.load("validation")
    b = evaluate(model, tok, task, examples=[rows[i] for i in sample_indices(len(rows), 12, 2)], progress=False)
    assert a.predictions == b.predictions and a.correct == b.correct and a.n == 12


def test_eval_vs_base_paired_test(capsys, tiny_dir, tmp_path):
    import torch

    from taskvec.eval.stats import mcnemar
    from taskvec.models import fingerprint, load_model
    from taskvec.weights import TaskVector

    model, _ = load_model(str(tiny_dir))
    g = torch.Generator().manual_seed(0)
    deltas = {n: torch.randn(p.shape, generator=g) * 0.2 for n, p in model.named_parameters() if p.dim() == 2}
    vec = TaskVector(deltas, {"base_fingerprint": fingerprint(tiny_dir)}).save(tmp_path / "v.safetensors")
    common = ["--model", tiny_dir, "--task", "sst2", "--limit", 16, "--no-progress"]
    code, out, err = run_cli(capsys, "eval", *common, "--vector", vec, "--vs-base", "--json")
    assert code == 0, err
    res = json.loads(out)
    _, base_out, _ = run_cli(capsys, "eval", *common, "--json")
    plain = json.loads(base_out)
    assert res["base"]["accuracy"] == plain["accuracy"]  # the vector was taken off again
    code, out, _ = run_cli(capsys, "eval", *common, "--vector", vec, "--json")
    with_vec = json.loads(out)
    assert res["accuracy"] == with_vec["accuracy"]
    assert res["vs_base"]["n"] == 16 and 0 <= res["vs_base"]["p_value"] <= 1
    code, out, _ = run_cli(capsys, "eval", *common, "--vector", vec, "--vs-base")
    assert code == 0 and "exact McNemar p =" in out
    code, _, err = run_cli(capsys, "eval", *common, "--vs-base")
    assert code == 2 and "--vector" in err
    assert mcnemar([True, False], [True, True]).only_b == 1
