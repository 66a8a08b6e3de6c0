"""Protocol guards: held-out slices recorded at fine-tuning, used and checked by search/negate."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tests.conftest import run_cli
from tests.test_arith import FakeTask

from taskvec.errors import ProtocolWarning, UserInputError
from taskvec.models import tiny_model
from taskvec.weights import TaskVector
from taskvec.weights.negate import negate
from taskvec.weights.protocol import recorded_holdout, selection_issues, training_record
from taskvec.weights.search import SEARCH_SPLIT, holdout_indices, search_coefficients

NORM = "model.norm.weight"


pytestmark = pytest.mark.usefixtures("one_thread")


def vec(model, task: str, recipe: dict | None) -> TaskVector:
    p = dict(model.named_parameters())[NORM]
    meta = {"task": task} | ({"recipe": recipe} if recipe else {})
    return TaskVector({NORM: torch.full_like(p.detach(), 0.01)}, meta)


def const(*_a) -> float:
    return 0.5


def test_training_record_reads_both_recipe_formats():
    model, _ = tiny_model("llama", seed=0)
    a = vec(model, "a", {"task": "a", "split": "train_fit", "holdout": 200, "holdout_seed": 3})  # finetune / collection
    b = vec(model, "b", {"task": "b", "split": "train_fit", "holdout": {"n": 50, "seed": 1}})
    assert training_record(a) == {"task": "a", "split": "train_fit", "holdout": 200, "holdout_seed": 3}
    assert training_record(b)["holdout"] == 50 and training_record(b)["holdout_seed"] == 1
    assert training_record(vec(model, "c", None)) is None  # other tools' files: nothing known
    assert recorded_holdout([a]) == (200, 3) and recorded_holdout([a, b]) is None  # disagree: no default


def test_selection_issues_by_case():
    model, _ = tiny_model("llama", seed=0)
    whole = vec(model, "a", {"task": "a", "split": "train"})
    fit = vec(model, "a", {"task": "a", "split": "train_fit", "holdout": 200, "holdout_seed": 0})
    (msg,) = selection_issues([whole], ["a"], None)
    assert "fine-tuned on all of a's train split" in msg and "--holdout" in msg
    assert selection_issues([fit], ["a"], None, 200, 0) == []
    assert selection_issues([fit], ["a"], None, 100, 0) == []  # a smaller slice, same seed: a subset
    assert "use --holdout 200 --seed 0" in selection_issues([fit], ["a"], SEARCH_SPLIT, 300, 0)[0]
    assert len(selection_issues([fit], ["a"], None, 200, 1)) == 1  # another seed: another slice
    assert selection_issues([whole], ["b"], None) == []  # its task is not scored
    assert "fine-tuned on split train" in selection_issues([whole], ["a"], "train")[0]
    assert selection_issues([whole], ["a"], "test") == []


def test_smaller_slice_with_the_same_seed_is_inside_the_larger():
    task = FakeTask("a", n=400)
    assert set(holdout_indices(task, 100, 0)) <= set(holdout_indices(task, 200, 0))


def test_search_and_negate_warn_and_record():
    model, tok = tiny_model("llama", seed=0)
    whole = vec(model, "a", {"task": "a", "split": "train"})
    with pytest.warns(ProtocolWarning, match="held-out slice is training data"):
        res = search_coefficients(model, tok, [whole], [FakeTask("a")], grid="0.5,1", limit=4, holdout=8,
                                  scorer=const, progress=False)
    assert len(res.protocol_warnings) == 1 and not res.selected_on_eval_split
    assert res.to_dict()["protocol_warnings"] == res.protocol_warnings
    with pytest.warns(ProtocolWarning):
        neg = negate(model, tok, whole, FakeTask("a"), FakeTask("b"), "0.5,1", 4, holdout=8, scorer=const,
                     progress=False)
    assert len(neg.protocol_warnings) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean protocol raises nothing
        fit = vec(model, "a", {"task": "a", "split": "train_fit", "holdout": 8, "holdout_seed": 0})
        res = search_coefficients(model, tok, [fit], [FakeTask("a")], grid="0.5,1", limit=4, holdout=8,
                                  scorer=const, progress=False)
    assert res.protocol_warnings == []


def test_eval_split_refused_unless_allowed_then_marked():
    model, tok = tiny_model("llama", seed=0)
    v = vec(model, "a", None)
    with pytest.raises(UserInputError, match="--allow-eval-split"):
        search_coefficients(model, tok, [v], [FakeTask("a")], grid="1", split="validation", scorer=const,
                            progress=False)
    with pytest.warns(ProtocolWarning, match="optimistic"):
        res = search_coefficients(model, tok, [v], [FakeTask("a")], grid="1", split="validation", scorer=const,
                                  progress=False, allow_eval_split=True)
    assert res.selected_on_eval_split and res.splits == {"a": "validation"}
    with pytest.warns(ProtocolWarning):
        neg = negate(model, tok, v, FakeTask("a"), FakeTask("b"), "1", 4, split="validation", scorer=const,
                     progress=False, allow_eval_split=True, final_eval=False)
    assert neg.selected_on_eval_split


def _task_file(root: Path, n: int = 40) -> Path:
    rows = [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "planted.yaml").write_text(
        "name: planted\nkind: classification\ntemplate: '{text}:'\nlabel_words: {neg: ' no', pos: ' yes'}\n"
        "data: {train: train.jsonl, validation: validation.jsonl}\n")
    return root / "planted.yaml"


def test_finetune_cli_holds_out_and_search_uses_it(tmp_path, capsys):
    model, tok = tiny_model("llama")
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    task = _task_file(tmp_path / "task")
    base = ["--model", tmp_path / "model", "--task", task, "--steps", 1, "--batch-size", 2, "--lora-r", 2,
            "--targets", "q,v", "--no-progress"]
    code, _, err = run_cli(capsys, "finetune", *base, "--out", tmp_path / "o", "--holdout", 10, "--holdout-seed", 2)
    assert code == 0, err
    recipe = json.loads((tmp_path / "o" / "recipe.json").read_text())
    assert recipe["split"] == "train_fit" and recipe["holdout"] == 10 and recipe["holdout_seed"] == 2
    assert recipe["train_examples"] == 30  # 40 - 10 held out
    code, _, err = run_cli(capsys, "extract", "--finetuned", tmp_path / "o", "--base", tmp_path / "model",
                           "--out", tmp_path / "v.safetensors")
    assert code == 0, err
    assert training_record(TaskVector.load(tmp_path / "v.safetensors"))["holdout"] == 10
    sel = ["--model", tmp_path / "model", "--tasks", task, "--grid", "1", "--limit", 4, "--json", "--no-progress"]
    code, out, err = run_cli(capsys, "search", "--vectors", tmp_path / "v.safetensors", *sel)
    assert code == 0 and "warning" not in err, err
    assert json.loads(out)["holdout"] == {"n": 10, "seed": 2}  # the recorded slice, not the default
    code, out, err = run_cli(capsys, "search", "--vectors", tmp_path / "v.safetensors", *sel, "--seed", 0)
    assert code == 0 and json.loads(out)["protocol_warnings"]
    assert err.count("taskvec search: warning:") == 1 and "use --holdout 10 --seed 2" in err
    code, out, err = run_cli(capsys, "search", "--vectors", tmp_path / "v.safetensors", *sel,
                             "--split", "validation")
    assert code == 2 and "--allow-eval-split" in err
    # training on the whole split (opt-out) -> search warns
    code, _, err = run_cli(capsys, "finetune", *base, "--out", tmp_path / "o2", "--holdout", 0)
    assert code == 0, err
    assert json.loads((tmp_path / "o2" / "recipe.json").read_text())["split"] == "train"
