"""Tensor operations shared by merge methods.

Element-wise methods work on a tensor in blocks of ``BLOCK`` entries (flattened), so their
working memory is a few blocks, not a few tensors: the merge of one tensor needs the T input
deltas, the output and O(T x BLOCK) scratch. Thresholds (k-th largest magnitude) come from
an exact two-pass radix select over the blocks, so they need no full-size scratch either.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from taskvec.weights.lowrank import Delta, LowRankDelta, dense_of

#: entries per block of element-wise work (also the unit of DARE's random masks)
BLOCK = 1 << 20
_EPS = 1e-6  # absorbs float error in density * n (0.29 * 100 = 28.999999999999996)


def keep_count(fraction: float, n: int) -> int:
    """How many of ``n`` entries a keep ``fraction`` keeps: ``floor(fraction * n)``."""
    return max(0, min(n, int(math.floor(fraction * n + _EPS))))


def present(deltas: Sequence[Delta | None]) -> list[int]:
    """Indices of the vectors that have this tensor."""
    return [i for i, d in enumerate(deltas) if d is not None]


def flat(d: Delta) -> torch.Tensor:
    """A delta as a flat float32 tensor (a view when it already is one; low-rank: densified)."""
    return dense_of(d).reshape(-1)


def blocks(n: int) -> Iterator[tuple[int, slice]]:
    """(block index, slice) over ``n`` flattened entries."""
    for b, start in enumerate(range(0, n, BLOCK)):
        yield b, slice(start, min(start + BLOCK, n))


def blockwise(shape: Sequence[int], fn: Callable[[int, slice], torch.Tensor]) -> torch.Tensor:
    """Build a float32 tensor of ``shape`` block by block: ``out[sl] = fn(b, sl)``."""
    n = math.prod(shape)
    out = torch.empty(n, dtype=torch.float32)
    for b, sl in blocks(n):
        out[sl] = fn(b, sl)
    return out.reshape(tuple(shape))


def kth_largest_abs_stream(chunks: Callable[[], Iterable[torch.Tensor]], k: int, n: int) -> float:
    """Exact k-th largest ``|x|`` (1-based) over every value of ``chunks()``, two passes.

    Radix select on float32 bit patterns: for non-negative floats the int32 bit pattern orders
    like the value. Pass 1 counts values per high 15 bits (32,768 bins), which fixes the bin
    of the answer; pass 2 counts that bin's values per low 16 bits, which fixes the answer.
    Memory: two small histograms plus one chunk. ``chunks`` is called twice. ``k <= 0`` gives
    ``inf`` (keep nothing), ``k >= n`` gives 0 (keep everything).
    """
    if k <= 0:
        return math.inf
    if k >= n:
        return 0.0
    hist = torch.zeros(1 << 15, dtype=torch.int64)
    for c in chunks():
        bits = c.detach().float().abs().reshape(-1).view(torch.int32)
        hist += torch.bincount(bits >> 16, minlength=1 << 15)
    from_top = hist.flip(0).cumsum(0)  # from_top[j]: values in bins >= 32767 - j
    j = int(torch.searchsorted(from_top, torch.tensor([k]))[0])
    high = (1 << 15) - 1 - j
    above = int(from_top[j - 1]) if j > 0 else 0
    hist2 = torch.zeros(1 << 16, dtype=torch.int64)
    for c in chunks():
        bits = c.detach().float().abs().reshape(-1).view(torch.int32)
        sel = bits[(bits >> 16) == high]
        if sel.numel():
            hist2 += torch.bincount(sel & 0xFFFF, minlength=1 << 16)
    from_top2 = hist2.flip(0).cumsum(0)
    j2 = int(torch.searchsorted(from_top2, torch.tensor([k - above]))[0])
    low = (1 << 16) - 1 - j2
    return float(torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32)[0])


def kth_largest_abs_tensor(x: torch.Tensor, k: int) -> float:
    """The k-th largest ``|x|`` of one tensor (``inf`` for k = 0, 0 for k >= numel).

    Tensors of at most ``BLOCK`` entries use ``torch.kthvalue`` (scratch: a few blocks);
    larger ones the streaming radix select over their blocks. Both are exact.
    """
    f = x.reshape(-1)
    n = f.numel()
    if 0 < k < n <= BLOCK:
        return float(torch.kthvalue(f.float().abs(), n - k + 1).values)
    return kth_largest_abs_stream(lambda: (f[sl] for _, sl in blocks(f.numel())), k, f.numel())


def new_stack(t: int, n: int) -> torch.Tensor:
    """An uninitialised float32 (T, n) scratch buffer."""
    return torch.empty((t, n), dtype=torch.float32)


def elect_and_merge(stack: torch.Tensor, weights: Sequence[float], normalize: bool) -> torch.Tensor:
    """TIES sign election + disjoint merge of weighted, trimmed deltas (modifies ``stack``).

    ``stack[j] = w_j * trimmed_j`` (T, n); elected sign ``g = sign(sum_j stack[j])``; an entry
    of task j counts when ``sign(stack[j]) == g != 0``. Result: ``sum_agree stack[j] /
    sum_agree |w_j|`` (``normalize``: the disjoint mean; 0 where nobody agrees) or the sum.
    """
    elected = torch.sign(stack.sum(0))
    agree = (stack * elected) > 0  # (T, n): same non-zero sign as elected
    stack.mul_(agree)
    total = stack.sum(0)
    if not normalize:
        return total
    count = torch.zeros_like(total)
    for j, w in enumerate(weights):
        count.add_(agree[j], alpha=abs(w))
    return torch.where(count > 0, total / count.clamp_min(1e-30), torch.zeros((), dtype=total.dtype))


def linear_block(values: Iterable[torch.Tensor], coefs: Iterable[float]) -> torch.Tensor:
    """``sum_j c_j * v_j`` of one block, accumulated in place (float32)."""
    out: torch.Tensor | None = None
    for v, c in zip(values, coefs):
        if out is None:
            out = v.float() * c
        else:
            out.add_(v, alpha=c)
    assert out is not None
    return out


def mask_seed(seed: int, name: str, index: int, block: int) -> int:
    """Seed of a DARE mask block: sha256 of (seed, tensor name, vector index, block), not hash()."""
    digest = hashlib.sha256(f"taskvec-dare\0{seed}\0{name}\0{index}\0{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_keep_block(seed: int, name: str, index: int, block: int, length: int, p: float) -> torch.Tensor:
    """Keep mask (True = kept) of one block: each entry dropped with probability ``p``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(mask_seed(seed, name, index, block))
    return torch.rand(length, generator=g) >= p


def dare_keep(seed: int, name: str, index: int, shape: Sequence[int], p: float) -> torch.Tensor:
    """The whole keep mask of vector ``index``'s tensor ``name`` (the blocks concatenated)."""
    n = math.prod(shape)
    parts = [dare_keep_block(seed, name, index, b, sl.stop - sl.start, p) for b, sl in blocks(n)]
    return (torch.cat(parts) if parts else torch.ones(0, dtype=torch.bool)).reshape(tuple(shape))


def svd_of(delta: Delta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(U (out, m), S (m,), Vh (m, in))`` of a 2-D delta, descending S.

    A ``LowRankDelta`` is never densified: ``B = Qb Rb``, ``A^T = Qa Ra`` and the SVD of the
    small ``Rb Ra^T`` core gives ``U = Qb Uc``, ``Vh = Vc^T Qa^T`` (m = rank).
    """
    if isinstance(delta, LowRankDelta):
        Qb, Rb = torch.linalg.qr(delta.B.float() * delta.scale)  # (out, r), (r, r)
        Qa, Ra = torch.linalg.qr(delta.A.float().T)  # (in, r), (r, r)
        Uc, S, Vch = torch.linalg.svd(Rb @ Ra.T, full_matrices=False)  # (r, r), (r,), (r, r)
        return Qb @ Uc, S, Vch @ Qa.T
    return torch.linalg.svd(delta if delta.dtype == torch.float64 else delta.float(), full_matrices=False)


def numerical_rank(S: torch.Tensor, shape: Sequence[int]) -> int:
    """Singular values above ``max(shape) * eps(float32) * S_max`` (numpy's matrix_rank rule)."""
    if S.numel() == 0 or float(S[0]) <= 0:
        return 0
    tol = float(S[0]) * max(shape) * torch.finfo(torch.float32).eps
    return int((S > tol).sum())


def polar(M: torch.Tensor) -> torch.Tensor:
    """Nearest matrix with orthonormal columns: ``P Q^T`` from ``M = P diag(s) Q^T``."""
    P, _, Qh = torch.linalg.svd(M, full_matrices=False)
    return P @ Qh
