"""Task vector bases: streaming Gram, the four methods, the basis file, operations."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from taskvec.basis import (
    Basis,
    ReconstructionWarning,
    build_basis,
    load_basis,
    load_basis_or_vector,
    streaming_gram,
)
from taskvec.basis.autoencoder import ae_grads_, ae_loss
from taskvec.basis.random_orth import random_rows
from taskvec.errors import (
    FileFormatError,
    FingerprintMismatchError,
    ShapeMismatchError,
    UnknownNameError,
    UserInputError,
)
from taskvec.weights import LowRankDelta, TaskVector

SHAPES = {
    "model.embed_tokens.weight": (13, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.down_proj.weight": (8, 12),
    "model.norm.weight": (8,),
}
AE = {"steps": 300}


def _vectors(T: int, seed: int = 0, low_rank: bool = False, fp: str | None = "fp0") -> list[TaskVector]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(T):
        deltas = {}
        for n, s in SHAPES.items():
            if low_rank and len(s) == 2:
                deltas[n] = LowRankDelta(torch.randn(2, s[1], generator=g), torch.randn(s[0], 2, generator=g), 0.25)
            else:
                deltas[n] = torch.randn(s, generator=g)
        meta = {"task": f"task{t}"} | ({"base_fingerprint": fp, "base_model": "tiny"} if fp else {})
        out.append(TaskVector(deltas, meta))
    return out


def _save(tvs: list[TaskVector], d: Path, prefix: str = "v") -> list[Path]:
    paths = []
    for i, tv in enumerate(tvs):
        p = d / f"{prefix}{i}.safetensors"
        tv.save(p)
        paths.append(p)
    return paths


def _flat(tv: TaskVector) -> torch.Tensor:
    d = tv.to_dense()
    return torch.cat([d[n].double().reshape(-1) for n in SHAPES])


def _V(tvs: list[TaskVector]) -> torch.Tensor:
    return torch.stack([_flat(tv) for tv in tvs], dim=1)  # (D, T)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[list[TaskVector], list[Path]]:
    tvs = _vectors(5)
    return tvs, _save(tvs, tmp_path)


def _build(paths, tmp_path, name="b", **kw) -> Basis:
    kw.setdefault("chunk_elems", 17)  # tiny row blocks: exercises the chunked paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_basis(paths, tmp_path / f"{name}.safetensors", **kw)


# -- streaming Gram -----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [0, 7, 1 << 20])
def test_streaming_gram_equals_in_memory(files, chunk):
    tvs, paths = files
    V = _V(tvs)
    G = streaming_gram(paths, chunk_elems=chunk)
    assert G.dtype == torch.float64 and G.shape == (5, 5)
    torch.testing.assert_close(G, V.T @ V, rtol=1e-10, atol=0)


def test_dense_and_low_rank_inputs_give_the_same_gram(tmp_path):
    lr = _vectors(4, low_rank=True)
    G_lr = streaming_gram(_save(lr, tmp_path, "lr"), chunk_elems=9)
    G_dense = streaming_gram(_save([tv.to_dense() for tv in lr], tmp_path, "dense"))
    G_mem = streaming_gram(lr)  # in-memory TaskVectors work too
    # float64 Gram sums of float32 products, other orders: ~ n u64 relative, far below 1e-6
    torch.testing.assert_close(G_lr, G_dense, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(G_lr, G_mem, rtol=1e-12, atol=0)


def test_missing_tensors_count_as_zero(tmp_path):
    tvs = _vectors(3)
    del tvs[1].deltas["model.norm.weight"]
    V = _V([tv if i != 1 else TaskVector(tv.deltas | {"model.norm.weight": torch.zeros(8)}) for i, tv in enumerate(tvs)])
    torch.testing.assert_close(streaming_gram(_save(tvs, tmp_path)), V.T @ V, rtol=1e-10, atol=0)


def test_inputs_must_agree(tmp_path):
    a = _vectors(2)
    b = _vectors(1, fp="other")
    with pytest.raises(FingerprintMismatchError):
        _build(_save(a, tmp_path, "a") + _save(b, tmp_path, "b"), tmp_path)
    bad = TaskVector({"model.norm.weight": torch.zeros(9)})
    with pytest.raises(ShapeMismatchError):
        streaming_gram(_save(a, tmp_path, "a") + [bad])


# -- PCA ----------------------------------------------------------------------------------------
def test_pca_with_m_equal_t_reconstructs_every_vector(files, tmp_path):
    tvs, paths = files
    with pytest.warns(UserWarning, match="span only 4 dimensions"):
        basis = build_basis(paths, tmp_path / "b.safetensors", method="pca", m=5, chunk_elems=17)
    assert basis.M == 4  # centred: T - 1 components + the mean are exact
    for i, tv in enumerate(tvs):
        rec = basis.recover(f"task{i}")
        assert rec.metadata["task"] == f"task{i}" and rec.metadata["base_fingerprint"] == "fp0"
        torch.testing.assert_close(_flat(rec), _flat(tv), rtol=1e-5, atol=1e-5)
    est = basis.info()["tasks"]
    assert all(r["rel_error"] < 1e-6 for r in est)


def test_pca_components_are_orthonormal_and_coefficients_project(files, tmp_path):
    tvs, paths = files
    basis = _build(paths, tmp_path, method="pca", m=2)
    S = torch.stack([torch.cat([basis.basis_rows(n)[:, m] for n in SHAPES]) for m in range(2)], dim=1)
    mu = torch.cat([basis.mean_rows(n) for n in SHAPES])
    V = _V(tvs)
    torch.testing.assert_close(mu, V.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(S.T @ S, torch.eye(2, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(basis.coefficients[0], (V - mu[:, None]).T @ S, rtol=1e-4, atol=1e-4)
    sv = torch.linalg.svdvals(V - V.mean(1, keepdim=True))[:2]
    torch.testing.assert_close(basis.singular_values[0], sv, rtol=1e-8, atol=1e-8)


def test_pca_addition_adds_the_mean_back(files, tmp_path):
    tvs, paths = files
    full = _build(paths, tmp_path, "full", method="pca", m=5)
    V = _V(tvs)
    torch.testing.assert_close(_flat(full.addition(0.7)), 0.7 * V.sum(1), rtol=1e-5, atol=1e-4)
    w = [0.5, -1.0, 0.0, 2.0, 0.25]
    torch.testing.assert_close(_flat(full.addition(w)), V @ torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    # with fewer components, addition is still the weighted sum of the reconstructions
    small = _build(paths, tmp_path, "small", method="pca", m=2)
    want = sum(_flat(small.recover(i)) for i in range(5)) * 0.7
    torch.testing.assert_close(_flat(small.addition(0.7)), want, rtol=1e-5, atol=1e-4)
    part = small.addition({"task1": 1.0, "task3": 0.5})
    torch.testing.assert_close(_flat(part), _flat(small.recover(1)) + 0.5 * _flat(small.recover(3)), rtol=1e-5, atol=1e-4)
    neg = small.negation("task2")
    torch.testing.assert_close(_flat(neg), -_flat(small.recover(2)), rtol=0, atol=1e-6)


# -- autoencoder --------------------------------------------------------------------------------
def test_autoencoder_gradient_matches_autograd():
    V = torch.randn(50, 6, dtype=torch.float64)
    G = V.T @ V
    A = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    ae_loss(G, A, W, 2.0).backward()
    A2, W2 = A.detach().clone(), W.detach().clone()
    A2.grad, W2.grad = torch.zeros_like(A2), torch.zeros_like(W2)
    ae_grads_(G, A2, W2, 2.0)
    torch.testing.assert_close(A2.grad, A.grad)
    torch.testing.assert_close(W2.grad, W.grad)


def test_autoencoder_loss_decreases_and_basis_is_convex(files, tmp_path):
    tvs, paths = files
    basis = _build(paths, tmp_path, method="autoencoder", m=3, seed=1, options=AE)
    fit = basis.fit_info[0]
    losses = [v for _, v in fit["loss_history"]]
    assert losses[0] == pytest.approx(1.0) and losses[-1] < losses[0]
    assert fit["loss_final"] <= fit["loss_trained"] < fit["loss_initial"]
    P = basis.mix[0]  # (T, M)
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(P, torch.softmax(basis.logits[0] / 5.0, dim=0))
    V = _V(tvs)
    S = torch.stack([torch.cat([basis.basis_rows(n)[:, m] for n in SHAPES]) for m in range(3)], dim=1)
    torch.testing.assert_close(S, V @ P, rtol=1e-5, atol=1e-5)  # S = V softmax(A / tau)
    # the loss is the unreconstructed fraction of the collection, as measured on the files
    rec = torch.stack([_flat(basis.recover(i)) for i in range(5)], dim=1)
    assert ((V - rec) ** 2).sum() / (V**2).sum() == pytest.approx(fit["loss_final"], rel=1e-4)


def test_autoencoder_is_reproducible(files, tmp_path):
    _, paths = files
    a = _build(paths, tmp_path, "a", method="autoencoder", m=2, seed=3, options=AE)
    b = _build(paths, tmp_path, "b", method="autoencoder", m=2, seed=3, options=AE)
    c = _build(paths, tmp_path, "c", method="autoencoder", m=2, seed=4, options=AE)
    assert torch.equal(a.coefficients, b.coefficients) and torch.equal(a.mix, b.mix)
    assert not torch.equal(a.mix, c.mix)


# -- random -------------------------------------------------------------------------------------
def test_random_basis_regenerates_bit_identically(files, tmp_path):
    tvs, paths = files
    basis = _build(paths, tmp_path, method="random", m=3, seed=7)
    assert not any(k.startswith("basis::") for k in basis.reader.specs)  # only coefficients stored
    name = "model.layers.0.mlp.up_proj.weight"
    whole = random_rows(7, name, 3, 0, 96)
    assert torch.equal(whole, random_rows(7, name, 3, 0, 96))
    assert torch.equal(whole[17:70], random_rows(7, name, 3, 17, 70))  # any slice, any order
    assert not torch.equal(whole, random_rows(8, name, 3, 0, 96))
    with pytest.warns(ReconstructionWarning, match="barely represented"):  # M = 3 random directions
        r1, r2 = basis.recover("task0"), load_basis(basis.path).recover("task0")
    assert all(torch.equal(r1[n], r2[n]) for n in SHAPES)
    # Q = R random_mix is orthonormal and the coefficients are the projections Q^T v
    R = torch.cat([random_rows(7, n, 3, 0, torch.Size(s).numel()).double() for n, s in SHAPES.items()])
    Q = R @ basis.random_mix[0]
    torch.testing.assert_close(Q.T @ Q, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(basis.coefficients[0], _V(tvs).T @ Q, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_flat(r1), Q @ basis.coefficients[0][0], rtol=1e-5, atol=1e-5)


# -- random_sample ------------------------------------------------------------------------------
def test_random_sample_refuses_to_negate_a_task_it_cannot_reconstruct(files, tmp_path):
    tvs, paths = files
    basis = _build(paths, tmp_path, method="random_sample", m=2, seed=0)
    sel = basis.selected
    assert len(sel) == 2
    out = next(i for i in range(5) if i not in sel)
    with pytest.raises(UserInputError, match="not one of the 2 sampled"):
        basis.negation(out)
    with pytest.warns(ReconstructionWarning, match="projection"):
        basis.recover(out)
    neg = basis.negation(sel[0])
    assert all(torch.equal(neg[n], -tvs[sel[0]].deltas[n]) for n in SHAPES)  # exact
    assert [r["in_basis"] for r in basis.info()["tasks"]] == [i in sel for i in range(5)]


def test_barely_represented_task_warns_on_recover_and_negate(files, tmp_path):
    """Relative error >= 0.9 (from the Grams) -> ReconstructionWarning; a well-kept task: none."""
    import warnings

    from taskvec.basis.arithmetic import POOR_RECONSTRUCTION, estimated_errors

    tvs, paths = files
    basis = _build(paths, tmp_path, method="random", m=1, seed=0)
    errs = estimated_errors(basis)[0]
    poor = [i for i, e in enumerate(errs) if e >= POOR_RECONSTRUCTION]
    assert poor, errs  # a 1-dimensional random subspace keeps almost nothing of these vectors
    with pytest.warns(ReconstructionWarning, match=f"barely represented .* error {errs[poor[0]]:.3g}"):
        basis.recover(poor[0])
    with pytest.warns(ReconstructionWarning, match="negated vector is close to zero"):
        basis.negation(poor[0])
    full = _build(paths, tmp_path, name="full", method="pca", m=4)  # M = T - 1, centred: exact
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReconstructionWarning)
        full.recover(0)
        full.negation(0)


# -- files, per-layer, info ---------------------------------------------------------------------
def test_basis_file_round_trip(files, tmp_path):
    tvs, paths = files
    for method in ("pca", "autoencoder", "random", "random_sample"):
        b = _build(paths, tmp_path, method, method=method, m=3, seed=2, options=AE if method == "autoencoder" else None)
        again = Basis.load(b.path)
        assert (again.method, again.M, again.T, again.tasks) == (method, 3, 5, [f"task{i}" for i in range(5)])
        assert torch.equal(again.coefficients, b.coefficients)
        assert again.shapes == {n: tuple(s) for n, s in SHAPES.items()}
        assert again.metadata["base_fingerprint"] == "fp0"
        inf = again.info(vectors=paths)
        for r in inf["tasks"]:  # Gram-based and measured errors agree
            assert r["rel_error"] == pytest.approx(r["rel_error_measured"], rel=1e-4, abs=1e-6)
        assert inf["storage"]["collection_bytes"] == sum(p.stat().st_size for p in paths)
        json.dumps(inf)


def test_per_layer_bases(files, tmp_path):
    tvs, paths = files
    whole = _build(paths, tmp_path, "whole", method="pca", m=2)
    per = _build(paths, tmp_path, "per", method="pca", m=2, per_layer=True)
    assert whole.groups == ["all"]
    assert per.groups == ["layer.0", "layer.1", "other"] == per.stats_groups
    assert per.coefficients.shape == (3, 5, 2)
    V = _V(tvs)

    def total_err(b: Basis) -> float:
        rec = torch.stack([_flat(b.recover(i)) for i in range(5)], dim=1)
        return float(((V - rec) ** 2).sum())

    assert total_err(per) <= total_err(whole) + 1e-6  # PCA per group is optimal per group
    inf = per.info(vectors=paths)
    assert set(inf["per_layer_rel_error"]) == {"layer.0", "layer.1", "other"}
    for lk, row in inf["per_layer_rel_error"].items():
        for t, v in row.items():
            assert v == pytest.approx(inf["per_layer_rel_error_measured"][lk][t], rel=1e-4, abs=1e-6)
    full = _build(paths, tmp_path, "full", method="random_sample", m=5, per_layer=True)
    for i in range(5):
        assert torch.equal(_flat(full.recover(i)), _flat(tvs[i]))


def _corrupt_header(path: Path, out: Path, edit) -> Path:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    out.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n :])
    return out


def test_corrupted_basis_files_raise_file_format_error(files, tmp_path):
    _, paths = files
    b = _build(paths, tmp_path, method="pca", m=2)
    raw = b.path.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!}",
        "empty": b"",
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(FileFormatError):
            load_basis(p)

    def drop_tensor(h):
        del h["basis::1::model.norm.weight"]

    def bad_meta(h):
        h["__metadata__"]["tasks"] = "[oops"

    def wrong_t(h):
        h["__metadata__"]["T"] = "4"

    def version(h):
        h["__metadata__"]["format_version"] = "99"

    for edit in (drop_tensor, bad_meta, wrong_t, version):
        with pytest.raises(FileFormatError):
            load_basis(_corrupt_header(b.path, tmp_path / f"{edit.__name__}.safetensors", edit))
    with pytest.raises(FileFormatError, match="is a weight-space task vector .*, not a task vector basis"):
        load_basis(paths[0])
    nan = bytearray(raw)  # NaN in the coefficients (the first tensor's data)
    n = int.from_bytes(raw[:8], "little")
    nan[8 + n : 8 + n + 8] = torch.tensor([float("nan")], dtype=torch.float64).numpy().tobytes()
    (tmp_path / "nan.safetensors").write_bytes(bytes(nan))
    with pytest.raises(FileFormatError, match="NaN"):
        load_basis(tmp_path / "nan.safetensors")


def test_bad_arguments(files, tmp_path):
    _, paths = files
    with pytest.raises(UnknownNameError, match='Did you mean "pca"'):
        _build(paths, tmp_path, method="pcaa")
    with pytest.raises(UserInputError, match="more than the 5"):
        _build(paths, tmp_path, method="autoencoder", m=6)
    with pytest.raises(UserInputError, match="do not apply"):
        _build(paths, tmp_path, method="pca", options={"tau": 1.0})
    with pytest.raises(UserInputError, match=".safetensors"):
        build_basis(paths, tmp_path / "x.pth", method="pca")
    with pytest.raises(UserInputError, match="at least 2"):
        _build(paths[:1], tmp_path, method="pca", m=1)
    basis = _build(paths, tmp_path, method="pca", m=2)
    with pytest.raises(UnknownNameError, match='Did you mean "task1"'):
        basis.recover("taks1")
    with pytest.raises(UserInputError, match="3 weights"):
        basis.addition([1.0, 2.0, 3.0])


def test_load_basis_or_vector(files, tmp_path):
    tvs, paths = files
    b = _build(paths, tmp_path, method="random_sample", m=5)
    [one] = load_basis_or_vector(f"{b.path}#task3")
    assert torch.equal(_flat(one), _flat(tvs[3]))
    assert len(load_basis_or_vector(b.path)) == 5
    [v] = load_basis_or_vector(paths[0])
    assert torch.equal(_flat(v), _flat(tvs[0]))


def test_block_size_does_not_change_the_basis(files, tmp_path):
    _, paths = files
    a = _build(paths, tmp_path, "a", method="pca", m=3, chunk_elems=0)  # whole tensors
    b = _build(paths, tmp_path, "b", method="pca", m=3, chunk_elems=5)  # one row per block
    torch.testing.assert_close(a.coefficients, b.coefficients, rtol=1e-10, atol=1e-12)
    for n in SHAPES:
        torch.testing.assert_close(a.basis_rows(n), b.basis_rows(n), rtol=0, atol=1e-6)
