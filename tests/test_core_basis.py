"""Core-space bases of LoRA collections: low-rank atoms over a shared span, smaller than the
LoRA files, with exact stored errors and recover / addition / negation as for dense bases."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from taskvec.basis import build_basis
from taskvec.basis.core_basis import build_core_basis
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.vector import TaskVector

METHODS = ("pca", "autoencoder", "random_sample", "random")


def collection(tmp_path, T=6, shapes=((50, 40), (20, 30)), r=4, seed=0, shared=0):
    """LoRA vectors; with ``shared`` > 0 the tasks share ``shared`` of their r directions."""
    g = torch.Generator().manual_seed(seed)
    common = {i: (torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g)) for i, (out, inn) in enumerate(shapes)}
    paths = []
    for t in range(T):
        deltas = {}
        for i, (out, inn) in enumerate(shapes):
            A, B = torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g)
            if shared:
                A[:shared], B[:, :shared] = common[i][0][:shared], common[i][1][:, :shared]
            deltas[f"model.layers.{i}.proj.weight"] = LowRankDelta(A, B * 0.1, 0.5)
        paths.append(TaskVector(deltas, {"task": f"t{t}"}).save(tmp_path / f"t{t}.safetensors"))
    return paths


def options(method):
    return {"steps": 60} if method == "autoencoder" else None


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("method", METHODS)
def test_core_basis_errors_are_exact_and_operations_stay_low_rank(tmp_path, method):
    paths = collection(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random_sample: unsampled tasks are projections
        b = build_core_basis(paths, tmp_path / "b.safetensors", method=method, m=3, options=options(method))
        inf = b.info(vectors=paths)
        assert b.form == "core space (low-rank)" and inf["space"]["span_rank"]
        for row in inf["tasks"]:  # stored at build time == measured against the LoRA files
            assert abs(row["rel_error"] - row["rel_error_measured"]) < 1e-4, row
        recs = [b.recover(t) for t in range(b.T)]
    for r in recs:
        assert r.form == "low-rank" and all(d.rank <= 12 for d in r.deltas.values())
    name = recs[0].names[0]
    w = [1.0, -0.5, 0.0, 2.0, 0.25, 1.0]
    add = b.addition(w)
    want = sum(wi * r[name].to_dense() for wi, r in zip(w, recs))
    assert add.form == "low-rank" and rel(add[name].to_dense(), want) < 1e-5
    if method != "random_sample":
        neg = b.negation("t1")
        assert rel(neg[name].to_dense(), -recs[1][name].to_dense()) < 1e-6


def test_full_span_core_basis_equals_the_dense_basis(tmp_path):
    paths = collection(tmp_path, seed=1)
    core = build_core_basis(paths, tmp_path / "c.safetensors", method="pca", m=3, span_rank=10_000)
    dense = build_basis(paths, tmp_path / "d.safetensors", method="pca", m=3)
    ce = [r["rel_error"] for r in core.info()["tasks"]]
    de = [r["rel_error_measured"] for r in dense.info(vectors=paths)["tasks"]]
    assert max(abs(a - b) for a, b in zip(ce, de)) < 1e-4  # same Gram, same fit, nothing cut
    for t in range(core.T):
        c, d = core.recover(t), dense.recover(t)
        for n in d.names:
            assert rel(c[n].to_dense(), d[n]) < 1e-4


def test_random_sample_core_basis_keeps_sampled_tasks_exactly(tmp_path):
    paths = collection(tmp_path, seed=2)
    b = build_core_basis(paths, tmp_path / "b.safetensors", method="random_sample", m=3)
    for t in b.selected or []:
        assert b.info()["tasks"][t]["rel_error"] < 1e-3
        orig = TaskVector.load(paths[t])
        rec = b.recover(t)
        for n in orig.names:
            assert rel(rec[n].to_dense(), orig[n].to_dense()) < 1e-4


def test_core_basis_with_m_half_is_smaller_than_the_lora_collection(tmp_path):
    # realistic module sizes: 8 tasks, rank 8, 256 x 256 and 256 x 512 modules
    paths = collection(tmp_path, T=8, shapes=((256, 256), (256, 512)), r=8, seed=3, shared=4)
    b = build_core_basis(paths, tmp_path / "b.safetensors", method="pca", m=4)
    st = b.info(vectors=paths)["storage"]
    # span k = M x r = 32: factors (256+256 + 256+512) x 32 = 40,960 values, cores 5 x 32^2 x 2 =
    # 10,240, vs the collection's 8 x 8 x (512 + 768) = 81,920: 0.625 plus the header
    assert 0.62 < st["basis_vs_collection"] < 0.65, st
    dense = build_basis(paths, tmp_path / "d.safetensors", method="pca", m=4)
    assert dense.info(vectors=paths)["storage"]["basis_vs_collection"] > 2


def test_cli_basis_build_picks_core_space_for_lora_and_refuses_dense_inputs(tmp_path, capsys):
    from taskvec.cli.main import main

    paths = [str(p) for p in collection(tmp_path, seed=4)]
    out = tmp_path / "b.safetensors"
    assert main(["basis", "build", *paths, "--out", str(out), "--m", "3", "--json", "--no-progress"]) == 0
    inf = json.loads(capsys.readouterr().out)
    assert inf["space"]["form"] == "core" and inf["storage"]["basis_vs_collection"] < 1
    assert main(["basis", "recover", str(out), "--task", "t2", "--out", str(tmp_path / "r.safetensors")]) == 0
    assert TaskVector.load(tmp_path / "r.safetensors").form == "low-rank"
    capsys.readouterr()
    merged = tmp_path / "m.safetensors"  # BASIS#TASK inputs of a merge stay low-rank
    assert main(["merge", "--method", "tsv", "--vectors", f"{out}#t0", f"{out}#t1", "--out", str(merged), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"] == "low-rank"
    assert TaskVector.load(merged).form == "low-rank"
    dense = TaskVector.load(paths[0]).to_dense().save(tmp_path / "dense.safetensors")
    assert main(["basis", "build", str(dense), *paths[1:], "--out", str(tmp_path / "x.safetensors"),
                 "--space", "core"]) == 2
    assert "use --space dense" in capsys.readouterr().err
    assert main(["basis", "build", *paths, "--out", str(tmp_path / "y.safetensors"), "--space", "dense",
                 "--span-rank", "4"]) == 2


@pytest.mark.parametrize("method", METHODS)
def test_basis_sum_is_the_sum_of_the_source_style_basis_vectors(tmp_path, method):
    """uiuctml/TaskVectorBasis adds tasks as the sum of its M basis vectors (PCA: U_m S_m)."""
    from taskvec.basis.pca import centred_gram

    paths = collection(tmp_path, seed=5)
    vs = [TaskVector.load(p) for p in paths]
    b = build_basis(paths, tmp_path / "d.safetensors", method=method, m=3, options=options(method))
    got = b.basis_sum()
    name = vs[0].names[0]
    if method == "pca":  # reference: centred SVD, variance-scaled components, LAPACK's signs
        V = torch.stack([torch.cat([v[n].to_dense().reshape(-1) for n in v.names]) for v in vs], 1).double()
        evals, evecs = torch.linalg.eigh(centred_gram(V.T @ V))
        U = evecs.flip(1)[:, :3]  # (T, M)
        Vc = V - V.mean(1, keepdim=True)
        want = (Vc @ U).sum(1)[: vs[0][name].to_dense().numel()].reshape(vs[0][name].shape)
        assert rel(got[name], want) < 1e-4
    elif method == "random_sample":
        want = sum(vs[i][name].to_dense() for i in b.selected or [])
        assert rel(got[name], want) < 1e-5
    else:  # the atoms themselves, summed
        with b.reader:
            atoms = b.basis_rows(name).sum(1).reshape(vs[0][name].shape) if not b.random_projection else None
        if atoms is not None:
            assert rel(got[name], atoms) < 1e-5
        else:  # the sum of M orthonormal directions has squared norm M over the whole vector
            total = sum(float(got[n].double().pow(2).sum()) for n in got.names)
            assert abs(total - b.M) < 1e-4 * b.M
