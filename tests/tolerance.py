"""Float32 tolerances derived from rounding, for results that are not bitwise by construction.

The rule (docs/dependencies.md, "CPU tolerance"): a result computed by the same operations in
the same order is compared bitwise. One whose reductions (sums, dot products, matmuls) may run in
another order on another CPU, kernel or thread count gets a bound from float32 rounding and the
reduction's length: two evaluations of a length-n sum of terms x_i each lie within
gamma_n * sum |x_i| of the exact value (Higham, *Accuracy and Stability of Numerical
Algorithms*, section 3.1), so they differ by at most 2 * gamma_n * sum |x_i|.
"""

from __future__ import annotations

import torch

#: unit roundoff of float32
U32 = 2.0**-24


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of a length-n reduction."""
    if n * u >= 1:
        raise ValueError(f"reduction of {n} terms is too long for a rounding bound at u = {u}")
    return n * u / (1 - n * u)


def reduction_atol(n: int, abs_sum: float | torch.Tensor, u: float = U32) -> float | torch.Tensor:
    """Largest difference between two orders of a length-``n`` sum whose |terms| add up to
    ``abs_sum`` (a number, or a tensor of them for many sums at once)."""
    return 2 * gamma(n, u) * abs_sum


def matmul_atol(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise bound for two evaluations of ``a @ b`` (float32): 2 gamma_k (|a| @ |b|)."""
    return reduction_atol(a.shape[-1], a.abs().double() @ b.abs().double()).float()


def ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of float32 numbers at |x| (one unit in the last place)."""
    x = x.float().abs()
    return torch.nextafter(x, torch.full_like(x, float("inf"))) - x


#: reductions a decoder layer chains: q/k/v projections, scores, scores @ v, o_proj, MLP up, down
REDUCTIONS_PER_LAYER = 6


def forward_atol(want: torch.Tensor, n_layers: int = 2, width: int = 128) -> float:
    """Bound for the outputs of a tiny test model (``tiny_model``: 2 layers, widths <= 128)
    computed two ways that reorder its reductions (another batch or padding, cached vs uncached,
    a patched vs a replayed activation): each of the ``REDUCTIONS_PER_LAYER * n_layers`` chained
    length-``width`` reductions adds at most 2 gamma_width of relative error, on values of the
    size of ``want`` (norms keep the intermediate activations of that order)."""
    scale = max(float(want.detach().abs().max()), 1.0)
    return REDUCTIONS_PER_LAYER * n_layers * reduction_atol(width, scale)


def assert_forward_close(got: torch.Tensor, want: torch.Tensor, **kw) -> None:
    """``got`` equals ``want`` within :func:`forward_atol` (two orders of the same forward)."""
    diff = float((got.double() - want.double()).abs().max())
    tol = forward_atol(want, **kw)
    assert diff <= tol, f"max difference {diff:.3g} over the float32 bound {tol:.3g}"
