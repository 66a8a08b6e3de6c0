"""``breadcrumbs``: Model Breadcrumbs (Davari & Belilovsky, ECCV 2024), then task arithmetic.

Per tensor and task, rank the entries by magnitude; drop the largest ``gamma`` fraction
(outliers) and everything below the top ``gamma + density`` fraction (the small tail), keep
the ``density`` fraction in between; then ``lambda * sum_i w_i * masked_i``. With
``k_hi = floor(gamma * n)`` and ``k_lo = floor((gamma + density) * n)`` an entry is kept when
``t_lo <= |x| < t_hi`` for ``t_hi`` the k_hi-th and ``t_lo`` the k_lo-th largest magnitude
(entries tied with a threshold fall on the same side). Parameter names follow mergekit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from taskvec.weights.lowrank import Delta
from taskvec.weights.merge.base import SPACE_ELEMENTWISE, MergeMethod, Param
from taskvec.weights.merge.kernels import (
    blockwise,
    flat,
    keep_count,
    kth_largest_abs_tensor,
    linear_block,
    present,
)
from taskvec.weights.merge.task_arithmetic import LAMBDA, NORMALIZE_SUM, coefficients

DENSITY = Param("density", float, 0.9, "fraction of entries kept per task (the middle band)", per_model=True,
                lo=0.0, hi=1.0)
GAMMA = Param("gamma", float, 0.01, "fraction of largest-magnitude entries removed per task", per_model=True,
              lo=0.0, hi=1.0)


def band(f: torch.Tensor, density: float, gamma: float) -> tuple[float, float]:
    """``(t_lo, t_hi)``: keep ``t_lo <= |x| < t_hi`` (``t_hi = inf`` removes nothing on top)."""
    n = f.numel()
    k_hi, k_lo = keep_count(gamma, n), keep_count(gamma + density, n)
    if k_lo <= k_hi:
        return math.inf, math.inf  # empty band
    return kth_largest_abs_tensor(f, k_lo), kth_largest_abs_tensor(f, k_hi)


def breadcrumb_mask(x: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """True for the kept middle band of ``x`` (for inspection and tests)."""
    t_lo, t_hi = band(x.reshape(-1), density, gamma)
    return (x.abs() >= t_lo) & (x.abs() < t_hi)


class Breadcrumbs(MergeMethod):
    name = "breadcrumbs"
    summary = "drop the largest gamma and the smallest (1-gamma-density) per task, then sum"
    params = (DENSITY, GAMMA, LAMBDA, NORMALIZE_SUM, SPACE_ELEMENTWISE)

    def check_params(self, params: dict[str, Any], n: int) -> list[str]:
        return [
            f"density + gamma must be at most 1 (vector #{i + 1}: {d:g} + {g:g})"
            for i, (d, g) in enumerate(zip(params["density"], params["gamma"]))
            if d + g > 1 + 1e-9
        ]

    def param_notes(self, params: Mapping[str, Any]) -> list[str]:
        if params.get("space") != "core" or not any(g > 0 for g in params["gamma"]):
            return []
        return ['space "core" with gamma > 0 drops each task\'s largest core entries, which hold most of '
                "its update (74-93% of the squared norm at gamma 0.01 on the collection v2 LoRA vectors, "
                'docs/lora.md); space "dense" is the published method']

    def merge_tensor(self, name: str, deltas: list[Delta | None], weights: list[float], params: dict[str, Any]) -> Delta | None:
        idx = present(deltas)
        if not idx:
            return None
        coefs = coefficients(weights, params, idx)
        flats = [flat(deltas[i]) for i in idx]  # type: ignore[arg-type]
        bands = [band(f, params["density"][i], params["gamma"][i]) for f, i in zip(flats, idx)]

        def masked(f: torch.Tensor, sl: slice, lo: float, hi: float) -> torch.Tensor:
            x = f[sl]
            if lo <= 0 and math.isinf(hi):
                return x
            a = x.abs()
            return x.masked_fill((a < lo) | (a >= hi), 0.0)

        def block(b: int, sl: slice) -> torch.Tensor:
            vals = (masked(f, sl, lo, hi) for f, (lo, hi) in zip(flats, bands))
            return linear_block(vals, [coefs[i] for i in idx])

        return blockwise(deltas[idx[0]].shape, block)  # type: ignore[union-attr]


METHOD = Breadcrumbs()
