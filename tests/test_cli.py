"""The `taskvec` command: listings, eval on a tiny model directory, vectors, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli as run
from taskvec.models import fingerprint, tiny_model
from taskvec.weights import LowRankDelta, TaskVector, load_vector


@pytest.fixture(scope="module")
def tiny_vector(tiny_dir, tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    deltas = {
        "model.layers.0.self_attn.q_proj.weight": LowRankDelta(
            torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g) * 0.1, 0.5
        ),
        "model.layers.1.mlp.up_proj.weight": torch.randn(128, 64, generator=g) * 0.01,
    }
    tv = TaskVector(deltas, {"task": "sst2", "base_model": str(tiny_dir), "base_fingerprint": fingerprint(tiny_dir)})
    return tv.save(tmp_path_factory.mktemp("vec") / "v.safetensors")


def test_models_and_tasks_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    names = [m["name"] for m in json.loads(out)["models"]]
    assert "smollm2-135m" in names and "gemma3-270m" in names
    code, out, _ = run(capsys, "tasks", "--json")
    tasks = {t["name"]: t for t in json.loads(out)["tasks"]}
    assert code == 0 and {"sst2", "mnli", "antonym", "country-capital"} <= set(tasks)
    code, out, _ = run(capsys, "tasks", "sst2", "--json")
    info = json.loads(out)
    assert info["labels"] == ["negative", "positive"] and info["example_prompt"]


def test_eval_json_on_tiny_model_dir(capsys, tiny_dir):
    code, out, err = run(capsys, "eval", "--model", str(tiny_dir), "--task", "sst2", "--limit", "8",
                         "--json", "--no-progress")
    assert code == 0, err
    res = json.loads(out)
    assert res["n"] == 8 and 0.0 <= res["accuracy"] <= 1.0 and res["split"] == "validation"
    assert sum(c["n"] for c in res["per_class"].values()) == 8
    code, out, err = run(capsys, "eval", "--model", str(tiny_dir), "--task", "antonym", "--limit", "4",
                         "--shots", "2", "--json", "--no-progress", "--exact-match")
    assert code == 0, err
    assert json.loads(out)["metric"] == "first_token_accuracy"


def test_eval_with_vector_equals_library(capsys, tiny_dir, tiny_vector):
    code, out, err = run(capsys, "eval", "--model", str(tiny_dir), "--task", "sst2", "--limit", "8",
                         "--vector", str(tiny_vector), "--scale", "2", "--json", "--no-progress")
    assert code == 0, err
    from taskvec.eval import evaluate
    from taskvec.models import load_model
    from taskvec.tasks import get_task

    model, tok = load_model(tiny_dir)
    load_vector(tiny_vector).apply_to(model, 2.0)
    want = evaluate(model, tok, get_task("sst2"), limit=8, progress=False)
    assert json.loads(out)["accuracy"] == pytest.approx(want.accuracy)


def test_inspect_plot_and_export(capsys, tiny_vector, tmp_path):
    png = tmp_path / "norms.png"
    code, out, err = run(capsys, "inspect", str(tiny_vector), "--plot", str(png), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["form"] == "mixed" and info["tensors"] == 2
    assert png.read_bytes()[:4] == b"\x89PNG"
    html = tmp_path / "norms.html"
    assert run(capsys, "inspect", str(tiny_vector), "--plot", str(html))[0] == 0
    assert "<table>" in html.read_text()
    # a mixed vector has a dense delta: exporting to PEFT needs --rank
    code, _, err = run(capsys, "export-peft", str(tiny_vector), "--out", str(tmp_path / "ad"))
    assert code == 2 and "--rank" in err
    code, _, err = run(capsys, "export-peft", str(tiny_vector), "--out", str(tmp_path / "ad"), "--rank", "4")
    assert code == 0, err
    assert (tmp_path / "ad" / "adapter_config.json").exists()


def test_extract_from_full_model_dir(capsys, tiny_dir, tmp_path):
    model, tok = tiny_model("llama", seed=0)
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight.add_(0.01)
    ft = tmp_path / "ft"
    model.save_pretrained(ft)
    tok.save_pretrained(ft)
    out = tmp_path / "v.safetensors"
    code, _, err = run(capsys, "extract", "--base", str(tiny_dir), "--finetuned", str(ft), "--out", str(out),
                       "--task", "toy")
    assert code == 0, err
    tv = load_vector(out)
    assert tv.names == ["model.layers.1.self_attn.v_proj.weight"]
    assert torch.allclose(tv[tv.names[0]], torch.full((32, 64), 0.01), atol=1e-6)


def test_generate_with_task_template(capsys, tiny_dir, tiny_vector):
    code, out, err = run(capsys, "generate", "--model", str(tiny_dir), "--vector", str(tiny_vector),
                         "--task", "sst2", "--prompt", "great film", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert "great film" in res["prompt"] and isinstance(res["completion"], str)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "--task", "sst3"], 'Did you mean "sst2"'),
        (["eval", "--task", "sst2", "--model", "smolm2-135m"], 'Did you mean "smollm2-135m"'),
        (["eval", "--task", "sst2", "--model", "/nonexistent/dir"], "model"),
        (["eval", "--task", "sst2", "--split", "nope"], "split"),
        (["eval", "--task", "sst2", "--limit", "0"], "--limit"),
        (["eval", "--task", "sst2", "--scale", "nan", "--vector", "x.safetensors"], "--scale"),
        (["eval", "--task", "sst2", "--vector", "/nonexistent.safetensors"], "does not exist"),
        (["inspect", "/nonexistent.safetensors"], "does not exist"),
        (["eval", "--task", "sst2", "--bogus"], "unrecognized"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_malformed_task_file_exits_2(capsys, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok", "label": "pos"}\n{not json\n')
    (tmp_path / "t.yaml").write_text(
        'name: mine\ntemplate: "{text} ->"\nlabel_words: {pos: " yes", neg: " no"}\n'
        "data: {validation: d.jsonl, train: d.jsonl}\n"
    )
    code, _, err = run(capsys, "eval", "--task", str(tmp_path / "t.yaml"), "--model", "/nonexistent")
    assert code == 2 and "d.jsonl:2" in err and "Traceback" not in err


def test_debug_shows_traceback(capsys):
    code, _, err = run(capsys, "eval", "--task", "sst3", "--debug")
    assert code == 2 and "Traceback" in err


def test_eval_accepts_basis_task(capsys, tiny_dir, tiny_vector, tmp_path):
    from taskvec.basis import build_basis

    v = load_vector(tiny_vector)
    other = TaskVector({k: (d.to_dense() if hasattr(d, "to_dense") else d) * -0.5 for k, d in v.items()},
                       dict(v.metadata) | {"task": "other"})
    b = tmp_path / "b.safetensors"
    build_basis([v.to_dense(), other], b, method="pca", m=1)
    base = ["eval", "--model", str(tiny_dir), "--task", "sst2", "--limit", "4", "--json", "--no-progress"]
    code, out, err = run(capsys, *base, "--vector", f"{b}#sst2")
    assert code == 0, err
    code, _, err = run(capsys, *base, "--vector", str(b))
    assert code == 2 and "#TASK" in err
