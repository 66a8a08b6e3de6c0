"""lm-evaluation-harness integration, offline: a local task YAML over exported JSON Lines, the
``taskvec`` model, and the same predictions as ``taskvec eval`` (skipped without the extra)."""

from __future__ import annotations

import os

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def offline(monkeypatch):
    for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(k, "1")


def _lm_eval_run(model, task_yaml, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_yaml.parent))
    res = simple_evaluate(model=model, tasks=[task_yaml.stem], task_manager=tm, log_samples=True,
                          bootstrap_iters=0)
    return res["results"][task_yaml.stem], res["samples"][task_yaml.stem]


@pytest.mark.parametrize("vector", [False, True])
def test_same_predictions_as_taskvec_eval(tiny_dir, tmp_path, offline, vector):
    import torch

    from taskvec.eval import evaluate
    from taskvec.integrations.lm_eval_harness import TaskvecLM
    from taskvec.integrations.lm_eval_task import write_lm_eval_task
    from taskvec.models import fingerprint, load_model
    from taskvec.tasks import get_task
    from taskvec.weights import TaskVector

    task = get_task("sst2")
    yaml_path = write_lm_eval_task(task, tmp_path / "tasks", limit=24)
    vec_path = None
    model, tok = load_model(str(tiny_dir))
    if vector:
        g = torch.Generator().manual_seed(0)
        deltas = {n: torch.randn(p.shape, generator=g) * 0.05 for n, p in model.named_parameters() if p.dim() == 2}
        vec_path = TaskVector(deltas, {"base_fingerprint": fingerprint(tiny_dir)}).save(tmp_path / "v.safetensors")
        TaskVector.load(vec_path).apply_to(model, 0.5)
    ours = evaluate(model, tok, task, limit=24, progress=False)
    lm = TaskvecLM(pretrained=str(tiny_dir), vector=str(vec_path) if vector else None,
                   scale="0.5" if vector else None, batch_size="5")
    summary, samples = _lm_eval_run(lm, yaml_path, tmp_path)
    samples = sorted(samples, key=lambda s: s["doc_id"])
    assert len(samples) == 24
    assert [bool(s["acc"]) for s in samples] == ours.correct
    assert summary["acc,none"] == pytest.approx(ours.accuracy)


def test_exported_yaml_is_local_and_multiple_choice(tmp_path):
    from taskvec.integrations.lm_eval_task import write_lm_eval_task
    from taskvec.tasks import get_task

    y = write_lm_eval_task(get_task("sst2"), tmp_path, limit=3)
    text = y.read_text()
    assert "dataset_path: json" in text and "output_type: multiple_choice" in text and 'target_delimiter: ""' in text
    assert os.path.isabs(text.split("test: ")[1].split("\n")[0].strip('"'))
    assert len((tmp_path / f"{y.stem}.jsonl").read_text().splitlines()) == 3


def test_cli_entry_point_registers_the_model():
    from lm_eval.api.registry import get_model

    import taskvec.integrations.lm_eval_harness as m

    assert get_model("taskvec") is m.TaskvecLM
