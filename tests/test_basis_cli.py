"""``taskvec basis build | info | recover`` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from taskvec.cli.main import main
from taskvec.weights import LowRankDelta, TaskVector, load_vector


def _files(d: Path, T: int = 4) -> list[str]:
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(T):
        tv = TaskVector(
            {
                "model.layers.0.self_attn.q_proj.weight": LowRankDelta(torch.randn(2, 6, generator=g),
                                                                       torch.randn(6, 2, generator=g), 0.5),
                "model.layers.1.mlp.up_proj.weight": torch.randn(10, 6, generator=g),
                "model.norm.weight": torch.randn(6, generator=g),
            },
            {"task": f"t{t}", "base_fingerprint": "fp"},
        )
        p = d / f"v{t}.safetensors"
        tv.save(p)
        out.append(str(p))
    return out


def test_build_info_recover(tmp_path, capsys):
    vecs = _files(tmp_path)
    out = str(tmp_path / "b.safetensors")
    assert main(["basis", "build", *vecs, "--out", out, "--method", "pca", "--m", "3", "--json", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["method"], res["M"], res["T"]) == ("pca", 3, 4)
    assert max(r["rel_error"] for r in res["tasks"]) < 1e-6

    assert main(["basis", "info", out, "--vectors", *vecs, "--json", "--no-progress"]) == 0
    inf = json.loads(capsys.readouterr().out)
    assert all(r["rel_error_measured"] < 1e-6 for r in inf["tasks"])
    assert set(inf["per_layer_rel_error_measured"]) == {"layer.0", "layer.1", "other"}

    assert main(["basis", "info", out, "--layers"]) == 0
    text = capsys.readouterr().out
    assert "relative error per layer group" in text and "t3" in text

    rec = tmp_path / "t2.safetensors"
    assert main(["basis", "recover", out, "--task", "t2", "--out", str(rec), "--no-progress"]) == 0
    capsys.readouterr()
    got, want = load_vector(rec).to_dense(), load_vector(vecs[2]).to_dense()
    for n in want.names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-5)
    assert got.metadata["task"] == "t2"


def test_per_layer_random_sample_and_errors(tmp_path, capsys):
    vecs = _files(tmp_path)
    out = str(tmp_path / "rs.safetensors")
    assert main(["basis", "build", *vecs, "--out", out, "--method", "random_sample", "--m", "2",
                 "--per-layer", "--seed", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "no (projection)" in text and "per_layer=True" in text
    from taskvec.basis import load_basis

    sel = load_basis(out).selected
    missing = next(i for i in range(4) if i not in sel)
    # recovering a task outside the sample works, with a one-line warning on stderr
    rc = main(["basis", "recover", out, "--task", f"t{missing}", "--out", str(tmp_path / "x.safetensors"),
               "--no-progress", "--json"])
    cap = capsys.readouterr()
    assert rc == 0 and json.loads(cap.out)["in_basis"] is False
    assert cap.err.startswith(f'taskvec basis: warning: task "t{missing}" is not one of the 2 sampled')

    cases = [
        (["basis", "build", *vecs, "--out", str(tmp_path / "e.safetensors"), "--method", "pcaa"], 'Did you mean "pca"'),
        (["basis", "build", *vecs, "--out", str(tmp_path / "e.safetensors"), "--m", "9"], "more than the 4"),
        (["basis", "info", vecs[0]], "not a task vector basis"),
        (["basis", "info", str(tmp_path / "nope.safetensors")], "does not exist"),
        (["basis", "recover", out, "--task", "t7", "--out", str(tmp_path / "y.safetensors")], 'unknown task "t7"'),
    ]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1 and err.startswith("taskvec basis: error:")
    assert main(["basis"]) == 2


def test_merge_accepts_basis_tasks_and_whole_bases(tmp_path, capsys):
    vecs = _files(tmp_path)
    basis = str(tmp_path / "b.safetensors")
    assert main(["basis", "build", *vecs, "--out", basis, "--method", "pca", "--m", "3", "--no-progress"]) == 0
    capsys.readouterr()
    # BASIS#TASK inputs give (within float tolerance) the merge of the original files
    via_basis, direct = tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"
    assert main(["merge", "--method", "task_arithmetic", "--vectors", f"{basis}#t0", f"{basis}#t2",
                 "--param", "lambda=0.5", "--out", str(via_basis), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["inputs"]) == 2
    assert main(["merge", "--method", "task_arithmetic", "--vectors", vecs[0], vecs[2],
                 "--param", "lambda=0.5", "--out", str(direct)]) == 0
    capsys.readouterr()
    a, b = load_vector(via_basis).to_dense(), load_vector(direct).to_dense()
    for n in b.names:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-5)
    # a bare basis file stands for all of its tasks
    whole = tmp_path / "m3.safetensors"
    assert main(["merge", "--method", "ties", "--vectors", basis, "--out", str(whole), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["inputs"]) == 4
    # an unknown task is one clear line, exit 2, nothing written
    bad = tmp_path / "m4.safetensors"
    assert main(["merge", "--method", "ties", "--vectors", f"{basis}#nope", vecs[0], "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and err.count("\n") == 1 and not bad.exists()
