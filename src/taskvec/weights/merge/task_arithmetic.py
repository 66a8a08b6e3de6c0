"""``task_arithmetic``: ``lambda * sum_i w_i * tau_i`` (Ilharco et al., 2023).

All-low-rank inputs stay low-rank and exact: the factors are stacked (rank = sum of ranks),
each task's ``scale * w_i * lambda`` folded into its block of ``B``; otherwise dense.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from taskvec.weights.lowrank import Delta, LowRankDelta
from taskvec.weights.merge.base import MergeMethod, Param
from taskvec.weights.merge.kernels import blockwise, flat, linear_block, present

LAMBDA = Param("lambda", float, 1.0, "global scaling coefficient applied to the merged vector")
NORMALIZE_SUM = Param("normalize", bool, False, "divide by the sum of the weights (a weighted mean)")


def coefficients(weights: list[float], params: dict[str, Any], idx: list[int]) -> list[float]:
    """Per-vector factors ``lambda * w_i`` (``/ sum_present w`` with ``normalize``)."""
    lam = float(params.get("lambda", 1.0))
    coefs = [lam * w for w in weights]
    if params.get("normalize"):
        total = sum(weights[i] for i in idx)
        if total == 0:
            from taskvec.errors import UserInputError

            raise UserInputError("normalize divides by the sum of the weights, which is 0: change the weights.")
        coefs = [c / total for c in coefs]
    return coefs


def linear_merge(deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
    """The weighted sum, low-rank when every present delta is low-rank."""
    idx = present(deltas)
    if not idx:
        return None
    coefs = coefficients(weights, params, idx)
    if all(isinstance(deltas[i], LowRankDelta) for i in idx):
        lrs = [deltas[i] for i in idx]
        B = torch.cat([d.B.float() * (d.scale * coefs[i]) for i, d in zip(idx, lrs)], dim=1)  # (out, R)
        A = torch.cat([d.A.float() for d in lrs], dim=0)  # (R, in)
        return LowRankDelta(A, B, 1.0)
    flats = [flat(deltas[i]) for i in idx]  # type: ignore[arg-type]
    cs = [coefs[i] for i in idx]
    return blockwise(deltas[idx[0]].shape, lambda b, sl: linear_block((f[sl] for f in flats), cs))  # type: ignore[union-attr]


class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "lambda * sum_i w_i tau_i (exact low-rank when all inputs are low-rank)"
    params = (LAMBDA, NORMALIZE_SUM)

    def output_rank(self, name: str, ranks: Sequence[int | None], shape: Sequence[int], params: Mapping[str, Any]) -> int | None:
        """Stacked factors: exactly the sum of the input ranks when every input is low-rank."""
        if not ranks or any(r is None for r in ranks):
            return None
        return sum(r or 0 for r in ranks)

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        return linear_merge(deltas, weights, params)


METHOD = TaskArithmetic()
