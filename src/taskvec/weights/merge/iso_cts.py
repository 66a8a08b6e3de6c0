"""``iso_cts``: Isotropic merging in common and task-specific subspaces (Marczak et al., 2025).

For every 2-D tensor with T present tasks ``tau_i`` (weighted by ``w_i``) and
``r = min(min(out, in), sum_i rank_i)`` (``rank_i`` = a LoRA input's rank, else the numerical
rank of the dense delta; for full-rank dense deltas r = min(out, in), as in the paper):

1. common subspace: the top ``k`` left/right singular vectors of the sum ``M = sum_i tau_i``,
   ``k = r - T * round((r - floor(common * r)) / T)`` (the reference's rounding, so the
   task-specific part divides evenly);
2. task-specific subspaces: for each task, the top ``(r - k) / T`` singular vectors of
   ``tau_i - U_k U_k^T tau_i`` (what the common subspace misses);
3. ``U* = [U_k, U_1', .., U_T']`` and ``V*`` likewise, made orthonormal by their polar factors
   (as TSV), and ``merged = lambda * mean(s*) U*_perp V*_perp^T``, ``s*`` the singular values
   of every kept component.

Components with numerically zero singular values are dropped (they have no direction). On
low-rank inputs the same steps run in the shared core space (``space: auto``): exact, and the
result stays low-rank. Non-matrix tensors are averaged (``vector_reduce``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from taskvec.weights.lowrank import Delta, LowRankDelta, dense_of
from taskvec.weights.merge.base import SPACE_EXACT, MergeMethod, Param
from taskvec.weights.merge.iso_c import reduce_vectors, weighted_sum
from taskvec.weights.merge.kernels import numerical_rank, polar, present
from taskvec.weights.merge.task_arithmetic import LAMBDA
from taskvec.weights.merge.tsv import VECTOR_REDUCE

if TYPE_CHECKING:
    from taskvec.weights.core_space import CoreSpace

COMMON = Param("common", float, 0.8, "fraction of the rank given to the common subspace (the paper's 0.8)",
               lo=0.0, hi=1.0)


def subspace_sizes(r: int, T: int, common: float) -> tuple[int, int]:
    """(common k, task-specific dims per task) as the reference rounds them."""
    k = int(r * common)
    per_task_total = round((r - k) / T) * T
    k = max(0, r - per_task_total)
    return k, max(0, (r - k) // T)


def iso_cts_matrix(mats: list[torch.Tensor], weights: list[float], shape: tuple[int, ...],
                   ranks: list[int], common: float) -> torch.Tensor:
    """Iso-CTS merge of T matrices (dense deltas, or cores of one core space with true ``shape``)."""
    T = len(mats)
    scaled = [M * w for M, w in zip(mats, weights)]
    r = min(min(shape), sum(ranks))
    k, per_task = subspace_sizes(r, T, common)
    U, S, Vh = torch.linalg.svd(weighted_sum(mats, weights), full_matrices=False)
    k = min(k, numerical_rank(S, shape))
    Uc = U[:, :k]  # (m, k)
    us, vs, ss = [Uc], [Vh[:k].T], [S[:k]]
    for M in scaled:
        resid = M - Uc @ (Uc.T @ M)  # what the common subspace misses
        u, s, vh = torch.linalg.svd(resid, full_matrices=False)
        n = min(per_task, numerical_rank(s, shape))
        us.append(u[:, :n])
        vs.append(vh[:n].T)
        ss.append(s[:n])
    s_all = torch.cat(ss)
    if s_all.numel() == 0:
        return torch.zeros_like(scaled[0])
    X, Y = polar(torch.cat(us, dim=1)), polar(torch.cat(vs, dim=1))  # (m, K), (n, K)
    return (X * s_all.mean()) @ Y.T


def input_rank(d: Delta, shape: tuple[int, ...]) -> int:
    """A LoRA input's rank; a dense delta's numerical rank (min(out, in) when full rank)."""
    if isinstance(d, LowRankDelta):
        return d.rank
    return numerical_rank(torch.linalg.svdvals(d.float()), shape)


class IsoCTS(MergeMethod):
    name = "iso_cts"
    summary = "Iso-CTS: common subspace of the sum + task-specific subspaces, flat spectrum"
    params = (LAMBDA, COMMON, VECTOR_REDUCE, SPACE_EXACT)

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        ds, ws = [deltas[i] for i in idx], [weights[i] for i in idx]
        shape = tuple(ds[0].shape)  # type: ignore[union-attr]
        if len(shape) != 2:
            return reduce_vectors(ds, ws, params)  # type: ignore[arg-type]
        ranks = [input_rank(d, shape) for d in ds]  # type: ignore[arg-type]
        mats = [dense_of(d) for d in ds]  # type: ignore[arg-type]
        return iso_cts_matrix(mats, ws, shape, ranks, float(params["common"])) * float(params["lambda"])

    def merge_core(self, name: str, cs: CoreSpace, deltas: list[Delta | None], weights: list[float],
                   params: dict[str, Any]) -> torch.Tensor:
        idx = present(deltas)
        ranks = [deltas[i].rank for i in idx]  # type: ignore[union-attr]
        ws = [weights[i] for i in idx]
        return iso_cts_matrix(list(cs.cores), ws, cs.shape, ranks, float(params["common"])) * float(params["lambda"])


METHOD = IsoCTS()
