"""Streaming passes over T task vector files: Gram matrices and row blocks of ``V``.

Nothing here holds a whole task vector. Every pass walks the union of tensor names; for each
tensor it reads a block of rows (about ``chunk_elems`` elements) from each of the T files with
positional reads (``SafetensorsReader``: no memory map, whose touched pages would count as
resident), densifies low-rank deltas for that block only (``B[rows] @ A * scale``), and stacks
the T blocks into ``X`` (rows*cols, T) float64. Peak memory is therefore about
``T x chunk_elems x 8`` bytes plus the per-tensor low-rank ``A`` factors, independent of the model
size; with ``chunk_elems=0`` a block is a whole tensor (T x the largest tensor).

Statistics are kept per *layer group* (``layer.N`` for decoder layer N, ``other`` for
embeddings, final norm, head) so per-layer bases and per-layer error reports come from the same
pass: the whole-vector Gram is the sum of the layer groups' Grams.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from taskvec.basis.registry import GroupStats
from taskvec.errors import UserInputError
from taskvec.formats import row_blocks
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.vector import TaskVector, layer_of
from taskvec.weights.vector_source import VectorSource, common_shapes, open_source

__all__ = [
    "DEFAULT_CHUNK_ELEMS",
    "VectorSet",
    "gather_stats",
    "group_key",
    "layer_key",
    "sort_groups",
    "streaming_gram",
]

DEFAULT_CHUNK_ELEMS = 1 << 20  # elements per row block and task (8 MiB of float64 per task)
VectorLike = TaskVector | str | os.PathLike


def layer_key(name: str) -> str:
    """``layer.N`` for a decoder-layer tensor, ``other`` for the rest."""
    i = layer_of(name)
    return f"layer.{i}" if i is not None else "other"


def group_key(name: str, per_layer: bool) -> str:
    """The basis group of a tensor: its layer group with ``per_layer``, else ``all``."""
    return layer_key(name) if per_layer else "all"


def sort_groups(keys: Sequence[str]) -> list[str]:
    """Layer groups in layer order, then ``other`` / ``all``."""
    def k(s: str) -> tuple[int, int, str]:
        if s.startswith("layer.") and s[6:].isdigit():
            return (0, int(s[6:]), s)
        return (1, 0, s)

    return sorted(set(keys), key=k)


def _name_order(name: str) -> tuple[int, int, str]:
    i = layer_of(name)
    return (0, i, name) if i is not None else (1, 0, name)


@dataclass
class Block:
    """Rows ``r0:r1`` of tensor ``name``: flattened elements ``e0:e1`` of all T vectors."""

    name: str
    r0: int
    r1: int
    e0: int
    e1: int
    X: torch.Tensor  # (e1 - e0, T) float64, a view of a reused buffer: valid until the next block


class VectorSet:
    """T task vectors (files read lazily, or in-memory ``TaskVector``s) over one name set."""

    def __init__(self, items: Sequence[VectorLike]) -> None:
        if not items:
            raise UserInputError("no task vectors given.")
        self.items = list(items)
        self.sources: list[VectorSource] = []
        try:
            for i, x in enumerate(self.items):
                self.sources.append(open_source(x, None if not isinstance(x, TaskVector) else f"vector #{i}"))
        except BaseException:
            self.close()
            raise
        self.paths: list[Path | None] = [s.path if not isinstance(x, TaskVector) else None
                                         for s, x in zip(self.sources, self.items)]
        self.shapes = common_shapes(self.sources)
        self.names = sorted(self.shapes, key=_name_order)
        self._buf: torch.Tensor | None = None

    @property
    def T(self) -> int:
        return len(self.sources)

    def label(self, i: int) -> str:
        p = self.paths[i]
        return str(p) if p is not None else f"vector #{i}"

    def metadata(self, i: int) -> dict[str, Any]:
        return dict(self.sources[i].metadata)

    def task_names(self) -> list[str]:
        """Task names from metadata (``task``), else the file stem; duplicates get ``.2``, ``.3``."""
        raw = []
        for i in range(self.T):
            t = self.sources[i].metadata.get("task")
            p = self.paths[i]
            raw.append(str(t) if t else (p.stem if p is not None else f"task{i}"))
        out, seen = [], {}
        for n in raw:
            seen[n] = seen.get(n, 0) + 1
            out.append(n if seen[n] == 1 else f"{n}.{seen[n]}")
        return out

    def stored_bytes(self, i: int) -> int:
        """Bytes of vector i as stored: its file size, or its values as float32 in memory."""
        p = self.paths[i]
        if p is not None and p.is_file():
            return p.stat().st_size
        return sum(math.prod(s) for s in self.sources[i].shapes.values()) * 4

    def dense_bytes(self, i: int) -> int:
        """Bytes of vector i as dense float32 deltas."""
        return sum(math.prod(s) for s in self.sources[i].shapes.values()) * 4

    def _fill(self, i: int, name: str, r0: int, r1: int, rng: tuple[int, int] | None, out: torch.Tensor) -> None:
        """Write rows ``r0:r1`` of vector i's dense delta (float64, flattened) into ``out``."""
        src = self.sources[i]
        if name not in src.shapes:
            out.zero_()
            return
        d = src.get(name) if rng is None else src.get_rows(name, r0, r1)
        if isinstance(d, LowRankDelta):
            B, A = d.B.double(), d.A.double()
            torch.matmul(B, A, out=out.view(B.shape[0], A.shape[1]))  # no second dense buffer
            out.mul_(d.scale)
        else:
            out.copy_(d.reshape(-1))  # converts to float64 in place of a temporary

    def blocks(self, name: str, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> Iterator[Block]:
        """Row blocks of one tensor across all T vectors: X is (n, T), column-major."""
        shape = self.shapes[name]
        ranges = row_blocks(shape, chunk_elems)
        row = math.prod(shape[1:]) if shape else 1
        for rng in ranges or [None]:
            r0, r1 = rng if rng is not None else (0, 1)
            Xt = self._buffer((r1 - r0) * row)  # (T, n): one contiguous row per task
            for i in range(self.T):
                self._fill(i, name, r0, r1, rng, Xt[i])
            yield Block(name, r0, r1, r0 * row, r1 * row, Xt.T)
            del Xt

    def _buffer(self, n: int) -> torch.Tensor:
        """A (T, n) float64 view of one buffer reused by every block (grown when needed).

        Reuse keeps the peak deterministic: allocating and freeing a T x block buffer per block
        fragments the heap when its size sits near glibc's mmap threshold (32 MiB). A block is
        therefore only valid until the next one is requested.
        """
        if self._buf is None or self._buf.shape[1] < n:
            self._buf = None
            self._buf = torch.empty(self.T, n, dtype=torch.float64)
        return self._buf[:, :n]

    def close(self) -> None:
        self._buf = None
        for s in self.sources:
            s.close()

    def __enter__(self) -> VectorSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


def gather_stats(
    vs: VectorSet,
    random_m: int = 0,
    seed: int = 0,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    progress: bool = False,
) -> dict[str, GroupStats]:
    """Per layer group: the Gram ``V^T V`` and, with ``random_m``, ``R^T R`` and ``R^T V``.

    Under ``torchrun`` (:mod:`taskvec.dist`) the tensor names are sharded over ranks
    (``i % world == rank`` in ``vs.names`` order): each rank reads only its tensors, and the
    float64 statistics are all-reduced, so every rank returns the same (up to summation order)
    statistics as a single process.
    """
    from taskvec import dist
    from taskvec.basis.random_orth import random_rows

    T = vs.T
    out: dict[str, GroupStats] = {}
    for name in vs.names:  # every group exists on every rank, so the all-reduce shapes agree
        key = layer_key(name)
        if key not in out:
            out[key] = GroupStats(
                gram=torch.zeros(T, T, dtype=torch.float64),
                rr=torch.zeros(random_m, random_m, dtype=torch.float64) if random_m else None,
                rx=torch.zeros(random_m, T, dtype=torch.float64) if random_m else None,
            )
    mine = dist.shard_indices(len(vs.names))
    bar = progress_bar(len(mine), "gram", progress and dist.is_main())
    for i in mine:
        name = vs.names[i]
        st = out[layer_key(name)]
        for b in vs.blocks(name, chunk_elems):
            st.gram += b.X.T @ b.X
            if random_m:
                R = random_rows(seed, name, random_m, b.e0, b.e1).double()  # (n, M)
                assert st.rr is not None and st.rx is not None
                st.rr += R.T @ R
                st.rx += R.T @ b.X
                del R
            del b
        bar.update(1)
    bar.close()
    keys = sort_groups(list(out))
    if dist.world()[1] > 1:
        _all_reduce_stats([out[k] for k in keys])
    return {k: out[k] for k in keys}


def _all_reduce_stats(stats: Sequence[GroupStats]) -> None:
    """Sum the statistics over ranks in place, with one all-reduce of a flat float64 buffer."""
    from taskvec import dist

    parts = [t for s in stats for t in (s.gram, s.rr, s.rx) if t is not None]
    flat = dist.all_reduce_sum(torch.cat([t.reshape(-1) for t in parts]))  # float64
    offset = 0
    for t in parts:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def merge_stats(stats: Sequence[GroupStats]) -> GroupStats:
    """The statistics of a union of groups (sums)."""
    gram = sum((s.gram for s in stats[1:]), stats[0].gram.clone())
    rr = rx = None
    if stats[0].rr is not None:
        rr = sum((s.rr for s in stats[1:]), stats[0].rr.clone())  # type: ignore[misc]
        rx = sum((s.rx for s in stats[1:]), stats[0].rx.clone())  # type: ignore[misc]
    return GroupStats(gram=gram, rr=rr, rx=rx)


def streaming_gram(
    vectors: Sequence[VectorLike], chunk_elems: int = DEFAULT_CHUNK_ELEMS, progress: bool = False
) -> torch.Tensor:
    """``G = V^T V`` (T x T, float64) of task vector files or objects, read tensor by tensor."""
    with VectorSet(vectors) as vs:
        stats = gather_stats(vs, chunk_elems=chunk_elems, progress=progress)
    return merge_stats(list(stats.values())).gram
