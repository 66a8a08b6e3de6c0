"""Bases of LoRA collections in core space: atoms stored as small cores over a shared span.

A dense basis of T LoRA vectors is 10-43x larger than the LoRA files themselves (each atom is
a dense (out, in) matrix per module). Here, per module:

1. the collection's shared core space (``weights.core_space``): ``delta_t = U C_t V^T`` with
   U (out, p), V (in, q) orthonormal, p, q <= sum of the T ranks. Inner products of cores are
   those of the dense deltas, so the basis method (pca, autoencoder, random_sample) is fitted
   on the cores exactly as it would be on the dense vectors;
2. a span of rank k kept per module: the top-k left / right singular vectors of what the basis
   reconstructs (``[R_1 .. R_T]`` and ``[R_1; ..; R_T]``, ``R_t`` the recovered cores), with
   ``k = M x`` the inputs' mean rank by default (``span_rank``), so the stored span costs about
   what M of the T LoRA vectors cost. The atoms (and the PCA mean) are stored projected into
   it as (k, k) cores. The seeded ``random`` method regenerates its atoms from the seed, so it
   cannot be projected afterwards: its span is chosen from the collection first
   (``[C_1 .. C_T]``) and the method fitted on the projected cores.

The file holds ``span_U::NAME`` (out, k) and ``span_V::NAME`` (in, k) next to the atoms;
recover, addition and negation return low-rank vectors ``U_k (sum_j a_j S_j) V_k^T``. Each
task's relative error against its LoRA vector is computed exactly at build time (in core
coordinates) and stored (``span.total_error``; for ``random``, ``span.span_error`` is what the
span loses and the in-span error comes from the Gram: the two add in squares).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import ShapeMismatchError, UserInputError
from taskvec.weights.core_space import CoreSpace
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.vector import TaskVector

SPACES = ("dense", "core", "auto")


def _load(v: Any) -> TaskVector:
    if isinstance(v, TaskVector):
        return v
    from taskvec.basis.opening import load_one_vector

    return load_one_vector(v)


def all_low_rank(vectors: Sequence[Any]) -> bool:
    """Whether every tensor of every vector file (or ``TaskVector``) is stored low-rank."""
    from taskvec.weights.vector_file import VectorFile

    for v in vectors:
        if isinstance(v, TaskVector):
            if v.form != "low-rank":
                return False
            continue
        try:
            with VectorFile(v) as vf:
                if any(vf.rank(n) is None for n in vf.names):
                    return False
        except Exception:  # noqa: BLE001 - not a plain vector file (e.g. BASIS#TASK): not LoRA
            return False
    return True


def _check_collection(tvs: Sequence[TaskVector]) -> list[str]:
    names = tvs[0].names
    for i, tv in enumerate(tvs):
        if tv.names != names:
            raise ShapeMismatchError(f"vector #{i + 1} holds other tensors than vector #1: a core-space basis "
                                     "needs one set of modules; use --space dense.")
        bad = [n for n in names if not isinstance(tv[n], LowRankDelta) or len(tv[n].shape) != 2]
        if bad:
            raise UserInputError(f'vector #{i + 1} stores "{bad[0]}" dense: a core-space basis needs LoRA '
                                 "(low-rank) vectors; use --space dense.")
    return names


def _top_span(mats: Sequence[torch.Tensor], k: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(left (p, k_u), right (q, k_v)) top singular subspaces of a set of (p, q) matrices."""
    Ul, _, _ = torch.linalg.svd(torch.cat(list(mats), dim=1), full_matrices=False)  # (p, .)
    _, _, Vr = torch.linalg.svd(torch.cat(list(mats), dim=0), full_matrices=False)  # (., q)
    return Ul[:, :k[0]], Vr[:k[1]].T


def _span_rank(deltas: Sequence[LowRankDelta], cs: CoreSpace, M: int, span_rank: int | None) -> tuple[int, int]:
    """(k_u, k_v): the span rank, capped by the dimensions of the column and row spaces."""
    k = span_rank if span_rank is not None else M * round(sum(d.rank for d in deltas) / len(deltas))
    return max(1, min(k, cs.U.shape[1])), max(1, min(k, cs.V.shape[1]))


def build_core_basis(vectors: Sequence[Any], out: str | os.PathLike, method: str = "pca", m: int | None = None,
                     per_layer: bool = False, seed: int = 0, options: dict[str, Any] | None = None,
                     span_rank: int | None = None, progress: bool = False) -> Any:
    """A basis of a LoRA collection in core space (see the module docstring); returns the Basis."""
    from taskvec.basis.build import build_basis
    from taskvec.basis.gram import VectorSet
    from taskvec.basis.registry import get_method

    T = len(vectors)
    M = max(1, T // 2) if m is None else int(m)
    if span_rank is not None and span_rank < 1:
        raise UserInputError(f"--span-rank must be at least 1, got {span_rank}.")
    with VectorSet(vectors) as vs:  # sizes of the LoRA files themselves
        collection = {"stored_bytes": [vs.stored_bytes(i) for i in range(vs.T)],
                      "dense_bytes": [vs.dense_bytes(i) for i in range(vs.T)],
                      "sources": [p.name if p is not None else None for p in vs.paths]}
    tvs = [_load(v) for v in vectors]
    names = _check_collection(tvs)
    spaces = {n: CoreSpace.of([tv[n] for tv in tvs]) for n in names}  # type: ignore[misc]
    ks = {n: _span_rank([tv[n] for tv in tvs], spaces[n], M, span_rank) for n in names}  # type: ignore[misc]
    meta = {"collection": collection, "space": "core"}
    if get_method(method).random_projection:  # span first, from the collection
        spans = {n: _top_span(spaces[n].cores, ks[n]) for n in names}
        cores = [TaskVector({n: (spans[n][0].T @ spaces[n].cores[t] @ spans[n][1]).float() for n in names},
                            dict(tv.metadata) | {"storage": "dense"}) for t, tv in enumerate(tvs)]
        span = _span_tensors(spaces, spans)
        info = _span_info(tvs, spaces, spans, ks, lambda t, n: spans[n][0].T @ spaces[n].cores[t] @ spans[n][1],
                          key="span_error")  # the basis error inside the span comes from its Gram
        return build_basis(cores, out, method=method, m=M, per_layer=per_layer, seed=seed, options=options,
                           progress=progress, extra_tensors=span, extra_meta=meta | {"span": info})
    full = [TaskVector({n: spaces[n].cores[t].float() for n in names}, dict(tv.metadata) | {"storage": "dense"})
            for t, tv in enumerate(tvs)]
    out = Path(out)
    tmp = out.with_name(f".{out.name}.full-span.tmp.safetensors")
    try:
        fitted = build_basis(full, tmp, method=method, m=M, per_layer=per_layer, seed=seed, options=options,
                             progress=progress)
        return _project_basis(fitted, tvs, spaces, ks, out, meta)
    finally:
        tmp.unlink(missing_ok=True)


def _span_tensors(spaces: dict[str, CoreSpace], spans: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for n, (Uk, Vk) in spans.items():
        out[f"span_U::{n}"] = (spaces[n].U @ Uk).float().contiguous()  # (out, k)
        out[f"span_V::{n}"] = (spaces[n].V @ Vk).float().contiguous()  # (in, k)
    return out


def _span_info(tvs: Sequence[TaskVector], spaces: dict[str, CoreSpace], spans: dict[str, tuple[torch.Tensor, torch.Tensor]],
               ks: dict[str, tuple[int, int]], recovered: Any, key: str = "total_error") -> dict[str, Any]:
    """Span ranks, true shapes and each task's exact relative error ``||C_t - U_k R_t V_k^T|| / ||C_t||``
    (``recovered(t, name)``: the task's reconstruction as a (k, k) core)."""
    T = len(tvs)
    err2, norm2 = [0.0] * T, [0.0] * T
    for n, (Uk, Vk) in spans.items():
        for t in range(T):
            C = spaces[n].cores[t]
            R = Uk @ recovered(t, n).double() @ Vk.T  # (p, q)
            err2[t] += float(((C - R) ** 2).sum())
            norm2[t] += float((C**2).sum())
    return {"span_rank": {n: list(k) for n, k in ks.items()}, "true_shapes": [[n, list(spaces[n].shape)] for n in spans],
            key: [math.sqrt(e / x) if x > 0 else 0.0 for e, x in zip(err2, norm2)]}


def _project_basis(fitted: Any, tvs: Sequence[TaskVector], spaces: dict[str, CoreSpace], ks: dict[str, tuple[int, int]],
                   out: Path, meta: dict[str, Any]) -> Any:
    """Keep the top-k span of what ``fitted`` (a basis over full cores) reconstructs; write ``out``."""
    from taskvec.basis.basis import Basis
    from taskvec.formats import decode_metadata, encode_metadata, write_file

    tensors: dict[str, torch.Tensor] = {}
    spans: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rec: dict[str, list[torch.Tensor]] = {}
    with fitted.reader:
        for key in fitted.reader.keys():
            if not key.startswith(("basis::", "mean::")):
                tensors[key] = fitted.reader.get_tensor(key)
        for n in spaces:
            p, q = spaces[n].cores[0].shape
            atoms = fitted.basis_rows(n).T.reshape(fitted.M, p, q)  # (M, p, q)
            mu = fitted.mean_rows(n).reshape(p, q) if fitted.centered else torch.zeros(p, q, dtype=torch.float64)
            coef = fitted.coefficients[fitted.group_of(n)]  # (T, M)
            R = torch.einsum("tm,mpq->tpq", coef, atoms) + mu  # (T, p, q) recovered cores
            Uk, Vk = _top_span(list(R), ks[n])
            spans[n] = (Uk, Vk)
            rec[n] = [Uk.T @ r @ Vk for r in R]
            for j in range(fitted.M):
                tensors[f"basis::{j}::{n}"] = (Uk.T @ atoms[j] @ Vk).float().contiguous()
            if fitted.centered:
                tensors[f"mean::{n}"] = (Uk.T @ mu @ Vk).float().contiguous()
    tensors |= _span_tensors(spaces, spans)
    info = _span_info(tvs, spaces, spans, ks, lambda t, n: rec[n][t])
    md = decode_metadata(fitted.reader.metadata) | meta | {
        "span": info, "tensor_shapes": [[n, list(ks[n])] for n in spaces]}
    fitted.close()
    write_file(out, tensors, encode_metadata(md))
    return Basis.load(out)


def span_factors(basis: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k (out, k), V_k (in, k)) of one module of a core-space basis."""
    return basis.reader.get_tensor(f"span_U::{name}").double(), basis.reader.get_tensor(f"span_V::{name}").double()


def to_low_rank(basis: Any, cores: dict[str, torch.Tensor]) -> dict[str, LowRankDelta]:
    """Cores (k, k) of a core-space basis as low-rank deltas ``U_k C V_k^T`` (rank <= k)."""
    out: dict[str, LowRankDelta] = {}
    with basis.reader:
        for name, C in cores.items():
            U, V = span_factors(basis, name)
            B = U @ C.double()  # (out, k)
            out[name] = LowRankDelta(V.T.float().contiguous(), B.float().contiguous(), 1.0)
    return out


def measured_core_errors(basis: Any, vectors: Sequence[Any]) -> list[float | None]:
    """Relative errors of a core-space basis against the original LoRA vectors, per task:
    ``||delta - U_k R V_k^T||^2 = ||delta||^2 - ||U_k^T delta V_k||^2 + ||U_k^T delta V_k - R||^2``."""
    from taskvec.basis.arithmetic import recover_cores

    tvs = [_load(v) for v in vectors]
    if len(tvs) != basis.T:
        raise UserInputError(f"got {len(tvs)} vectors but the basis was built from {basis.T}: pass the same files in order.")
    errs: list[float | None] = []
    for t, tv in enumerate(tvs):
        rec = recover_cores(basis, t)
        e2 = n2 = 0.0
        with basis.reader:
            for name, R in rec.items():
                d = tv[name]
                if not isinstance(d, LowRankDelta):
                    raise UserInputError(f'vector #{t + 1} stores "{name}" dense: pass the LoRA files the basis was built from.')
                U, V = span_factors(basis, name)
                P = (U.T @ (d.B.double() * d.scale)) @ (d.A.double() @ V)  # (k, k)
                full = d.norm2()
                e2 += full - float((P**2).sum()) + float(((P - R.double()) ** 2).sum())
                n2 += full
        errs.append(math.sqrt(max(e2, 0.0) / n2) if n2 > 0 else 0.0)
    return errs


__all__ = ["SPACES", "all_low_rank", "build_core_basis", "measured_core_errors", "to_low_rank"]
