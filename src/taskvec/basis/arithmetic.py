"""Operations through a basis: recover, addition, negation, info; ``load_basis_or_vector``.

Every operation is a combination ``out = w_mean * mu + sum_m a_m S_m`` per basis group, built
tensor by tensor (row block by row block) from the basis file (or, for ``random``, from
directions regenerated from the seed):

* ``recover(i)``: ``a = c_i`` (row i of the coefficients), ``w_mean = 1``.
* ``addition(w)``: ``sum_i w_i v_i ~ (sum_i w_i) mu + sum_m (sum_i w_i c_im) S_m``. For PCA the mean
  is added back ``sum_i w_i`` times: with all ``w_i = lambda`` that is ``lambda (T mu + sum_i sum_m
  c_im S_m)``, which equals ``lambda sum_i v_i`` when the basis reconstructs every task.
* ``negation(i) = -recover(i)``.

Reconstruction errors come from the stored per-layer Gram matrices (the method's exact
arithmetic; no vector files needed) or, given the original vectors, are measured against them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from taskvec.basis.basis import Basis
from taskvec.basis.gram import DEFAULT_CHUNK_ELEMS, VectorSet, layer_key, progress_bar
from taskvec.errors import ShapeMismatchError, TaskVecWarning, UserInputError, unknown_name
from taskvec.formats import row_blocks
from taskvec.weights.vector import TaskVector

__all__ = ["ReconstructionWarning", "addition", "info", "negation", "recover"]


class ReconstructionWarning(TaskVecWarning):
    """A task that the basis only approximates by design (e.g. not sampled by random_sample)."""


def _combine(basis: Basis, a: torch.Tensor, mean_w: float, progress: bool, desc: str) -> dict[str, torch.Tensor]:
    """Per tensor: ``mean_w * mu + S @ a[g]`` (a: (G, M)), as float32, one row block at a time."""
    from taskvec.basis.random_orth import random_rows

    out: dict[str, torch.Tensor] = {}
    bar = progress_bar(len(basis.shapes), desc, progress)
    with basis.reader:
        for name, shape in basis.shapes.items():
            g = basis.group_of(name)
            flat = torch.empty(math.prod(shape), dtype=torch.float32)
            row = math.prod(shape[1:]) if shape else 1
            if basis.random_projection:
                assert basis.random_mix is not None
                coef = basis.random_mix[g] @ a[g]  # (M,) weights of the raw directions
            for rng in row_blocks(shape, DEFAULT_CHUNK_ELEMS) or [None]:
                r0, r1 = rng if rng is not None else (None, None)
                e0, e1 = (r0 * row, r1 * row) if rng is not None else (0, 1)
                if basis.random_projection:
                    v = random_rows(basis.seed, name, basis.M, e0, e1).double() @ coef
                else:
                    v = basis.basis_rows(name, r0, r1) @ a[g]
                    if basis.centered and mean_w != 0.0:
                        v += mean_w * basis.mean_rows(name, r0, r1)
                flat[e0:e1] = v.float()
            out[name] = flat.reshape(shape)
            bar.update(1)
    bar.close()
    return out


def _result(basis: Basis, deltas: dict[str, torch.Tensor], task: str, **extra: Any) -> TaskVector:
    """The combined tensors as a vector: dense, or low-rank over the span of a core-space basis."""
    meta = {k: basis.metadata.get(k) for k in ("base_model", "base_fingerprint") if basis.metadata.get(k)}
    meta |= {"storage": "dense", "task": task, "source": f"basis:{basis.path.name}", "basis_method": basis.method}
    if basis.space == "core":
        from taskvec.basis.core_basis import to_low_rank

        return TaskVector(dict(to_low_rank(basis, deltas)), meta | extra | {"storage": "low-rank"})
    return TaskVector(deltas, meta | extra)


def recover_cores(basis: Basis, task: str | int) -> dict[str, torch.Tensor]:
    """The combined tensors of one task's reconstruction (cores for a core-space basis)."""
    i = basis.task_index(task)
    return _combine(basis, basis.coefficients[:, i, :], 1.0, False, "recover")


def recover(basis: Basis, task: str | int, progress: bool = False) -> TaskVector:
    """Task ``task`` reconstructed from the basis (dense float32 deltas)."""
    i = basis.task_index(task)
    if not basis.in_basis(i):
        err = estimated_errors(basis)[0][i]
        warnings.warn(
            f'task "{basis.tasks[i]}" is not one of the {basis.M} sampled vectors of this '
            f"{basis.method} basis: recovering its projection onto them (relative error "
            f"{'n/a' if err is None else f'{err:.3g}'}), not the task vector itself.",
            ReconstructionWarning,
            stacklevel=3,
        )
    else:
        _warn_if_barely_represented(basis, i, "recovered")
    deltas = _combine(basis, basis.coefficients[:, i, :], 1.0, progress, f"recover {basis.tasks[i]}")
    return _result(basis, deltas, basis.tasks[i])


POOR_RECONSTRUCTION = 0.9  # relative L2 error at or above which a task is "barely represented"


def _warn_if_barely_represented(basis: Basis, i: int, what: str) -> None:
    """ReconstructionWarning when task ``i``'s relative error (from the stored Grams) is >= 0.9: its
    reconstruction is close to zero, so adding or negating it through the basis does little
    (measured: negating SST-2 through an M = 4 autoencoder basis with error 0.999 left its accuracy
    unchanged, docs/results.md)."""
    err = estimated_errors(basis)[0][i]
    if err is not None and err >= POOR_RECONSTRUCTION:
        warnings.warn(
            f'task "{basis.tasks[i]}" is barely represented in this {basis.method} basis (M = {basis.M}, relative '
            f"reconstruction error {err:.3g}): the {what} vector is close to zero and will change the model "
            "little; use a basis with a larger --m, or the original vector.",
            ReconstructionWarning,
            stacklevel=4,
        )


def negation(basis: Basis, task: str | int, progress: bool = False) -> TaskVector:
    """``-recover(task)``; refuses a task the basis does not hold exactly (random_sample)."""
    i = basis.task_index(task)
    if not basis.in_basis(i):
        held = ", ".join(basis.tasks[j] for j in (basis.selected or []))
        raise UserInputError(
            f'cannot negate task "{basis.tasks[i]}": it is not one of the {basis.M} sampled vectors of '
            f"this {basis.method} basis ({held}), so it cannot be reconstructed; rebuild with a larger "
            "--m or another --method (e.g. pca), or negate the original vector."
        )
    _warn_if_barely_represented(basis, i, "negated")
    deltas = _combine(basis, -basis.coefficients[:, i, :], -1.0, progress, f"negate {basis.tasks[i]}")
    return _result(basis, deltas, f"-({basis.tasks[i]})")


def task_weights(basis: Basis, weights: float | Sequence[float] | dict[str, float] | None) -> torch.Tensor:
    """Weights (T,) from None (all 1), a float, a sequence of T, or {task: weight} (others 0)."""
    if weights is None:
        w = torch.ones(basis.T, dtype=torch.float64)
    elif isinstance(weights, (int, float)):
        w = torch.full((basis.T,), float(weights), dtype=torch.float64)
    elif isinstance(weights, dict):
        w = torch.zeros(basis.T, dtype=torch.float64)
        for k, v in weights.items():
            if k not in basis.tasks:
                raise unknown_name("task", str(k), basis.tasks)
            w[basis.tasks.index(k)] = float(v)
    else:
        vals = [float(x) for x in weights]
        if len(vals) != basis.T:
            raise UserInputError(f"got {len(vals)} weights for the {basis.T} tasks of the basis.")
        w = torch.tensor(vals, dtype=torch.float64)
    if not torch.isfinite(w).all():
        raise UserInputError("addition weights must be finite.")
    return w


def addition(basis: Basis, weights: float | Sequence[float] | dict[str, float] | None = None,
             progress: bool = False) -> TaskVector:
    """``sum_i w_i v_i`` through the basis (the PCA mean is added ``sum_i w_i`` times)."""
    w = task_weights(basis, weights)
    a = torch.einsum("gtm,t->gm", basis.coefficients, w)  # (G, M)
    deltas = _combine(basis, a, float(w.sum()), progress, "addition")
    label = " + ".join(f"{float(x):g}*{t}" for x, t in zip(w, basis.tasks) if float(x) != 0.0) or "0"
    return _result(basis, deltas, label, merge="basis addition")


def basis_sum(basis: Basis, progress: bool = False) -> TaskVector:
    """uiuctml/TaskVectorBasis's task addition: the sum of the M basis vectors, no mean.

    The source merges ``sum_m s_m`` and searches one coefficient for it. Its basis vectors are
    those taskvec stores except for PCA, whose source atoms are variance-scaled (``U_m S_m``,
    taskvec stores unit ``U_m``): that scale is applied here. PCA atoms carry the arbitrary
    signs of eigenvectors, so this sum depends on them (as in the source); ``addition`` is the
    sum of the reconstructed task vectors, which does not.
    """
    if basis.method == "pca":
        assert basis.singular_values is not None
        a = basis.singular_values.clone()  # (G, M): U_m S_m
    else:
        a = torch.ones(len(basis.groups), basis.M, dtype=torch.float64)
    deltas = _combine(basis, a, 0.0, progress, "basis sum")  # random: a weighs the orthonormal Q
    return _result(basis, deltas, f"sum of the {basis.M} {basis.method} basis vectors", merge="basis sum (source addition)")


# -- reconstruction errors ------------------------------------------------------------------
def _basis_group_of_layer(basis: Basis, lk: str) -> int:
    return basis.groups.index(lk if basis.per_layer else "all")


def estimated_errors(basis: Basis) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Relative L2 reconstruction error per task, and per layer group, from the stored Grams
    (None for an imported basis, which has none: measure it with ``vectors``)."""
    T = basis.T
    if basis.stats_gram is None:
        return [None] * T, {}
    err2 = torch.zeros(len(basis.stats_groups), T, dtype=torch.float64)
    norm2 = torch.zeros_like(err2)
    eye = torch.eye(T, dtype=torch.float64)
    for li, lk in enumerate(basis.stats_groups):
        g = _basis_group_of_layer(basis, lk)
        G = basis.stats_gram[li]
        coef = basis.coefficients[g]  # (T, M)
        if basis.random_projection:
            assert basis.random_mix is not None and basis.stats_rr is not None and basis.stats_rx is not None
            B = basis.random_mix[g] @ coef.T  # (M, T): v_hat_i = R B[:, i]
            err2[li] = G.diagonal() - 2 * (B * basis.stats_rx[li]).sum(0) + (B * (basis.stats_rr[li] @ B)).sum(0)
        else:
            assert basis.mix is not None
            K = basis.mix[g] @ coef.T + (1.0 / T if basis.centered else 0.0)  # v_hat_i = V K[:, i]
            E = eye - K
            err2[li] = (E * (G @ E)).sum(0)
        norm2[li] = G.diagonal()
    return _relative(err2.clamp_min(0.0), norm2, basis.stats_groups)


def _relative(err2: torch.Tensor, norm2: torch.Tensor, groups: Sequence[str]) -> tuple[list[float | None], dict[str, list[float | None]]]:
    def rel(e: float, n: float) -> float | None:
        if n <= 0:
            return 0.0 if e <= 0 else None
        return math.sqrt(max(e, 0.0) / n)

    total = [rel(float(e), float(n)) for e, n in zip(err2.sum(0), norm2.sum(0))]
    per_layer = {lk: [rel(float(e), float(n)) for e, n in zip(err2[i], norm2[i])] for i, lk in enumerate(groups)}
    return total, per_layer


def measured_errors(basis: Basis, vectors: Sequence[Any], progress: bool = False,
                    chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Relative L2 errors of the stored basis against the original vectors, streamed."""
    from taskvec.basis.random_orth import random_rows

    lidx = {lk: i for i, lk in enumerate(basis.stats_groups)}
    err2 = torch.zeros(len(lidx), basis.T, dtype=torch.float64)
    norm2 = torch.zeros_like(err2)
    with VectorSet(vectors) as vs:
        if vs.T != basis.T:
            raise UserInputError(f"got {vs.T} vectors but the basis was built from {basis.T}: pass the same files in order.")
        if vs.shapes != basis.shapes:
            diff = sorted(set(vs.shapes) ^ set(basis.shapes)) or [n for n in vs.shapes if vs.shapes[n] != basis.shapes[n]]
            raise ShapeMismatchError(
                f'the vectors and the basis disagree on tensor "{diff[0]}": pass the files the basis was built from.'
            )
        bar = progress_bar(len(vs.names), "measure", progress)
        with basis.reader:
            for name in vs.names:
                g, li = basis.group_of(name), lidx[layer_key(name)]
                coefT = basis.coefficients[g].T  # (M, T)
                whole = not vs.shapes[name]
                for b in vs.blocks(name, chunk_elems):
                    if basis.random_projection:
                        assert basis.random_mix is not None
                        R = random_rows(basis.seed, name, basis.M, b.e0, b.e1).double()
                        Xh = R @ (basis.random_mix[g] @ coefT)
                    else:
                        r0, r1 = (None, None) if whole else (b.r0, b.r1)
                        Xh = basis.basis_rows(name, r0, r1) @ coefT
                        if basis.centered:
                            Xh += basis.mean_rows(name, r0, r1)[:, None]
                    err2[li] += ((b.X - Xh) ** 2).sum(0)
                    norm2[li] += (b.X**2).sum(0)
                bar.update(1)
        bar.close()
    return _relative(err2, norm2, basis.stats_groups)


def _with_span_error(basis: Basis, in_span: list[float | None]) -> list[float | None]:
    """Total relative errors of a core-space basis: span share and in-span share add in squares
    (the in-span error is relative to the projected norm, ``(1 - span_error^2)`` of the full one)."""
    if "total_error" in basis.span:  # computed exactly at build time
        return [float(x) for x in basis.span["total_error"]]
    out: list[float | None] = []
    for e_in, e_span in zip(in_span, basis.span.get("span_error", [])):
        if e_in is None:
            out.append(None)
            continue
        kept = 1.0 - e_span**2
        out.append(math.sqrt(max(0.0, e_span**2 + e_in**2 * kept)))
    return out


def info(basis: Basis, vectors: Sequence[Any] | None = None, progress: bool = False,
         chunk_elems: int | None = None) -> dict[str, Any]:
    """Storage (basis file vs the collection) and reconstruction errors per task and per layer."""
    coll = basis.metadata.get("collection") or {}
    stored = coll.get("stored_bytes") or []
    dense = coll.get("dense_bytes") or []
    if vectors:
        with VectorSet(vectors) as vs:
            stored = [vs.stored_bytes(i) for i in range(vs.T)]
            dense = [vs.dense_bytes(i) for i in range(vs.T)]
    size = basis.path.stat().st_size
    est_total, est_layers = estimated_errors(basis)
    out: dict[str, Any] = {
        "file": str(basis.path),
        "method": basis.method,
        "M": basis.M,
        "T": basis.T,
        "per_layer": basis.per_layer,
        "seed": basis.seed,
        "groups": len(basis.groups),
        "tensors": len(basis.shapes),
        "base_model": basis.metadata.get("base_model"),
        "base_fingerprint": basis.metadata.get("base_fingerprint"),
        "options": basis.metadata.get("options"),
        "storage": {
            "basis_bytes": size,
            "collection_bytes": sum(stored) if stored else None,
            "collection_dense_bytes": sum(dense) if dense else None,
            "basis_vs_collection": size / sum(stored) if stored and sum(stored) else None,
            "basis_vs_collection_dense": size / sum(dense) if dense and sum(dense) else None,
        },
        "fit": basis.fit_info if basis.per_layer else (basis.fit_info[0] if basis.fit_info else {}),
        "tasks": [],
        "per_layer_rel_error": {lk: dict(zip(basis.tasks, v)) for lk, v in est_layers.items()},
    }
    meas_total: list[float | None] | None = None
    if basis.space == "core":  # add the share of each task outside the stored span (exact)
        est_total = _with_span_error(basis, est_total)
        out["space"] = {"form": "core", "span_rank": basis.span.get("span_rank")}
    if vectors and basis.space == "core":
        from taskvec.basis.core_basis import measured_core_errors

        meas_total = measured_core_errors(basis, vectors)
    elif vectors:
        meas_total, meas_layers = measured_errors(basis, vectors, progress, chunk_elems or DEFAULT_CHUNK_ELEMS)
        out["per_layer_rel_error_measured"] = {lk: dict(zip(basis.tasks, v)) for lk, v in meas_layers.items()}
    for i, t in enumerate(basis.tasks):
        row: dict[str, Any] = {"task": t, "in_basis": basis.in_basis(i), "rel_error": est_total[i]}
        if meas_total is not None:
            row["rel_error_measured"] = meas_total[i]
        out["tasks"].append(row)
    if "loss_history" in out["fit"]:
        out["fit"] = {k: v for k, v in out["fit"].items() if k != "loss_history"}
    return out
