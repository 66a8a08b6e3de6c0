"""`taskvec fv`, `taskvec residual` and `taskvec generate --fv` on a tiny model directory."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli as run
from taskvec.cli.main import main

SMALL = ["--shots", "2", "--n-prompts", "4", "--sweep-limit", "4", "--no-progress"]


@pytest.fixture(scope="module")
def fv_file(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fv") / "fv.safetensors"
    code = main(["fv", "extract", "--model", str(tiny_dir), "--task", "antonym", "--out", str(out),
                 "--top-k", "2", "--ie-prompts", "1", *SMALL, "--json"])
    assert code == 0
    return out


def test_fv_extract_eval_generate(fv_file, tiny_dir, tmp_path, capsys) -> None:
    capsys.readouterr()
    code, out, _ = run(capsys, "fv", "eval", "--model", tiny_dir, "--vector", fv_file, "--limit", 3,
                       "--shots", 2, "--no-progress", "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [r["method"].split(" (")[0] for r in rows] == [
        "zero-shot", "2-shot ICL", "2-shot shuffled labels", "function vector"]
    code, out, _ = run(capsys, "fv", "eval", "--model", tiny_dir, "--vector", fv_file, "--limit", 3,
                       "--shots", 0, "--scale", 2, "--layer", 1, "--no-progress")
    assert code == 0 and "function vector (layer 1, x2)" in out and "zero-shot" in out
    code, out, _ = run(capsys, "generate", "--model", tiny_dir, "--fv", fv_file, "--task", "antonym",
                       "--prompt", "hot", "--max-new-tokens", 3, "--fv-positions", "last+generated",
                       "--json")
    assert code == 0 and json.loads(out)["fv"] == str(fv_file)
    # residual vectors, a layer plot, and eval of both kinds in one table
    rv = tmp_path / "rv.safetensors"
    code, out, _ = run(capsys, "residual", "extract", "--model", tiny_dir, "--task", "antonym",
                       "--out", rv, "--layer", 1, *SMALL)
    assert code == 0 and "residual vector (layer 1" in out
    code, out, _ = run(capsys, "residual", "eval", "--model", tiny_dir, "--vector", fv_file, rv,
                       "--limit", 2, "--shots", 0, "--no-progress", "--json")
    assert code == 0 and len(json.loads(out)["rows"]) == 3


def test_fv_extract_with_heads_and_plots(tiny_dir, tmp_path, capsys) -> None:
    out = tmp_path / "fv.safetensors"
    code, text, _ = run(capsys, "fv", "extract", "--model", tiny_dir, "--task", "antonym", "--out", out,
                        "--heads", "0:1,1:3", "--plot-layers", tmp_path / "layers.png", *SMALL)
    assert code == 0 and out.exists() and (tmp_path / "layers.png").stat().st_size > 0
    assert "layer sweep" in text
    from taskvec.activations import load_activation
    from taskvec.cli.activation_opts import validation_gain

    gain = validation_gain(load_activation(out).metadata["extra"])
    assert gain is not None and ("no layer or scale tried beats zero-shot" in text) == (not gain)
    assert validation_gain({"zero_shot_accuracy": 0.1, "layer_accuracy": {"0": 0.1, "1": 0.05}}) is False
    assert validation_gain({"zero_shot_accuracy": 0.1, "grid_accuracy": {"0:1": 0.1, "1:2": 0.2},
                            "layer_accuracy": {"0": 0.0}}) is True
    assert validation_gain({"zero_shot_accuracy": 0.1}) is None


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["fv", "extract", "--task", "antonym", "--out", "x.pt"], ".safetensors"),
        (["fv", "extract", "--task", "antonymm", "--out", "x.safetensors"], "antonym"),
        (["fv", "extract", "--task", "antonym", "--out", "x.safetensors", "--layer", "mid"], "--layer"),
        (["fv", "extract", "--task", "antonym", "--out", "x.safetensors", "--ie-method", "fast"], "naive"),
        (["fv", "extract", "--task", "antonym", "--out", "x.safetensors", "--heads", "3"], "LAYER:HEAD"),
        (["fv", "extract", "--task", "antonym", "--out", "x.safetensors", "--scales", "a"], "--scales"),
        (["fv", "extract", "--task", "antonym", "--out", "x.safetensors", "--positions", "mid"], "position"),
        (["fv", "extract", "--task", "antonym", "--out", "x.safetensors", "--plot-ie", "a.jpg"], ".png"),
        (["fv", "eval", "--vector", "missing.safetensors"], "does not exist"),
        (["residual", "extract", "--task", "antonym", "--out", "x.safetensors", "--mode", "mix"], "replace"),
        (["residual", "extract", "--task", "antonym", "--out", "x.safetensors", "--scales", "1,x"], "--scales"),
    ],
)
def test_bad_input_one_line_exit_2(argv, msg, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and msg in err and err.count("\n") == 1


def test_eval_rejects_weight_vectors_and_garbage(tmp_path, capsys) -> None:
    import torch

    from taskvec.weights import TaskVector

    w = TaskVector({"model.norm.weight": torch.zeros(64)}, {}).save(tmp_path / "w.safetensors")
    code, _, err = run(capsys, "fv", "eval", "--vector", w)
    assert code == 2 and "weight-space" in err
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"nonsense")
    code, _, err = run(capsys, "generate", "--prompt", "x", "--fv", junk)
    assert code == 2 and "safetensors" in err and err.count("\n") == 1


def test_fv_without_action_prints_help(capsys) -> None:
    code, out, _ = run(capsys, "fv")
    assert code == 2 and "extract" in out


def test_eval_door_takes_every_vector_kind(fv_file, tiny_dir, tmp_path, capsys, monkeypatch) -> None:
    """`taskvec eval --vector F` for a function, residual and soft vector: the vector acts in the
    forward passes (its hook runs), the table says what was evaluated; bad combinations exit 2."""
    import torch

    from taskvec.activations import AddHook
    from taskvec.activations.soft_vector import SoftBlendHook, SoftTaskVector
    from taskvec.models import get_adapter, load_model
    from taskvec.models.fingerprint import fingerprint

    model, _ = load_model(str(tiny_dir))
    ad = get_adapter(model)
    soft = SoftTaskVector(torch.zeros(ad.n_layers, ad.n_heads), torch.randn(ad.n_layers, ad.n_heads, ad.head_dim),
                          {"model_fingerprint": fingerprint(model), "task": "antonym"})
    soft_file = soft.save(tmp_path / "soft.safetensors")
    rv = tmp_path / "rv.safetensors"
    assert run(capsys, "residual", "extract", "--model", tiny_dir, "--task", "antonym", "--out", rv,
               "--layer", 1, *SMALL)[0] == 0
    for f, kind, hook_cls in ((fv_file, "function_vector", AddHook), (rv, "residual_vector", AddHook),
                              (soft_file, "soft_task_vector", SoftBlendHook)):
        calls = []
        original = hook_cls.edit
        monkeypatch.setattr(hook_cls, "edit", lambda self, name, x, o=original, c=calls: c.append(name) or o(self, name, x))
        code, out, err = run(capsys, "eval", "--model", tiny_dir, "--vector", f, "--task", "antonym",
                             "--limit", 3, "--no-progress", "--json")
        monkeypatch.undo()
        assert code == 0, err
        res = json.loads(out)
        assert res["vector_kind"] == kind and res["n"] == 3 and calls, (kind, calls)
        code, out, _ = run(capsys, "eval", "--model", tiny_dir, "--vector", f, "--task", "antonym",
                           "--limit", 2, "--no-progress")
        assert code == 0 and kind.replace("_", " ") in out
    code, _, err = run(capsys, "eval", "--model", tiny_dir, "--vector", soft_file, "--scale", 2,
                       "--task", "antonym", "--limit", 2)
    assert code == 2 and "no scale" in err
    means = tmp_path / "means.safetensors"
    assert run(capsys, "fv", "means", "--model", tiny_dir, "--task", "antonym", "--out", means,
               "--shots", 2, "--n-prompts", 2, "--no-progress")[0] == 0
    code, _, err = run(capsys, "eval", "--model", tiny_dir, "--vector", means, "--task", "antonym")
    assert code == 2 and "is a head-means file" in err and len(err.strip().splitlines()) == 1
