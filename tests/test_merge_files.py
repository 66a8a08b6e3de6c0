"""Streaming file merges, the merge YAML and ``taskvec merge``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from taskvec.cli.main import main
from taskvec.errors import FingerprintMismatchError, NonFiniteError, UserInputError
from taskvec.weights import LowRankDelta, TaskVector
from taskvec.weights.merge import merge, merge_files
from taskvec.weights.merge_config import load_merge_config


def _vector(seed: int, low_rank: bool = False, fp: str = "fp0") -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    w: torch.Tensor | LowRankDelta = LowRankDelta(torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g), 0.5)
    if not low_rank:
        w = w.to_dense() + 0.1 * torch.randn(6, 5, generator=g)
    deltas = {"layers.0.w": w, "layers.0.b": torch.randn(6, generator=g)}
    if low_rank:
        deltas = {"layers.0.w": w, "layers.1.w": LowRankDelta(torch.randn(1, 5, generator=g), torch.randn(4, 1, generator=g), 2.0)}
    return TaskVector(deltas, {"task": f"t{seed}", "base_model": "tiny", "base_fingerprint": fp})


@pytest.fixture()
def files(tmp_path: Path) -> list[Path]:
    out = []
    for i in range(3):
        p = tmp_path / f"v{i}.safetensors"
        _vector(i).save(p)
        out.append(p)
    return out


CASES = [
    ("task_arithmetic", {"lambda": 0.8}),
    ("ties", {"density": 0.4}),
    ("ties", {"density": [0.3, 0.6, 1.0], "trim": "global"}),
    ("dare_ties", {"p": 0.3, "seed": 2}),
    ("dare_linear", {"density": 0.7}),
    ("tsv", {}),
    ("breadcrumbs", {"density": 0.7, "gamma": 0.1}),
]


@pytest.mark.parametrize(("method", "params"), CASES)
def test_file_merge_equals_in_memory(files: list[Path], tmp_path: Path, method: str, params: dict) -> None:
    weights = [1.0, 0.5, -0.7]
    out = tmp_path / "merged.safetensors"
    report = merge_files(method, files, out, weights, params)
    mem = merge(method, [TaskVector.load(p) for p in files], weights, **params)
    got = TaskVector.load(out)
    assert report.tensors == len(got) == 2 and got.names == mem.names
    for name in mem.names:
        assert torch.equal(got[name], mem[name]), name
    meta = got.metadata
    assert meta["merge"]["method"] == method and meta["merge"]["weights"] == weights
    assert meta["merge"]["tasks"] == ["t0", "t1", "t2"] and meta["base_fingerprint"] == "fp0"
    assert meta["task"].startswith(f"{method}(")


def test_low_rank_files_stay_low_rank(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"lr{i}.safetensors")
        _vector(i, low_rank=True).save(paths[-1])
    out = tmp_path / "m.safetensors"
    report = merge_files("task_arithmetic", paths, out, [1.0, 0.5])
    assert report.storage == "low-rank" and report.low_rank_tensors == 2
    got = TaskVector.load(out)
    vs = [TaskVector.load(p) for p in paths]
    assert got.form == "low-rank" and got["layers.0.w"].rank == 4
    want = vs[0]["layers.0.w"].to_dense() + 0.5 * vs[1]["layers.0.w"].to_dense()
    torch.testing.assert_close(got["layers.0.w"].to_dense(), want)
    # an element-wise method densifies per tensor
    merge_files("ties", paths, tmp_path / "t.safetensors", params={"density": 0.5})
    assert TaskVector.load(tmp_path / "t.safetensors").form == "dense"


def test_fingerprint_mismatch_and_nonfinite_leave_no_output(files: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    _vector(9, fp="fp1").save(other)
    out = tmp_path / "m.safetensors"
    with pytest.raises(FingerprintMismatchError):
        merge_files("ties", [files[0], other], out)
    assert not out.exists()
    merge_files("ties", [files[0], other], out, force=True)
    assert "different bases" in TaskVector.load(out).metadata["merge"]["notes"][0]
    out.unlink()
    big = TaskVector({"layers.0.b": torch.full((6,), 3e38)}, {"base_fingerprint": "fp0"})
    big.save(tmp_path / "big.safetensors")
    with pytest.raises(NonFiniteError):
        merge_files("task_arithmetic", [tmp_path / "big.safetensors"] * 2, out)
    assert not out.exists() and not list(tmp_path.glob(".m.safetensors*"))


# -- YAML -------------------------------------------------------------------------------------
def test_yaml_config_merges_like_the_api(files: list[Path], tmp_path: Path) -> None:
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(
        "merge_method: ties\n"
        "base_model: tiny\n"
        "models:\n"
        "  - model: v0.safetensors\n"
        "    parameters: {weight: 1.0, density: 0.3}\n"
        "  - model: v1.safetensors\n"
        "    parameters: {weight: 0.5}\n"
        "  - model: v2.safetensors\n"
        "  - model: tiny\n"
        "parameters: {lambda: 0.9, density: 0.6, normalize: true, int8_mask: true}\n"
        "dtype: bfloat16\n"
    )
    c = load_merge_config(cfg)
    assert c.method == "ties" and c.vectors == files and c.weights == [1.0, 0.5, 1.0]
    assert c.params["density"] == [0.3, 0.6, 0.6]
    assert any("dtype" in n for n in c.notes) and any("base model" in n for n in c.notes)
    assert any("int8_mask" in n for n in c.notes)
    out = tmp_path / "y.safetensors"
    assert main(["merge", "--config", str(cfg), "--out", str(out), "--json"]) == 0
    want = merge("ties", [TaskVector.load(p) for p in files], [1.0, 0.5, 1.0], density=[0.3, 0.6, 0.6], lam=0.9)
    got = TaskVector.load(out)
    for name in want.names:
        assert torch.equal(got[name], want[name])


def test_yaml_lists_every_error_at_once(files: list[Path], tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "merge_method: tie\n"
        "modles: []\n"
        "models:\n"
        "  - model: v0.safetensors\n"
        "    parameters: {weight: heavy}\n"
        "  - model: missing.safetensors\n"
        "  - model: adir\n"
        "    parameters: {density: [0.1, 0.5]}\n"
        "parameters: {lambda: .inf}\n"
    )
    with pytest.raises(UserInputError) as exc:
        load_merge_config(cfg)
    parts = str(exc.value).split("; ")
    text = str(exc.value)
    assert len(parts) >= 5
    for needle in ('Did you mean "ties"', 'unknown key "modles"', "weight #1 must be a number",
                   "missing.safetensors does not exist", "is a directory", "taskvec extract", "per-layer"):
        assert needle in text, needle
    # with a known method, parameter problems are listed too
    cfg.write_text(
        "merge_method: ties\nmodels:\n  - model: v0.safetensors\n    parameters: {density: 2}\n"
        "  - model: v1.safetensors\nparameters: {trim: layer, lamda: 1}\n"
    )
    text = str(pytest.raises(UserInputError, load_merge_config, cfg).value)
    for needle in ("density", "trim", 'Did you mean "lambda"'):
        assert needle in text, needle


def test_yaml_is_safe_load_only(tmp_path: Path) -> None:
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("merge_method: !!python/object/apply:os.system ['echo hi']\nmodels: [a]\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        load_merge_config(cfg)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_merge_json(files: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "c.safetensors"
    rc = main(["merge", "--method", "dare_ties", "--vectors", *map(str, files), "--weights", "1", "0.5", "0.5",
               "--param", "density=0.8,0.9,1.0", "--param", "seed=3", "--out", str(out), "--json", "--no-progress"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "dare_ties" and data["tensors"] == 2 and data["params"]["seed"] == 3
    want = merge("dare_ties", [TaskVector.load(p) for p in files], [1, 0.5, 0.5], density=[0.8, 0.9, 1.0], seed=3)
    assert torch.equal(TaskVector.load(out)["layers.0.w"], want["layers.0.w"])
    # the common --seed means the same here: DARE's masks (an explicit --param seed wins)
    by_flag = tmp_path / "f.safetensors"
    assert main(["merge", "--method", "dare_ties", "--vectors", *map(str, files), "--weights", "1", "0.5", "0.5",
                 "--param", "density=0.8,0.9,1.0", "--seed", "3", "--out", str(by_flag), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["seed"] == 3
    assert torch.equal(TaskVector.load(by_flag)["layers.0.w"], want["layers.0.w"])
    assert main(["merge", "--method", "dare_ties", "--vectors", *map(str, files), "--param", "seed=3",
                 "--param", "density=0.5", "--seed", "4", "--out", str(by_flag), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["seed"] == 3
    assert main(["merge", "--method", "ties", "--vectors", *map(str, files), "--seed", "4",
                 "--out", str(by_flag), "--json"]) == 0  # ties draws nothing: --seed is accepted, no effect
    assert "seed" not in json.loads(capsys.readouterr().out)["params"]
    assert main(["merge", "--list", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert {"task_arithmetic", "ties", "dare_linear", "dare_ties", "tsv", "breadcrumbs"} <= set(names)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--method", "tie"], 'Did you mean "ties"'),
        (["--method", "ties", "--param", "density"], "KEY=VALUE"),
        (["--method", "ties", "--param", "density=abc"], "must be a number"),
        (["--method", "ties", "--weights", "1"], "1 weights for 3 vectors"),
        (["--method", "tsv", "--out", "x.bin"], ".safetensors"),
        (["--config", "nope.yaml"], "does not exist"),
        (["--method", "ties", "--config", "c.yaml"], "--config already names"),
    ],
)
def test_cli_errors_exit_2_one_line(files: list[Path], tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    argv = ["merge", *extra]
    if "--config" not in extra:
        argv += ["--vectors", *map(str, files)]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "o.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.safetensors").exists()


def test_base_model_checked_by_fingerprint_or_name(files: list[Path], tmp_path: Path) -> None:
    from taskvec.models.fingerprint import fingerprint
    from taskvec.models.tiny import tiny_model

    model, _ = tiny_model("llama")
    base = tmp_path / "base"
    model.save_pretrained(base, safe_serialization=True)
    fp = fingerprint(base)
    good = []
    for i in range(2):
        good.append(tmp_path / f"g{i}.safetensors")
        TaskVector({"x": torch.tensor([1.0, float(i)])}, {"base_fingerprint": fp, "base_model": "tiny"}).save(good[-1])
    out = tmp_path / "m.safetensors"
    merge_files("task_arithmetic", good, out, base_model=str(base))
    assert TaskVector.load(out).metadata["base_fingerprint"] == fp
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        merge_files("task_arithmetic", files[:2], tmp_path / "n.safetensors", base_model=str(base))
    merge_files("task_arithmetic", files[:2], tmp_path / "n.safetensors", base_model="tiny")  # the recorded name
    with pytest.raises(FingerprintMismatchError, match="not the base"):
        merge_files("task_arithmetic", files[:2], tmp_path / "n.safetensors", base_model="other")
    rep = merge_files("task_arithmetic", files[:2], tmp_path / "n.safetensors", base_model="other", force=True)
    assert any("forced" in n for n in rep.notes)


def test_cli_negative_weights_and_human_output(files: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "neg.safetensors"
    assert main(["merge", "--method", "task_arithmetic", "--vectors", *map(str, files[:2]),
                 "--weights", "1", "-1", "--out", str(out), "--no-progress"]) == 0
    assert "task_arithmetic" in capsys.readouterr().out
    a, b = (TaskVector.load(p) for p in files[:2])
    torch.testing.assert_close(TaskVector.load(out)["layers.0.b"], a["layers.0.b"] - b["layers.0.b"])
