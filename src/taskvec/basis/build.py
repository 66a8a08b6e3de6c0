"""``build_basis``: two streaming passes over the T vector files, then an atomic basis file.

Pass 1 accumulates per-layer-group Gram matrices (and, for ``random``, ``R^T R`` and
``R^T V``); the method fits each basis group from those small matrices; pass 2 (every method
but ``random``) reads the vectors again block by block and writes ``S = V @ mix`` (and the PCA
mean ``V 1 / T``) straight into the output file at each block's offset. Memory stays about
T x (one row block) + M x (one row block), never T x (model size).

Under ``torchrun`` pass 1 is data-parallel: each rank reads only its share of the tensor names
and the Gram statistics are all-reduced (:func:`taskvec.basis.gram.gather_stats`). Only rank 0
fits the basis, runs pass 2 and writes the file; the other ranks write nothing and return None.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.basis.basis import KIND, Basis
from taskvec.basis.gram import (
    DEFAULT_CHUNK_ELEMS,
    VectorLike,
    VectorSet,
    gather_stats,
    group_key,
    merge_stats,
    progress_bar,
    sort_groups,
)
from taskvec.basis.registry import BasisMethod, GroupFit, get_method
from taskvec.errors import FingerprintMismatchError, UserInputError
from taskvec.formats import PositionalSafetensorsWriter, TensorSpec, encode_metadata, envelope
from taskvec.io_utils import atomic_path, check_writable

__all__ = ["build_basis"]


def _base_identity(vs: VectorSet) -> tuple[str | None, str | None]:
    """(base_model, base_fingerprint) the inputs agree on; mismatching fingerprints raise."""
    fps: dict[str, int] = {}
    model = None
    for i in range(vs.T):
        meta = vs.metadata(i)
        fp = meta.get("base_fingerprint")
        if fp:
            if fps and fp not in fps:
                j = next(iter(fps.values()))
                raise FingerprintMismatchError(
                    f"{vs.label(i)} was made on base fingerprint {fp} but {vs.label(j)} on "
                    f"{vs.metadata(j).get('base_fingerprint')}: a basis needs vectors of the same base model."
                )
            fps.setdefault(fp, i)
        model = model or meta.get("base_model")
    return (str(model) if model else None), (next(iter(fps)) if fps else None)


def _stack(fits: Sequence[GroupFit], attr: str) -> torch.Tensor | None:
    vals = [getattr(f, attr) for f in fits]
    if any(v is None for v in vals):
        return None
    return torch.stack([v.double() for v in vals]).contiguous()


def build_basis(
    vectors: Sequence[VectorLike],
    out: str | os.PathLike,
    method: str = "pca",
    m: int | None = None,
    per_layer: bool = False,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    progress: bool = False,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Basis | None:
    """Build a basis of ``m`` vectors (default T // 2) from task vector files (or ``TaskVector``s).

    ``method``: ``pca``, ``autoencoder``, ``random``, ``random_sample``; ``per_layer``: one basis
    per decoder layer group; ``options``: method options (autoencoder: tau, steps, lr, refit).
    Writes ``out`` atomically and returns the loaded ``Basis``; under ``torchrun`` only rank 0
    does, the other ranks (which share the Gram pass) write nothing and return None.
    ``extra_tensors`` (float32) and ``extra_meta`` are written into the file as given (the
    core-space basis stores its span factors and span errors so, ``basis.core_basis``).
    """
    from taskvec import dist

    meth: BasisMethod = get_method(method)
    opts = meth.resolve_options(options)
    paths = tuple(v for v in vectors if isinstance(v, (str, os.PathLike)))
    main = dist.is_main()
    out = check_writable(out, paths) if main else Path(out)
    if out.suffix != ".safetensors":
        raise UserInputError(f"the basis file must end in .safetensors, got {out.name}.")
    with VectorSet(vectors) as vs:
        T = vs.T
        M = max(1, T // 2) if m is None else int(m)
        meth.check(T, M)
        base_model, base_fp = _base_identity(vs)
        if not vs.names:
            raise UserInputError("the task vectors hold no tensors.")
        layer_stats = gather_stats(vs, random_m=M if meth.random_projection else 0, seed=seed,
                                   chunk_elems=chunk_elems, progress=progress)
        if not main:  # rank 0 alone fits, runs pass 2 and writes the file
            return None
        groups = sort_groups([group_key(n, per_layer) for n in vs.names])
        gstats = {g: merge_stats([s for lk, s in layer_stats.items() if (lk if per_layer else "all") == g])
                  for g in groups}
        M = meth.effective_m([gstats[g].gram for g in groups], M)
        fits = [meth.fit(gstats[g], M, seed, opts, progress=progress) for g in groups]
        small: dict[str, torch.Tensor] = {"coefficients": _stack(fits, "coefficients")}  # type: ignore[dict-item]
        for key, attr in (("mix", "mix"), ("singular_values", "singular_values"), ("ae_logits", "logits"),
                          ("random_mix", "random_mix")):
            t = _stack(fits, attr)
            if t is not None:
                small[key] = t
        lkeys = list(layer_stats)
        small["stats::gram"] = torch.stack([layer_stats[k].gram for k in lkeys])
        if meth.random_projection:
            small["stats::rr"] = torch.stack([layer_stats[k].rr for k in lkeys])  # type: ignore[misc]
            small["stats::rx"] = torch.stack([layer_stats[k].rx for k in lkeys])  # type: ignore[misc]
        specs = [TensorSpec(k, "F64", tuple(v.shape)) for k, v in small.items()]
        extra = {k: v.float().contiguous() for k, v in (extra_tensors or {}).items()}
        specs += [TensorSpec(k, "F32", tuple(v.shape)) for k, v in extra.items()]
        for name in vs.names:
            shape = vs.shapes[name]
            if meth.centered:
                specs.append(TensorSpec(f"mean::{name}", "F32", shape))
            if not meth.random_projection:
                specs += [TensorSpec(f"basis::{j}::{name}", "F32", shape) for j in range(M)]
        meta = envelope(KIND, {
            "method": meth.name,
            "M": str(M),
            "T": str(T),
            "seed": str(int(seed)),
            "per_layer": "true" if per_layer else "false",
            "tasks": vs.task_names(),
            "groups": groups,
            "stats_groups": lkeys,
            "tensor_shapes": [[n, list(vs.shapes[n])] for n in vs.names],  # a list keeps the order
            "options": opts,
            "fit_info": [f.info for f in fits],
            "collection": {
                "stored_bytes": [vs.stored_bytes(i) for i in range(T)],
                "dense_bytes": [vs.dense_bytes(i) for i in range(T)],
                "sources": [p.name if p is not None else None for p in vs.paths],
            },
            "base_model": base_model,
            "base_fingerprint": base_fp,
        } | dict(extra_meta or {}))

        with atomic_path(out) as tmp:
            with PositionalSafetensorsWriter(tmp, specs, encode_metadata(meta)) as w:
                for k, v in (small | extra).items():
                    w.write(k, v)
                if not meth.random_projection:
                    _write_basis_tensors(w, vs, groups, small["mix"], per_layer, meth.centered, chunk_elems, progress)
    return Basis.load(Path(out))


def _write_basis_tensors(
    w: PositionalSafetensorsWriter, vs: VectorSet, groups: list[str], mix: torch.Tensor, per_layer: bool,
    centered: bool, chunk_elems: int, progress: bool,
) -> None:
    """Pass 2: ``S = V @ mix[g]`` and the mean ``V 1 / T``, block by block, at their offsets."""
    gidx = {g: i for i, g in enumerate(groups)}
    M = mix.shape[2]
    bar = progress_bar(len(vs.names), "basis", progress)
    for name in vs.names:
        shape = vs.shapes[name]
        tail = shape[1:] if shape else ()
        P = mix[gidx[group_key(name, per_layer)]]  # (T, M)
        if centered:  # the mean V 1/T as one more column
            P = torch.cat([P, torch.full((P.shape[0], 1), 1.0 / P.shape[0], dtype=P.dtype)], dim=1)
        keys = [f"basis::{j}::{name}" for j in range(M)] + ([f"mean::{name}"] if centered else [])
        for b in vs.blocks(name, chunk_elems):
            rows = (b.r1 - b.r0,) + tail if shape else ()
            St = P.T @ b.X.T  # (M [+1], n) float64, one contiguous row per output tensor
            for key, row in zip(keys, St):
                w.write_rows(key, b.r0, row.float().reshape(rows))
            del St, b
        bar.update(1)
    bar.close()
