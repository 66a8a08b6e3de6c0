"""Early stopping (taskvec.weights.early_stop): the selection rule by hand, the kept weights, the
recipe, resuming mid-run, and the option checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from taskvec.errors import UserInputError
from taskvec.models import tiny_model, tiny_tokenizer
from taskvec.tasks import load_task_file
from taskvec.weights.early_stop import EarlyStopper, check_early_stopping
from taskvec.weights.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_thread")


def test_selection_rule_ties_keep_the_earlier_step_and_patience_stops(tmp_path):
    scores = iter([0.5, 0.7, 0.7, 0.6, 0.9])
    p = torch.nn.Parameter(torch.zeros(3))
    stopper = EarlyStopper(tmp_path, every=2, patience=2, score=lambda m: next(scores), n_examples=10)
    model = torch.nn.Linear(1, 1)
    stops = []
    for step in range(1, 11):
        with torch.no_grad():
            p.fill_(float(step))  # the weights "at" each step
        if stopper.due(step, 10):
            stops.append((step, stopper.update(step, model, [("w", p)])))
        if stops and stops[-1][1]:
            break
    # evaluations at 2, 4, 6, 8: 0.5, 0.7 (best), 0.7 (tie: step 4 stays), 0.6 -> 2 bad -> stop at 8
    assert stops == [(2, False), (4, False), (6, False), (8, True)]
    assert stopper.best_step == 4 and stopper.best_accuracy == 0.7 and stopper.bad == 2
    assert [f.name for f in (tmp_path / "early_stopping").iterdir()] == ["step-4.safetensors"]
    stopper.restore_best([("w", p)])
    assert torch.equal(p.detach(), torch.full((3,), 4.0))
    rec = stopper.record(10)
    assert rec["stopped_early"] and rec["last_step"] == 8 and [h["step"] for h in rec["history"]] == [2, 4, 6, 8]


def test_last_step_is_always_evaluated_and_state_round_trips(tmp_path):
    stopper = EarlyStopper(tmp_path, every=4, patience=0, score=lambda m: 0.1, n_examples=1)
    assert [s for s in range(1, 11) if stopper.due(s, 10)] == [4, 8, 10]
    stopper.update(4, torch.nn.Linear(1, 1), [("w", torch.nn.Parameter(torch.ones(1)))])
    again = EarlyStopper(tmp_path, every=4, patience=0, score=lambda m: 0.1, n_examples=1,
                         state=json.loads(json.dumps(stopper.state())))
    assert again.state() == stopper.state()


@pytest.mark.parametrize("every, patience, holdout, world, message", [
    (0, 3, 10, 1, "--patience needs --eval-every"),
    (5, 0, 0, 1, "keep --holdout > 0"),
    (-1, 0, 10, 1, "--eval-every must be"),
    (5, 0, 10, 2, "one process"),
])
def test_option_checks(every, patience, holdout, world, message):
    with pytest.raises(UserInputError, match=message):
        check_early_stopping(every, patience, holdout, world)


def _task(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(40)]
    for split in ("train", "validation"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "planted.yaml").write_text(
        "name: planted\nkind: classification\ntemplate: '{text}:'\n"
        "label_words: {neg: ' no', pos: ' yes'}\n"
        "data: {train: train.jsonl, validation: validation.jsonl}\n")
    return load_task_file(root / "planted.yaml")


def _run(tmp_path, name, **kw):
    model, _ = tiny_model("llama", seed=0)
    return finetune(model, tiny_tokenizer(), _task(tmp_path / "task"), tmp_path / name, batch_size=4,
                    lr=5e-2, lora_r=4, progress=False, holdout=12, eval_every=2, **kw)


def test_finetune_keeps_best_step_weights_and_records_them(tmp_path):
    res = _run(tmp_path, "run", steps=10, patience=0, checkpoint_every=0, keep_checkpoints=True)
    es = res.recipe["early_stopping"]
    accs = [h["accuracy"] for h in es["history"]]
    assert [h["step"] for h in es["history"]] == [2, 4, 6, 8, 10] and es["examples"] == 12
    best = max(accs)
    assert es["best_accuracy"] == best and es["best_step"] == es["history"][accs.index(best)]["step"]
    assert res.recipe["trained_steps"] == 10 and not es["stopped_early"]
    from safetensors.torch import load_file

    kept = load_file(tmp_path / "run" / "early_stopping" / f"step-{es['best_step']}.safetensors")
    now = {n: p.detach() for n, p in res.model.named_parameters() if p.requires_grad}
    assert kept.keys() == now.keys() and all(torch.equal(kept[k], now[k]) for k in kept)


def test_finetune_resumes_early_stopping_after_a_crash(tmp_path):
    ref = _run(tmp_path, "ref", steps=10, patience=0, checkpoint_every=2)

    def crash(step, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "cut", steps=10, patience=0, checkpoint_every=2, callback=crash)
    res = _run(tmp_path, "cut", steps=10, patience=0, checkpoint_every=2, resume=True)
    assert res.recipe["resumed_from_step"] == 6
    got, want = res.recipe["early_stopping"], ref.recipe["early_stopping"]
    assert [h["step"] for h in got["history"]] == [h["step"] for h in want["history"]]
    # same machine, same process: the resumed run is the uninterrupted one
    assert [h["accuracy"] for h in got["history"]] == [h["accuracy"] for h in want["history"]]
    assert got["best_step"] == want["best_step"]
    assert not (tmp_path / "cut" / "early_stopping").exists()  # cleaned up with the checkpoints
