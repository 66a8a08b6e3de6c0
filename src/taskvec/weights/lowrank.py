"""Low-rank deltas: ``delta = scale * B @ A`` without materialising the dense matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from taskvec.errors import ShapeMismatchError, UserInputError


@dataclass
class LowRankDelta:
    """A rank-r update of a (out, in) parameter: ``scale * B @ A``.

    ``A`` is (r, in) and ``B`` is (out, r), PEFT's ``lora_A`` / ``lora_B`` convention, always
    in the parameter's own layout (GPT-2's transposed Conv1D is handled when converting).
    """

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2 or self.A.shape[0] != self.B.shape[1]:
            raise ShapeMismatchError(
                f"low-rank factors do not fit: A {tuple(self.A.shape)} must be (r, in) and "
                f"B {tuple(self.B.shape)} must be (out, r)."
            )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.B.shape[0], self.A.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def numel(self) -> int:
        """Number of stored values (both factors)."""
        return self.A.numel() + self.B.numel()

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense (out, in) delta."""
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scale

    def scaled(self, c: float) -> LowRankDelta:
        return LowRankDelta(self.A, self.B, self.scale * float(c))

    def concat(self, other: LowRankDelta) -> LowRankDelta:
        """Exact sum of two low-rank deltas: stacked factors, rank r1 + r2."""
        if self.shape != other.shape:
            raise ShapeMismatchError(f"cannot add deltas of shapes {tuple(self.shape)} and {tuple(other.shape)}.")
        B = torch.cat([self.B.float() * self.scale, other.B.float() * other.scale], dim=1)  # (out, r1+r2)
        A = torch.cat([self.A.float(), other.A.float()], dim=0)  # (r1+r2, in)
        return LowRankDelta(A, B, 1.0)

    def dot(self, other: torch.Tensor | LowRankDelta) -> float:
        """Frobenius inner product <self, other> without densifying self."""
        A, B = self.A.double(), self.B.double()
        if isinstance(other, LowRankDelta):
            A2, B2 = other.A.double(), other.B.double()
            # tr((B A)^T B2 A2) = sum((B^T B2) * (A A2^T))
            return float(((B.T @ B2) * (A @ A2.T)).sum()) * self.scale * other.scale
        return float((B * (other.double() @ A.T)).sum()) * self.scale

    def norm2(self) -> float:
        """Squared Frobenius norm."""
        return self.dot(self)


Delta = torch.Tensor | LowRankDelta


def svd_low_rank(
    dense: torch.Tensor, rank: int | None = None, energy: float | None = None
) -> LowRankDelta:
    """Truncated SVD of a 2-D delta, keeping ``rank`` components or ``energy`` of the spectrum."""
    if dense.dim() != 2:
        raise UserInputError(f"only 2-D tensors have a low-rank form, got shape {tuple(dense.shape)}.")
    if (rank is None) == (energy is None):
        raise UserInputError("give exactly one of rank or energy for a low-rank approximation.")
    U, S, Vh = torch.linalg.svd(dense.float(), full_matrices=False)  # (out, k), (k,), (k, in)
    if energy is not None:
        if not 0 < energy <= 1:
            raise UserInputError(f"energy must be in (0, 1], got {energy}.")
        cum = (S**2).cumsum(0) / (S**2).sum().clamp_min(1e-30)
        rank = int((cum < energy).sum().item()) + 1
    assert rank is not None
    if rank <= 0:
        raise UserInputError(f"rank must be positive, got {rank}.")
    rank = min(rank, S.numel())
    return LowRankDelta(Vh[:rank].contiguous(), (U[:, :rank] * S[:rank]).contiguous(), 1.0)


def dense_of(delta: torch.Tensor | LowRankDelta) -> torch.Tensor:
    """The dense float32 form of either kind of delta."""
    return delta.to_dense() if isinstance(delta, LowRankDelta) else delta.float()


def numel_of(delta: torch.Tensor | LowRankDelta) -> int:
    """Stored values of either kind of delta."""
    return delta.numel()


def shape_of(delta: torch.Tensor | LowRankDelta) -> torch.Size:
    return delta.shape


def same_delta(a: Delta, b: Delta) -> bool:
    """Whether two deltas are equal (dense values compared exactly)."""
    if isinstance(a, LowRankDelta) or isinstance(b, LowRankDelta):
        a = a.to_dense() if isinstance(a, LowRankDelta) else a
        b = b.to_dense() if isinstance(b, LowRankDelta) else b
    return tuple(a.shape) == tuple(b.shape) and torch.equal(a.float(), b.float())


_F32_MAX = 3.0e38


def add_scaled_(t: torch.Tensor, delta: torch.Tensor | LowRankDelta, scale: float,
                check_finite: bool = False) -> torch.Tensor:
    """``t + scale * delta``, computed in float32 and rounded once to ``t``'s dtype.

    The one implementation of "add a delta" that in-memory application
    (``TaskVector.apply_to``) and streaming application (``taskvec apply``) share, so their
    results are equal by construction. A float32 ``t`` is updated in place and returned; other
    dtypes return a new tensor. Low-rank deltas go through one fused ``addmm`` (no dense
    product buffer, no separate scale and add passes). ``check_finite`` raises
    ``NonFiniteError`` when the delta holds NaN/Inf (low-rank: checked on the factors, plus a
    bound that rules out overflow of the product; dense: one reduction).
    """
    from taskvec.errors import NonFiniteError

    if isinstance(delta, LowRankDelta):
        A = delta.A.to(t.device, torch.float32)  # (r, in)
        B = delta.B.to(t.device, torch.float32)  # (out, r)
        alpha = delta.scale * scale
        if check_finite:
            ok = bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())
            bound = float(A.abs().amax()) * float(B.abs().amax()) * A.shape[0] * abs(alpha) if A.numel() * B.numel() else 0.0
            if ok and bound >= _F32_MAX:
                ok = bool(torch.isfinite(B @ A).all())  # the product could overflow: look at it
            if not ok:
                raise NonFiniteError("the vector contains NaN or Inf: it is corrupt; rebuild it.")
        if t.dtype == torch.float32:
            return t.addmm_(B, A, alpha=alpha)
        return torch.addmm(t.float(), B, A, alpha=alpha).to(t.dtype)
    d = delta.to(t.device, torch.float32)
    if check_finite and not bool(torch.isfinite(d.sum())) and not bool(torch.isfinite(d).all()):
        raise NonFiniteError("the vector contains NaN or Inf: it is corrupt; rebuild it.")
    if t.dtype == torch.float32:
        return t.add_(d, alpha=scale)
    return t.float().add_(d, alpha=scale).to(t.dtype)
