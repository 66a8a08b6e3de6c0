"""DARE (Yu et al., ICML 2024, "Language Models are Super Mario"): Drop And REscale.

Each task's delta loses every entry with probability ``p`` and the survivors are divided by
``1 - p`` (``rescale=false`` skips that), so the expected delta is unchanged. Then:

* ``dare_linear`` (alias ``dare``): task arithmetic, ``lambda * sum_i w_i * dropped_i``;
* ``dare_ties``: TIES sign election and disjoint merge of the dropped deltas (no magnitude
  trimming: the random drop replaces it), times lambda.

Masks are reproducible: entries are taken in blocks of ``ops.BLOCK`` (flattened) and block b
of vector i's mask for tensor ``name`` comes from a ``torch.Generator`` seeded with
``sha256(seed, name, i, b)`` (``ops.dare_keep``), independent of tensor order, of the process
and of streaming vs in-memory. ``density`` (mergekit's name) is ``1 - p``.
"""

from __future__ import annotations

from typing import Any

import torch

from taskvec.weights.lowrank import Delta
from taskvec.weights.merge.base import SPACE_ELEMENTWISE, MergeMethod, Param
from taskvec.weights.merge.kernels import blockwise, dare_keep_block, flat, linear_block, present
from taskvec.weights.merge.task_arithmetic import LAMBDA, NORMALIZE_SUM, coefficients
from taskvec.weights.merge.ties import NORMALIZE_MEAN, merge_signs

DEFAULT_P = 0.5
P = Param("p", float, None, f"drop probability per entry (default {DEFAULT_P})", per_model=True,
          lo=0.0, hi=1.0, hi_open=True)
DENSITY = Param("density", float, None, "keep probability, 1 - p (mergekit's name; give p or density)",
                per_model=True, lo=0.0, hi=1.0, lo_open=True)
SEED = Param("seed", int, 0, "seed of the drop masks")
RESCALE = Param("rescale", bool, True, "divide kept entries by 1 - p")


def dropped(name: str, i: int, f: torch.Tensor, b: int, sl: slice, params: dict[str, Any]) -> torch.Tensor:
    """Block ``sl`` of vector i's flat delta after the random drop and rescale (p = 0: as is)."""
    p = float(params["p"][i])
    x = f[sl]
    if p == 0.0:
        return x
    keep = dare_keep_block(int(params["seed"]), name, i, b, x.numel(), p)
    kept = x.masked_fill(~keep, 0.0)
    return kept.div_(1.0 - p) if params["rescale"] else kept


class _Dare(MergeMethod):
    def check_params(self, params: dict[str, Any], n: int) -> list[str]:
        ps, ds = params["p"], params.pop("density")
        if any(p is not None for p in ps) and any(d is not None for d in ds):
            return ['give either "p" (drop probability) or "density" (keep probability, 1 - p), not both']
        params["p"] = [
            (1.0 - d) if d is not None else (p if p is not None else DEFAULT_P) for p, d in zip(ps, ds)
        ]
        return []


class DareLinear(_Dare):
    name = "dare_linear"
    summary = "random drop with prob p, rescale by 1/(1-p), then task arithmetic"
    params = (P, DENSITY, SEED, RESCALE, LAMBDA, NORMALIZE_SUM, SPACE_ELEMENTWISE)

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        coefs = coefficients(weights, params, idx)
        flats = {i: flat(deltas[i]) for i in idx}  # type: ignore[arg-type]

        def block(b: int, sl: slice) -> torch.Tensor:
            return linear_block((dropped(name, i, flats[i], b, sl, params) for i in idx), [coefs[i] for i in idx])

        return blockwise(deltas[idx[0]].shape, block)  # type: ignore[union-attr]


class DareTies(_Dare):
    name = "dare_ties"
    summary = "random drop with prob p, rescale by 1/(1-p), then TIES sign election + disjoint mean"
    params = (P, DENSITY, SEED, RESCALE, LAMBDA, NORMALIZE_MEAN, SPACE_ELEMENTWISE)

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        flats = [flat(deltas[i]) for i in idx]  # type: ignore[arg-type]
        shape = deltas[idx[0]].shape  # type: ignore[union-attr]

        def get(j: int, b: int, sl: slice) -> torch.Tensor:
            return dropped(name, idx[j], flats[j], b, sl, params)

        return merge_signs(get, [weights[i] for i in idx], params, shape)


LINEAR = DareLinear()
TIES = DareTies()
