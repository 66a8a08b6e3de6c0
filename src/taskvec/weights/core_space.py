"""The shared low-rank "core space" of one module's task deltas.

For T low-rank deltas ``delta_i = B_i A_i`` of one (out, in) parameter, ``U`` (out, p) is an
orthonormal basis of the column space of ``[B_1 .. B_T]`` and ``V`` (in, q) one of the row
space of ``[A_1; ..; A_T]`` (p, q <= sum of ranks), and each task is a small core matrix
``C_i = U^T B_i A_i V`` (p, q) with ``delta_i = U C_i V^T`` exactly (to float rounding).
Nothing of size out x in is formed: the bases come from a QR of the stacked factors and an SVD
of the small triangular factor (numerically zero directions dropped), all in float64.

Methods that commute with orthonormal changes of basis (task arithmetic, TSV, Iso-C, Iso-CTS)
give the same result in core space as on the dense deltas; element-wise methods (TIES, DARE,
breadcrumbs) applied to the cores are different methods (``space: core``), as in Core Space
merging (arXiv 2509.17786) and KnOTS (arXiv 2410.19735).

A result core ``C`` goes back to a ``LowRankDelta`` through the SVD of ``C``: rank = its
numerical rank, optionally truncated to ``rank`` components or to an ``energy`` fraction of
``||C||_F^2``; the relative Frobenius error of the truncation is exact, ``||C - C_k|| / ||C||``
(``U`` and ``V`` are orthonormal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.errors import UserInputError
from taskvec.weights.lowrank import LowRankDelta

_EPS64 = torch.finfo(torch.float64).eps


def span_basis(M: torch.Tensor, rel_tol: float | None = None) -> torch.Tensor:
    """Orthonormal basis (n, k') of the column space of ``M`` (n, k), numerically zero
    directions dropped (tolerance ``max(n, k) * eps * s_max`` unless given)."""
    M = M.double()
    n, k = M.shape
    if k == 0:
        return M.new_zeros((n, 0))
    Q, R = torch.linalg.qr(M)  # (n, k), (k, k)
    u, s, _ = torch.linalg.svd(R)  # (k, k), (k,)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return M.new_zeros((n, 0))
    tol = float(s[0]) * (rel_tol if rel_tol is not None else max(n, k) * _EPS64)
    keep = int((s > tol).sum())
    return Q @ u[:, :keep]  # (n, k')


@dataclass
class CoreSpace:
    """``delta_i = U @ cores[i] @ V.T`` for every task of one module (float64)."""

    U: torch.Tensor  # (out, p), orthonormal columns
    V: torch.Tensor  # (in, q), orthonormal columns
    cores: list[torch.Tensor]  # T x (p, q)

    @classmethod
    def of(cls, deltas: Sequence[LowRankDelta], coefs: Sequence[float] | None = None) -> CoreSpace:
        """Core space of low-rank deltas; ``coefs[i]`` multiplies delta i (default 1)."""
        if not deltas:
            raise UserInputError("a core space needs at least one low-rank delta.")
        coefs = [1.0] * len(deltas) if coefs is None else list(coefs)
        Bs = [d.B.double() * (d.scale * c) for d, c in zip(deltas, coefs)]  # (out, r_i)
        As = [d.A.double() for d in deltas]  # (r_i, in)
        U = span_basis(torch.cat(Bs, dim=1))  # (out, p)
        V = span_basis(torch.cat(As, dim=0).T)  # (in, q)
        cores = [(U.T @ B) @ (A @ V) for B, A in zip(Bs, As)]  # (p, r_i) @ (r_i, q)
        return cls(U, V, cores)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.U.shape[0]), int(self.V.shape[0])

    def delta(self, core: torch.Tensor, rank: int | None = None, energy: float | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[LowRankDelta, float]:
        """(low-rank delta ``U core V^T``, relative Frobenius error of any truncation)."""
        return from_core(self.U, core, self.V, rank, energy, dtype)

    def dense(self, core: torch.Tensor) -> torch.Tensor:
        """The dense (out, in) matrix of a core (for tests and small modules only)."""
        return (self.U @ core.double() @ self.V.T).float()


def truncation_rank(S: torch.Tensor, shape: Sequence[int], rank: int | None, energy: float | None) -> int:
    """Components kept: numerically nonzero ones, then at most ``rank`` / the fewest whose
    squared sum reaches ``energy`` of the total."""
    if S.numel() == 0 or float(S[0]) <= 0:
        return 0
    tol = float(S[0]) * max(shape) * torch.finfo(torch.float32).eps
    k = int((S > tol).sum())
    if energy is not None:
        if not 0 < energy <= 1:
            raise UserInputError(f"energy must be in (0, 1], got {energy}: pass a fraction such as 0.99.")
        cum = (S[:k].double() ** 2).cumsum(0) / float((S.double() ** 2).sum())
        k = min(k, int((cum < energy - 1e-12).sum()) + 1)
    if rank is not None:
        if rank < 1:
            raise UserInputError(f"rank must be at least 1, got {rank}.")
        k = min(k, int(rank))
    return k


def from_core(U: torch.Tensor, core: torch.Tensor, V: torch.Tensor, rank: int | None = None,
              energy: float | None = None, dtype: torch.dtype = torch.float32) -> tuple[LowRankDelta, float]:
    """``U core V^T`` as a minimal-rank ``LowRankDelta`` (SVD of the core) and its relative error."""
    shape = (int(U.shape[0]), int(V.shape[0]))
    core = core.double()
    zero = LowRankDelta(torch.zeros(1, shape[1], dtype=dtype), torch.zeros(shape[0], 1, dtype=dtype))
    if core.numel() == 0:
        return zero, 0.0  # an all-zero result is stored as rank 1 (PEFT has no rank-0 adapter)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)  # (p, m), (m,), (m, q)
    k = truncation_rank(s, shape, rank, energy)
    if k == 0:
        return zero, 0.0
    total = float((s**2).sum())
    err = math.sqrt(max(0.0, float((s[k:] ** 2).sum())) / total) if total > 0 else 0.0
    B = U @ (u[:, :k] * s[:k])  # (out, k)
    A = vh[:k] @ V.T  # (k, in)
    return LowRankDelta(A.to(dtype).contiguous(), B.to(dtype).contiguous(), 1.0), err


def compress(delta: LowRankDelta, rank: int | None = None, energy: float | None = None) -> tuple[LowRankDelta, float]:
    """A low-rank delta in its minimal rank (an SVD through its factors), optionally truncated;
    returns (delta, relative Frobenius error). Never forms the (out, in) matrix."""
    cs = CoreSpace.of([delta])
    return cs.delta(cs.cores[0], rank, energy, dtype=delta.B.dtype if delta.B.is_floating_point() else torch.float32)


__all__ = ["CoreSpace", "compress", "from_core", "span_basis", "truncation_rank"]
