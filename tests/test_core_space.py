"""Core-space merging of low-rank vectors: exact where the method commutes with a change of
orthonormal basis, never an (out x in) tensor, low-rank files with bounded ranks, truncation
errors that equal the measured ones."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from taskvec.errors import ShapeMismatchError, UserInputError
from taskvec.formats import DeferredHeaderWriter, TensorSpec, read_header
from taskvec.weights.core_space import CoreSpace, compress, span_basis
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.merge import merge, merge_files
from taskvec.weights.merge.kernels import polar
from taskvec.weights.merge.registry import get_method
from taskvec.weights.vector import TaskVector

EXACT = ("task_arithmetic", "tsv", "iso_c", "iso_cts")
ELEMENTWISE = ("ties", "dare_linear", "dare_ties", "breadcrumbs")


def lora(out: int, inn: int, r: int, scale: float = 0.5, g: torch.Generator | None = None) -> LowRankDelta:
    return LowRankDelta(torch.randn(r, inn, generator=g), torch.randn(out, r, generator=g) * 0.1, scale)


def vectors(T: int = 3, out: int = 48, inn: int = 40, r: int = 4, seed: int = 0) -> list[TaskVector]:
    g = torch.Generator().manual_seed(seed)
    return [TaskVector({"a.weight": lora(out, inn, r, g=g), "b.weight": lora(inn, out, r + 1, g=g),
                        "n.weight": torch.randn(out, generator=g) * 0.01}) for _ in range(T)]


def dense(d: torch.Tensor | LowRankDelta) -> torch.Tensor:
    return d.to_dense() if isinstance(d, LowRankDelta) else d.float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# float32 SVD/QR pipelines on matrices of size <= 48: relative errors ~ 1e-6; the bound leaves
# a factor ~100 for the conditioning of the polar factors (TSV, Iso-CTS) of random data
EXACT_TOL = 1e-4


def test_core_space_reconstructs_each_delta_and_drops_shared_directions():
    g = torch.Generator().manual_seed(1)
    d1, d2 = lora(30, 20, 3, g=g), lora(30, 20, 2, g=g)
    d3 = LowRankDelta(d1.A[:2].clone(), d1.B[:, :2].clone() * 2, 1.0)  # inside d1's span
    cs = CoreSpace.of([d1, d2, d3], [1.0, -2.0, 0.5])
    assert cs.U.shape == (30, 5) and cs.V.shape == (20, 5)  # 3 + 2 + 2 ranks, span of 5
    assert torch.allclose(cs.U.T @ cs.U, torch.eye(5, dtype=torch.float64), atol=1e-12)
    for d, c, core in zip((d1, d2, d3), (1.0, -2.0, 0.5), cs.cores):
        assert rel(cs.dense(core), d.to_dense() * c) < 1e-6
    assert span_basis(torch.zeros(7, 3)).shape == (7, 0)


@pytest.mark.parametrize("method", EXACT)
def test_exact_methods_in_core_space_equal_the_dense_method(method):
    vs = vectors()
    weights = [1.0, -0.7, 0.4]  # a negative weight: PEFT's factor-wise combination gets it wrong
    lowrank = merge(method, vs, weights, lam=0.9)
    dense_ref = merge(method, [v.to_dense() for v in vs], weights, lam=0.9)
    for name in ("a.weight", "b.weight"):
        d = lowrank[name]
        assert isinstance(d, LowRankDelta), f"{method} densified {name}"
        assert d.rank <= sum(v[name].rank for v in vs)
        assert rel(d.to_dense(), dense_ref[name]) < EXACT_TOL, (method, name)
    assert rel(dense(lowrank["n.weight"]), dense_ref["n.weight"]) < 1e-6


@pytest.mark.parametrize("method", EXACT[1:])  # task_arithmetic has one path: stacked factors
def test_space_dense_writes_the_same_result_dense(method):
    vs = vectors(seed=2)
    core = merge(method, vs)
    d = merge(method, vs, space="dense")
    assert not isinstance(d["a.weight"], LowRankDelta)
    assert rel(core["a.weight"].to_dense(), d["a.weight"]) < EXACT_TOL


def iso_c_reference(mats: list[torch.Tensor]) -> torch.Tensor:
    """The paper's Iso-C on full-rank matrices, written from its definition."""
    U, S, Vh = torch.linalg.svd(sum(mats), full_matrices=False)
    return U @ torch.diag(torch.full_like(S, float(S.mean()))) @ Vh


def iso_cts_reference(mats: list[torch.Tensor], frac: float) -> torch.Tensor:
    """The paper's Iso-CTS on full-rank matrices (task-specific blocks first, as published)."""
    T, r = len(mats), min(mats[0].shape)
    k = int(r * frac)
    k = r - round((r - k) / T) * T
    n = (r - k) // T
    U, S, Vh = torch.linalg.svd(sum(mats), full_matrices=False)
    us, ss, vs = [], [], []
    for M in mats:
        u, s, vh = torch.linalg.svd(M - U[:, :k] @ U[:, :k].T @ M, full_matrices=False)
        us.append(u[:, :n]), ss.append(s[:n]), vs.append(vh[:n])
    X = polar(torch.cat(us + [U[:, :k]], 1))
    Y = polar(torch.cat(vs + [Vh[:k]], 0).T)
    s_all = torch.cat(ss + [S[:k]])
    return X @ torch.diag(torch.full_like(s_all, float(s_all.mean()))) @ Y.T


def test_iso_methods_on_full_rank_deltas_match_the_papers_definitions():
    g = torch.Generator().manual_seed(3)
    mats = [torch.randn(24, 18, generator=g) for _ in range(3)]
    vs = [TaskVector({"w.weight": m}) for m in mats]
    assert rel(merge("iso_c", vs)["w.weight"], iso_c_reference(mats)) < 1e-5
    for frac in (0.8, 0.5):
        assert rel(merge("iso_cts", vs, common=frac)["w.weight"], iso_cts_reference(mats, frac)) < 1e-4


@pytest.mark.parametrize("method", ELEMENTWISE)
def test_elementwise_space_core_is_the_method_applied_to_the_cores(method):
    vs = vectors(seed=4)
    got = merge(method, vs, space="core")["a.weight"]
    assert isinstance(got, LowRankDelta)
    cs = CoreSpace.of([v["a.weight"] for v in vs])
    cores = [TaskVector({"a.weight": c.float()}) for c in cs.cores]
    core = merge(method, cores)["a.weight"]  # the dense method on the cores
    assert rel(got.to_dense(), cs.dense(core)) < 1e-5
    default = merge(method, vs)["a.weight"]  # the published method: dense
    assert not isinstance(default, LowRankDelta)


def test_core_space_refusals():
    vs = vectors(seed=5)
    with pytest.raises(UserInputError, match='trim "tensor"'):
        merge("ties", vs, space="core", trim="global")
    mixed = [vs[0], TaskVector({k: dense(d) for k, d in vs[1].items()})]
    with pytest.raises(UserInputError, match="space: dense"):
        merge("tsv", mixed, space="core")
    assert not isinstance(merge("tsv", mixed)["a.weight"], LowRankDelta)  # auto: dense path


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (views included)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("method,params", [(m, {}) for m in EXACT] + [(m, {"space": "core"}) for m in ELEMENTWISE])
def test_no_method_allocates_an_out_by_in_tensor_for_low_rank_inputs(method, params):
    out, inn, r, T = 2048, 1024, 4, 3
    g = torch.Generator().manual_seed(6)
    vs = [TaskVector({"w.weight": lora(out, inn, r, g=g)}) for _ in range(T)]
    m = get_method(method)
    w, p, _ = m.validate(None, params, T)
    with LargestTensor() as track:
        res = m.apply_tensor("w.weight", [v["w.weight"] for v in vs], w, p)
        res = compress(res, rank=5)[0]  # truncation too
    assert isinstance(res, LowRankDelta)
    # the largest tensor is a stacked factor, (out, T r); a dense delta would be out x in
    assert track.largest <= out * T * r, f"{method}: {track.largest} values (out x in = {out * inn})"


def test_truncation_reports_the_exact_relative_error():
    vs = vectors(seed=7)
    full = merge("tsv", vs)
    for kw in ({"rank": 3}, {"energy": 0.9}):
        cut = merge("tsv", vs, **kw)
        t = cut.metadata["merge"]["truncation"]
        errs, norms = [], []
        for name in ("a.weight", "b.weight"):
            A, B = full[name].to_dense().double(), cut[name].to_dense().double()
            if "rank" in kw:
                assert cut[name].rank <= 3
            errs.append(float((A - B).norm() ** 2)), norms.append(float(A.norm() ** 2))
        assert math.isclose(t["relative_error"], math.sqrt(sum(errs) / sum(norms)), rel_tol=1e-4)
        assert 0 < t["relative_error"] < 1
    energy = merge("tsv", vs, energy=0.9)
    for name in ("a.weight", "b.weight"):  # fewest components holding >= 90% of the energy
        A, B = full[name].to_dense().double(), energy[name].to_dense().double()
        assert float(B.norm() ** 2) >= 0.9 * float(A.norm() ** 2) * (1 - 1e-6)


def test_compress_and_to_low_rank_never_densify_and_find_the_minimal_rank():
    g = torch.Generator().manual_seed(8)
    d = lora(64, 32, 3, g=g)
    doubled = d.concat(d)  # rank 6 stacked, true rank 3
    c, err = compress(doubled)
    assert c.rank == 3 and err == 0.0 and rel(c.to_dense(), doubled.to_dense()) < 1e-5
    tv = TaskVector({"w.weight": doubled}).to_low_rank()
    assert tv["w.weight"].rank == 3
    zero = compress(LowRankDelta(torch.zeros(2, 32), torch.zeros(64, 2)))[0]
    assert zero.rank == 1 and float(zero.to_dense().abs().max()) == 0.0


def test_merge_files_in_core_space_streams_a_low_rank_file(tmp_path):
    vs = vectors(seed=9)
    paths = [v.save(tmp_path / f"v{i}.safetensors") for i, v in enumerate(vs)]
    out = tmp_path / "m.safetensors"
    rep = merge_files("iso_cts", paths, out, weights=[1, 1, -0.5], rank=6)
    assert rep.storage == "mixed" and rep.low_rank_tensors == 2 and rep.truncation["rank"] == 6
    got = TaskVector.load(out)
    ref = merge("iso_cts", vs, [1, 1, -0.5], rank=6)
    for name in ("a.weight", "b.weight"):
        assert got[name].rank <= 6
        assert torch.equal(got[name].A, ref[name].A) and torch.equal(got[name].B, ref[name].B)
    assert got.metadata["merge"]["truncation"]["rank"] == 6
    from safetensors import safe_open  # the reserved header is read by safetensors itself

    with safe_open(str(out), framework="pt") as fh:
        assert set(fh.keys()) == {"lora_A::a.weight", "lora_B::a.weight", "lora_A::b.weight",
                                  "lora_B::b.weight", "dense::n.weight"}
    assert out.stat().st_size < sum(p.stat().st_size for p in paths)


def test_deferred_header_writer_bounds_and_padding(tmp_path):
    bounds = [TensorSpec("A", "F32", (8, 5)), TensorSpec("b", "F32", (3,))]
    path = tmp_path / "x.safetensors"
    with DeferredHeaderWriter(path, bounds, {"k": "v"}) as w:
        w.write("A", torch.ones(2, 5))
        w.write("b", torch.arange(3.0))
    h = read_header(path)
    assert h["A"]["shape"] == [2, 5] and h["__metadata__"] == {"k": "v"}
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert raw[8:8 + n].rstrip(b" ") == raw[8:8 + n].strip() and json.loads(raw[8:8 + n])
    with pytest.raises(ShapeMismatchError, match="bound"):
        DeferredHeaderWriter(tmp_path / "y.safetensors", bounds).write("A", torch.ones(9, 5))
    w = DeferredHeaderWriter(tmp_path / "z.safetensors", bounds)
    w.write("A", torch.ones(1, 5))
    with pytest.raises(UserInputError, match="not written"):
        w.close()


def test_breadcrumbs_in_core_space_notes_that_gamma_removes_most_of_each_task():
    m = get_method("breadcrumbs")
    _, _, notes = m.validate(None, {"space": "core"}, 2)
    assert len(notes) == 1 and 'space "core" with gamma > 0' in notes[0]
    assert m.validate(None, {"space": "core", "gamma": 0.0}, 2)[2] == []
    assert m.validate(None, {}, 2)[2] == []  # dense, the published method
    assert get_method("ties").validate(None, {"space": "core"}, 2)[2] == []
