"""``tsv``: Task Singular Vectors merging, TSV-M (Gargiulo et al., CVPR 2025).

For every 2-D tensor, with T tasks present:

1. SVD of each task's delta ``w_i * tau_i = U_i S_i V_i^T`` (low-rank deltas use their factors,
   never densified) and keep its top ``k = max(1, floor(keep * min(out, in)))`` components,
   ``keep = 1/T`` by default (the paper's choice), dropping numerically-zero ones;
2. concatenate ``U = [U_1 .. U_T]`` (out, sum k_i), ``S = [S_1 .. S_T]``, ``V = [V_1 .. V_T]``;
3. decorrelate: replace U and V by their nearest matrices with orthonormal columns,
   ``U_perp = P Q^T`` where ``U = P Sigma Q^T`` (orthogonal Procrustes, equivalently the
   whitening ``U (U^T U)^{-1/2}``), the same for V;
4. ``merged = lambda * U_perp diag(S) V_perp^T``.

When every input of a matrix is low-rank, the same steps run in the inputs' shared core space
(``space: auto``, ``taskvec.weights.core_space``): the SVDs and polar factors act on the span,
so the result is the dense method's, exactly, and stays low-rank (``space: dense`` writes it
dense).

Other tensors (1-D biases and norms, or any non-2-D shape) are averaged,
``lambda * sum_i w_i tau_i / T`` (``vector_reduce="sum"`` drops the ``/ T``), as the reference
implementation does. With a single task and full ``keep`` the result is exactly that task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from taskvec.weights.lowrank import Delta, dense_of
from taskvec.weights.merge.base import SPACE_EXACT, MergeMethod, Param
from taskvec.weights.merge.kernels import numerical_rank, polar, present, svd_of
from taskvec.weights.merge.task_arithmetic import LAMBDA

if TYPE_CHECKING:
    from taskvec.weights.core_space import CoreSpace

KEEP = Param("keep", float, None, "fraction of each task's singular components kept (default 1/T)",
             lo=0.0, hi=1.0, lo_open=True)
VECTOR_REDUCE = Param("vector_reduce", str, "mean", "how non-matrix tensors are combined",
                      choices=("mean", "sum"))


def tsv_matrix(deltas: list[Delta], weights: list[float], keep: float | None,
               shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """TSV-M merge of the 2-D deltas of the present tasks (weights already selected).

    ``deltas`` may be core matrices of a shared core space; ``shape`` is then the true
    (out, in), which fixes ``k`` and the numerical-rank tolerance as on the dense deltas."""
    T = len(deltas)
    shape = tuple(shape or deltas[0].shape)
    m = min(shape)
    k = max(1, int(m * (keep if keep is not None else 1.0 / T) + 1e-6))
    if T == 1 and k >= m:  # full rank of one task: the task itself, exactly
        return dense_of(deltas[0]) * weights[0]
    dtype = torch.float64 if any(isinstance(d, torch.Tensor) and d.dtype == torch.float64 for d in deltas) else torch.float32
    Us, Ss, Vhs = [], [], []
    for d, w in zip(deltas, weights):
        U, S, Vh = svd_of(d)  # (out, r), (r,), (r, in)
        r = min(k, numerical_rank(S, shape))
        Us.append(U[:, :r].clone())  # clones release the full factors
        Ss.append(S[:r] * w)
        Vhs.append(Vh[:r].clone())
        del U, S, Vh
    U_cat = torch.cat(Us, dim=1)  # (out, K)
    S_cat = torch.cat(Ss)  # (K,)
    V_cat = torch.cat(Vhs, dim=0).T  # (in, K)
    if S_cat.numel() == 0:
        return torch.zeros(tuple(deltas[0].shape), dtype=dtype)
    U_perp = polar(U_cat)  # (out, K)
    V_perp = polar(V_cat)  # (in, K)
    return (U_perp * S_cat) @ V_perp.T  # (out, in)


class TSV(MergeMethod):
    name = "tsv"
    summary = "Task Singular Vectors (TSV-M): per-matrix top-1/T singular components, decorrelated"
    params = (LAMBDA, KEEP, VECTOR_REDUCE, SPACE_EXACT)

    def merge_core(self, name: str, cs: CoreSpace, deltas: list[Delta | None], weights: list[float],
                   params: dict[str, Any]) -> torch.Tensor:
        ws = [weights[i] for i in present(deltas)]
        return tsv_matrix(list(cs.cores), ws, params.get("keep"), cs.shape) * float(params["lambda"])

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        ds = [deltas[i] for i in idx]
        ws = [weights[i] for i in idx]
        lam = float(params["lambda"])
        if len(ds[0].shape) == 2:
            return tsv_matrix(ds, ws, params.get("keep")) * lam  # type: ignore[arg-type]
        total = sum(dense_of(d) * w for d, w in zip(ds, ws))
        assert isinstance(total, torch.Tensor)
        if params["vector_reduce"] == "mean":
            total = total / len(ds)
        return total * lam


METHOD = TSV()
