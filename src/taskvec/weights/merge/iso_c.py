"""``iso_c``: Isotropic merging in the common subspace (Marczak et al., 2025, arXiv 2502.04959).

For every 2-D tensor: the task-arithmetic sum ``M = sum_i w_i tau_i`` (T present tasks), its
SVD ``M = U S V^T``, and the spectrum made flat: ``merged = lambda * mean(S) * U V^T``. The
singular values averaged are the numerically nonzero ones (``kernels.numerical_rank``): for a
full-rank sum that is every one, as in the paper; for a sum of LoRA deltas of total rank R it is
the R nonzero ones (a zero singular value has no direction to keep, and averaging in the zeros
would shrink the spectrum by R / min(out, in)).

On low-rank inputs the same steps run in their shared core space (``space: auto``), which
gives the dense method's result exactly and keeps it low-rank. Non-matrix tensors are averaged
(``vector_reduce``) as in the reference implementation. lambda (the paper's alpha) is chosen
on held-out data; the paper's values are about 1.0-1.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from taskvec.weights.lowrank import Delta, dense_of
from taskvec.weights.merge.base import SPACE_EXACT, MergeMethod
from taskvec.weights.merge.kernels import numerical_rank, present
from taskvec.weights.merge.task_arithmetic import LAMBDA
from taskvec.weights.merge.tsv import VECTOR_REDUCE

if TYPE_CHECKING:
    from taskvec.weights.core_space import CoreSpace


def flat_spectrum(M: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``mean(S) * U V^T`` over the numerically nonzero singular values of ``M``."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)  # (m, k), (k,), (k, n)
    k = numerical_rank(S, shape)
    if k == 0:
        return torch.zeros_like(M)
    return (U[:, :k] * S[:k].mean()) @ Vh[:k]


def weighted_sum(mats: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = mats[0] * weights[0]
    for M, w in zip(mats[1:], weights[1:]):
        total = total + M * w
    return total


def reduce_vectors(ds: list[Delta], ws: list[float], params: dict[str, Any]) -> torch.Tensor:
    """Non-matrix tensors: ``lambda * sum_i w_i tau_i`` (``/ T`` with ``vector_reduce: mean``)."""
    total = weighted_sum([dense_of(d) for d in ds], ws)
    if params["vector_reduce"] == "mean":
        total = total / len(ds)
    return total * float(params["lambda"])


class IsoC(MergeMethod):
    name = "iso_c"
    summary = "Iso-C: task-arithmetic sum with its singular spectrum made flat (isotropic)"
    params = (LAMBDA, VECTOR_REDUCE, SPACE_EXACT)

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        ds, ws = [deltas[i] for i in idx], [weights[i] for i in idx]
        if len(ds[0].shape) != 2:  # type: ignore[union-attr]
            return reduce_vectors(ds, ws, params)  # type: ignore[arg-type]
        M = weighted_sum([dense_of(d) for d in ds], ws)  # type: ignore[arg-type]
        return flat_spectrum(M, tuple(M.shape)) * float(params["lambda"])

    def merge_core(self, name: str, cs: CoreSpace, deltas: list[Delta | None], weights: list[float],
                   params: dict[str, Any]) -> torch.Tensor:
        ws = [weights[i] for i in present(deltas)]
        return flat_spectrum(weighted_sum(list(cs.cores), ws), cs.shape) * float(params["lambda"])


METHOD = IsoC()
