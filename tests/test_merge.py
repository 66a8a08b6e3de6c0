"""Merge methods on tiny hand-computed cases, and invariants every method must keep."""

from __future__ import annotations

import math

import pytest
import torch

from taskvec.errors import UnknownNameError, UserInputError
from taskvec.weights import LowRankDelta, TaskVector
from taskvec.weights.merge import get_method, list_methods, merge
from taskvec.weights.merge.kernels import dare_keep, kth_largest_abs_stream

T1 = [0.5, -1.0, 0.2, 3.0]
T2 = [-0.4, 2.0, -0.1, 1.0]
T3 = [0.6, -0.3, 0.9, -2.0]


def tv(task: str, **deltas) -> TaskVector:
    return TaskVector({k: (v if isinstance(v, (torch.Tensor, LowRankDelta)) else torch.tensor(v)) for k, v in deltas.items()},
                      {"task": task, "base_fingerprint": "fp0"})


def three() -> list[TaskVector]:
    return [tv("a", w=T1), tv("b", w=T2), tv("c", w=T3)]


# -- TIES -------------------------------------------------------------------------------------
def test_ties_by_hand() -> None:
    # density 0.5 keeps the top 2 of 4 magnitudes of each task:
    #   a [0.5, -1.0, 0.2, 3.0] -> [0, -1.0, 0, 3.0]
    #   b [-0.4, 2.0, -0.1, 1.0] -> [0, 2.0, 0, 1.0]
    #   c [0.6, -0.3, 0.9, -2.0] -> [0, 0, 0.9, -2.0]
    # sum [0, 1.0, 0.9, 2.0] -> elected signs [0, +, +, +]
    # disjoint mean: e0 nobody (0); e1 b only: 2.0; e2 c only: 0.9; e3 a, b agree: (3+1)/2 = 2.0
    out = merge("ties", three(), density=0.5)
    torch.testing.assert_close(out["w"], torch.tensor([0.0, 2.0, 0.9, 2.0]))
    # lambda scales the result; normalize=false is the disjoint sum (e3: 3 + 1 = 4)
    torch.testing.assert_close(merge("ties", three(), density=0.5, lam=0.5)["w"], torch.tensor([0.0, 1.0, 0.45, 1.0]))
    torch.testing.assert_close(merge("ties", three(), density=0.5, normalize=False)["w"], torch.tensor([0.0, 2.0, 0.9, 4.0]))
    # weights [1, 1, 3]: weighted trimmed c = [0, 0, 2.7, -6]; e3 sum 3 + 1 - 6 = -2 -> c wins: -6 / 3 = -2
    torch.testing.assert_close(merge("ties", three(), [1, 1, 3], density=0.5)["w"], torch.tensor([0.0, 2.0, 0.9, -2.0]))


def test_ties_per_model_density() -> None:
    # density [1, 0.25, 0.25]: a untrimmed; b keeps 2.0; c keeps -2.0
    # sum [0.5, 1.0, 0.2, 1.0] -> all +; e0 a 0.5; e1 b 2.0 (a's -1 disagrees); e2 a 0.2; e3 a 3.0
    out = merge("ties", three(), density=[1.0, 0.25, 0.25])
    torch.testing.assert_close(out["w"], torch.tensor([0.5, 2.0, 0.2, 3.0]))


def test_ties_global_vs_tensor_trim_differ() -> None:
    v = tv("a", x=[10.0, 9.0], y=[1.0, 2.0])
    per_tensor = merge("ties", [v], density=0.5)  # top 1 of each tensor: x [10, 0], y [0, 2]
    global_ = merge("ties", [v], density=0.5, trim="global")  # top 2 of 4 overall: 10 and 9
    torch.testing.assert_close(per_tensor["x"], torch.tensor([10.0, 0.0]))
    torch.testing.assert_close(per_tensor["y"], torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(global_["x"], torch.tensor([10.0, 9.0]))
    torch.testing.assert_close(global_["y"], torch.tensor([0.0, 0.0]))


@pytest.mark.parametrize("k", [1, 7, 500, 999])
def test_streaming_kth_largest_is_exact(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    chunks = [torch.randn(n, generator=g) * s for n, s in ((300, 1.0), (200, 1e-3), (500, 40.0))]
    chunks[1][:50] = 0.0
    want = torch.cat(chunks).abs().sort(descending=True).values[k - 1]
    assert kth_largest_abs_stream(lambda: iter(chunks), k, 1000) == float(want)


# -- DARE -------------------------------------------------------------------------------------
def test_dare_p0_is_task_arithmetic_exactly() -> None:
    ta = merge("task_arithmetic", three(), [0.3, -1.2, 0.7], lam=0.9)
    dl = merge("dare_linear", three(), [0.3, -1.2, 0.7], p=0.0, lam=0.9, seed=5)
    assert torch.equal(ta["w"], dl["w"])
    assert torch.equal(merge("dare", three(), density=1.0)["w"], merge("task_arithmetic", three())["w"])
    # dare_ties with p = 0 is TIES without trimming
    assert torch.equal(merge("dare_ties", three(), p=0.0)["w"], merge("ties", three(), density=1.0)["w"])


def test_dare_fixed_mask_and_rescale() -> None:
    x = torch.arange(1.0, 17.0)  # 16 entries
    out = merge("dare_linear", [tv("a", w=x)], p=0.5, seed=3)["w"]
    keep = dare_keep(3, "w", 0, (16,), 0.5)
    assert torch.equal(out, torch.where(keep, x * 2.0, torch.zeros(())))  # kept entries x / (1 - 0.5)
    assert 0 < int(keep.sum()) < 16
    again = merge("dare_linear", [tv("a", w=x)], p=0.5, seed=3)["w"]
    assert torch.equal(out, again)  # deterministic
    assert not torch.equal(out, merge("dare_linear", [tv("a", w=x)], p=0.5, seed=4)["w"])
    assert not torch.equal(dare_keep(3, "w", 0, (16,), 0.5), dare_keep(3, "w", 1, (16,), 0.5))
    no_rescale = merge("dare_linear", [tv("a", w=x)], p=0.5, seed=3, rescale=False)["w"]
    assert torch.equal(no_rescale, torch.where(keep, x, torch.zeros(())))


def test_dare_expectation_over_seeds() -> None:
    x = torch.linspace(-2.0, 2.0, 32)
    mean = sum(merge("dare_linear", [tv("a", w=x)], p=0.5, seed=s)["w"] for s in range(400)) / 400
    # each entry: mean of 400 draws of 2x * Bernoulli(0.5): sd |x| / 20 <= 0.1
    assert float((mean - x).abs().max()) < 0.45
    assert float((mean - x).abs().mean()) < 0.12


def test_dare_p_and_density_exclusive() -> None:
    with pytest.raises(UserInputError, match="not both"):
        merge("dare_ties", three(), p=0.1, density=0.9)


# -- TSV --------------------------------------------------------------------------------------
def test_tsv_orthogonal_rank1_tasks_sum_exactly() -> None:
    e = torch.eye(3)
    a = 3.0 * torch.outer(e[0], e[1])
    b = 2.0 * torch.outer(e[2], e[0])
    out = merge("tsv", [tv("a", w=a), tv("b", w=b)])  # k = floor(3 / 2) = 1 component each
    torch.testing.assert_close(out["w"], a + b, atol=1e-6, rtol=0)


def test_tsv_decorrelates_by_hand() -> None:
    # tau_a = 2 e1 e1^T, tau_b = u u^T with u at 60 degrees: U = V = [e1, u]. The nearest
    # orthonormal pair to two unit vectors 60 degrees apart turns each 15 degrees away from the
    # other: e1 -> (cos 15, -sin 15), u -> (sin 15, cos 15). Result 2 p p^T + q q^T:
    #   cos^2 15 = 0.9330127, sin 15 cos 15 = 0.25, sin^2 15 = 0.0669873
    #   [[2 * 0.9330127 + 0.0669873, -0.5 + 0.25], [-0.25, 2 * 0.0669873 + 0.9330127]]
    u = torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3)])
    e1 = torch.tensor([1.0, 0.0])
    out = merge("tsv", [tv("a", w=2 * torch.outer(e1, e1)), tv("b", w=torch.outer(u, u))])
    torch.testing.assert_close(out["w"], torch.tensor([[1.9330127, -0.25], [-0.25, 1.0669873]]), atol=1e-5, rtol=0)


def test_tsv_vectors_are_averaged() -> None:
    out = merge("tsv", [tv("a", b=[1.0, 2.0]), tv("b", b=[3.0, -2.0])])
    torch.testing.assert_close(out["b"], torch.tensor([2.0, 0.0]))
    out = merge("tsv", [tv("a", b=[1.0, 2.0]), tv("b", b=[3.0, -2.0])], vector_reduce="sum", lam=0.5)
    torch.testing.assert_close(out["b"], torch.tensor([2.0, 0.0]))


# -- Breadcrumbs ------------------------------------------------------------------------------
def test_breadcrumbs_by_hand() -> None:
    # density 0.6, gamma 0.2 on 5 entries: drop the top 1 magnitude, keep the next 3, drop the rest
    #   a [4.0, -1.0, 0.5, 2.0, -0.1] -> [0, -1.0, 0.5, 2.0, 0]
    #   b [0.3, 0.2, -3.0, -0.6, 1.0] -> [0.3, 0, 0, -0.6, 1.0]
    # weights [1, 0.5]: [0.15, -1.0, 0.5, 2.0 - 0.3, 0.5]
    a = tv("a", w=[4.0, -1.0, 0.5, 2.0, -0.1])
    b = tv("b", w=[0.3, 0.2, -3.0, -0.6, 1.0])
    out = merge("breadcrumbs", [a, b], [1.0, 0.5], density=0.6, gamma=0.2)
    torch.testing.assert_close(out["w"], torch.tensor([0.15, -1.0, 0.5, 1.7, 0.5]))


def test_breadcrumbs_density_plus_gamma_checked() -> None:
    with pytest.raises(UserInputError, match="density \\+ gamma"):
        merge("breadcrumbs", three(), density=0.95, gamma=0.1)


# -- invariants -------------------------------------------------------------------------------
IDENTITY = {
    "task_arithmetic": {},
    "ties": {"density": 1.0},
    "dare_linear": {"p": 0.0},
    "dare_ties": {"p": 0.0},
    "tsv": {},
    "breadcrumbs": {"density": 1.0, "gamma": 0.0},
}


def _mixed_vector(seed: int = 0) -> TaskVector:
    g = torch.Generator().manual_seed(seed)
    return TaskVector(
        {
            "l.weight": torch.randn(6, 5, generator=g),
            "l.bias": torch.randn(6, generator=g),
            "m.weight": torch.randn(3, 4, generator=g),
        },
        {"task": f"t{seed}"},
    )


#: methods with no parameters under which one vector comes back as itself
NO_IDENTITY = {"iso_c": "flattens the spectrum of even one task", "iso_cts": "the same"}


def test_every_method_has_identity_params() -> None:
    assert sorted(IDENTITY | NO_IDENTITY) == sorted(m.name for m in list_methods())


@pytest.mark.parametrize("method", sorted(NO_IDENTITY))
def test_iso_methods_keep_a_flat_spectrum_task(method: str) -> None:
    q, _ = torch.linalg.qr(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))
    v = TaskVector({"l.weight": q * 0.3, "l.bias": torch.randn(6)})  # singular values all 0.3
    out = merge(method, [v])
    torch.testing.assert_close(out["l.weight"], v["l.weight"], atol=1e-6, rtol=0)
    assert torch.equal(out["l.bias"], v["l.bias"])


@pytest.mark.parametrize("method", sorted(IDENTITY))
def test_one_vector_weight_one_is_identity(method: str) -> None:
    v = _mixed_vector()
    out = merge(method, [v], [1.0], **IDENTITY[method])
    for name, d in v.items():
        assert torch.equal(out[name], d), name


def test_low_rank_identity_and_exact_concatenation() -> None:
    g = torch.Generator().manual_seed(1)
    lr = [LowRankDelta(torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g), 1.0) for _ in range(2)]
    one = merge("task_arithmetic", [tv("a", w=lr[0])])
    assert isinstance(one["w"], LowRankDelta) and torch.equal(one["w"].to_dense(), lr[0].to_dense())
    two = merge("task_arithmetic", [tv("a", w=lr[0]), tv("b", w=lr[1])], [0.5, 2.0], lam=0.8)
    assert isinstance(two["w"], LowRankDelta) and two["w"].rank == 4 and two.form == "low-rank"
    want = 0.8 * (0.5 * lr[0].to_dense() + 2.0 * lr[1].to_dense())
    torch.testing.assert_close(two["w"].to_dense(), want)


PARAMS = {
    "task_arithmetic": {"lam": 0.7},
    "ties": {"density": 0.5},
    "dare_linear": {"p": 0.3, "seed": 1},
    "dare_ties": {"p": 0.3, "seed": 1},
    "tsv": {},
    "breadcrumbs": {"density": 0.6, "gamma": 0.1},
}


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_low_rank_and_dense_inputs_merge_alike(method: str) -> None:
    g = torch.Generator().manual_seed(7)
    # rank 3 deltas of an (8, 6) weight; tsv keeps floor(6 / 2) = 3 components per task
    lrs = [LowRankDelta(torch.randn(3, 6, generator=g), torch.randn(8, 3, generator=g), 0.5) for _ in range(2)]
    bias = [torch.randn(8, generator=g) for _ in range(2)]
    low = [tv(f"t{i}", w=lrs[i], b=bias[i]) for i in range(2)]
    dense = [tv(f"t{i}", w=lrs[i].to_dense(), b=bias[i]) for i in range(2)]
    a = merge(method, low, [1.0, 0.6], **PARAMS[method])
    b = merge(method, dense, [1.0, 0.6], **PARAMS[method])
    for name in ("w", "b"):
        da, db = a[name], b[name]
        da = da.to_dense() if isinstance(da, LowRankDelta) else da
        torch.testing.assert_close(da, db, atol=1e-4, rtol=1e-4)


def test_missing_tensor_counts_as_absent() -> None:
    out = merge("task_arithmetic", [tv("a", w=[1.0, 2.0]), tv("b", w=[1.0, 1.0], v=[5.0])])
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(out["v"], torch.tensor([5.0]))


# -- errors -----------------------------------------------------------------------------------
def test_unknown_method_did_you_mean() -> None:
    with pytest.raises(UnknownNameError, match='Did you mean "ties"'):
        get_method("tie")
    with pytest.raises(UnknownNameError, match='Did you mean "dare_ties"'):
        merge("dare_tie", three())


def test_bad_params_all_reported() -> None:
    with pytest.raises(UserInputError) as exc:
        merge("ties", three(), [1, 2], density=1.5, trim="layer", densty=0.2)
    msg = str(exc.value)
    for part in ("2 weights for 3 vectors", "density", "trim", 'Did you mean "density"'):
        assert part in msg, part


def test_nonfinite_refused() -> None:
    from taskvec.errors import NonFiniteError

    with pytest.raises(NonFiniteError):
        merge("ties", [tv("a", w=[1.0, math.nan]), tv("b", w=[1.0, 2.0])], density=1.0)
    with pytest.raises(NonFiniteError):
        merge("task_arithmetic", [tv("a", w=[3e38]), tv("b", w=[3e38])])


def test_fingerprint_mismatch_refused_unless_forced() -> None:
    from taskvec.errors import FingerprintMismatchError

    a, b = tv("a", w=[1.0]), tv("b", w=[2.0])
    b.metadata["base_fingerprint"] = "other"
    with pytest.raises(FingerprintMismatchError):
        merge("task_arithmetic", [a, b])
    out = merge("task_arithmetic", [a, b], force=True)
    assert out["w"].item() == 3.0 and out.metadata["merge"]["notes"]


@pytest.mark.parametrize(("method", "params"), [("task_arithmetic", {}), ("ties", {"density": 0.4}),
                                                ("breadcrumbs", {"density": 0.5, "gamma": 0.2}),
                                                ("dare_ties", {"p": 0.0})])
def test_blocked_work_matches_one_block(monkeypatch, method: str, params: dict) -> None:
    from taskvec.weights.merge import kernels

    vs = [_mixed_vector(s) for s in range(3)]
    whole = merge(method, vs, [1.0, -0.5, 2.0], **params)
    monkeypatch.setattr(kernels, "BLOCK", 7)  # 30-entry tensors in 5 blocks
    blocked = merge(method, vs, [1.0, -0.5, 2.0], **params)
    for name in whole.names:
        assert torch.equal(whole[name], blocked[name]), name
