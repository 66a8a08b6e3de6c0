"""``ties``: TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: keep each task's top ``density`` fraction of entries by magnitude, per tensor
   (``trim="tensor"``, mergekit's choice) or over the whole vector (``trim="global"``, the
   paper's code, which flattens the full vector). The threshold is the k-th largest
   magnitude, ``k = floor(density * n)``; entries tied with it are kept. Global thresholds
   are found exactly by a streaming first pass (``ops.kth_largest_abs_stream``).
2. Elect: ``g = sign(sum_i w_i * trimmed_i)``.
3. Disjoint merge: mean of the weighted entries whose sign equals ``g`` (divided by the sum
   of ``|w_i|`` over those entries; ``normalize=false`` gives their plain sum), times lambda.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from taskvec.weights.lowrank import Delta
from taskvec.weights.merge.base import SPACE_ELEMENTWISE, MergeMethod, Param
from taskvec.weights.merge.kernels import (
    blocks,
    blockwise,
    elect_and_merge,
    flat,
    keep_count,
    kth_largest_abs_stream,
    kth_largest_abs_tensor,
    new_stack,
    present,
)
from taskvec.weights.merge.task_arithmetic import LAMBDA
from taskvec.weights.vector_source import VectorSource

DENSITY = Param("density", float, 0.2, "fraction of entries kept per task (by magnitude)", per_model=True,
                lo=0.0, hi=1.0)
TRIM = Param("trim", str, "tensor", "magnitude trimming per tensor or over the whole vector",
             choices=("tensor", "global"))
NORMALIZE_MEAN = Param("normalize", bool, True, "disjoint mean (true) or disjoint sum (false)")


def global_thresholds(sources: Sequence[VectorSource], fractions: Sequence[float]) -> list[float]:
    """Per vector: the magnitude of its k-th largest entry over all its tensors (exact)."""
    out: list[float] = []
    for src, frac in zip(sources, fractions):
        n = sum(math.prod(src.shapes[name]) for name in src.names)

        def chunks(src: VectorSource = src):
            for name in src.names:
                f = flat(src.get(name))
                for _, sl in blocks(f.numel()):
                    yield f[sl]

        out.append(kth_largest_abs_stream(chunks, keep_count(frac, n), n))
    return out


def trimmed(f: torch.Tensor, sl: slice, t: float) -> torch.Tensor:
    """Block ``sl`` of a flat delta with magnitudes below ``t`` zeroed (t = 0: as is)."""
    x = f[sl]
    return x.masked_fill(x.abs() < t, 0.0) if t > 0 else x


def merge_signs(get: Callable[[int, int, slice], torch.Tensor], weights: list[float],
                params: dict[str, Any], shape: Sequence[int]) -> torch.Tensor:
    """Sign election + disjoint merge, block by block; ``get(j, b, sl)`` is task j's block."""
    lam, normalize = float(params["lambda"]), bool(params["normalize"])

    def block(b: int, sl: slice) -> torch.Tensor:
        stack = new_stack(len(weights), sl.stop - sl.start)  # (T, block)
        for j, w in enumerate(weights):
            torch.mul(get(j, b, sl), w, out=stack[j])
        return elect_and_merge(stack, weights, normalize).mul_(lam)

    return blockwise(shape, block)


class Ties(MergeMethod):
    name = "ties"
    summary = "trim to top-density magnitudes, elect signs, disjoint mean (TIES-Merging)"
    params = (DENSITY, LAMBDA, TRIM, NORMALIZE_MEAN, SPACE_ELEMENTWISE)

    def check_params(self, params: dict[str, Any], n: int) -> list[str]:
        if params.get("trim") == "global" and params.get("space") == "core":
            return ['trim "global" thresholds the dense entries of the whole vector; with space "core" '
                    'use trim "tensor" (each core is trimmed on its own)']
        return []

    def prepare(self, sources: Sequence[VectorSource], weights: list[float], params: dict[str, Any]) -> dict[str, Any]:
        if params.get("trim") == "global":
            params = dict(params) | {"_thresholds": global_thresholds(sources, params["density"])}
        return params

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        flats = [flat(deltas[i]) for i in idx]  # type: ignore[arg-type]
        if params.get("trim") == "global":
            ts = [params["_thresholds"][i] for i in idx]
        else:
            ts = [kth_largest_abs_tensor(f, keep_count(params["density"][i], f.numel())) for f, i in zip(flats, idx)]
        shape = deltas[idx[0]].shape  # type: ignore[union-attr]
        return merge_signs(lambda j, b, sl: trimmed(flats[j], sl, ts[j]), [weights[i] for i in idx], params, shape)


METHOD = Ties()
