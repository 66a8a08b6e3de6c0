"""One tensor-by-tensor view of a task vector, in memory or read lazily from its file.

Streaming apply, merging and the basis Gram pass all read their inputs through a
:class:`VectorSource`: ``names`` (the vector's own order; file order for files), ``shapes``,
``metadata``, ``rank(name)`` (None for a dense delta), ``get(name)`` and ``get_rows(name, a,
b)`` (only those bytes, for files). :func:`common_shapes` reconciles the names and shapes of T
inputs in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import NonFiniteError, ShapeMismatchError
from taskvec.formats import file_kind, wrong_kind
from taskvec.weights.lowrank import Delta, LowRankDelta
from taskvec.weights.vector import TaskVector
from taskvec.weights.vector_file import KIND, VectorFile, check_vector_path

__all__ = ["FileSource", "MemorySource", "VectorSource", "check_finite", "common_shapes", "open_source"]


class VectorSource:
    """Names, shapes, forms and per-tensor deltas of one vector (see the module docstring).

    ``label`` names it in messages and metadata; ``path`` is its file, if any; ``lazy``: deltas
    are read from the file on demand (fresh tensors the caller may modify).
    """

    label: str
    metadata: dict[str, Any]
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    path: Path | None = None
    lazy: bool = False

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def rank(self, name: str) -> int | None:
        raise NotImplementedError

    def get(self, name: str) -> Delta:
        raise NotImplementedError

    def get_rows(self, name: str, start: int, stop: int) -> Delta:
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (no-op in memory)."""

    def __enter__(self) -> VectorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemorySource(VectorSource):
    """A ``TaskVector`` already in memory (``path``: the file it came from, if any)."""

    def __init__(self, vector: TaskVector, label: str | None = None, path: Path | None = None) -> None:
        self.vector = vector
        self.path = path
        self.label = label or (str(path) if path else str(vector.metadata.get("task") or "vector"))
        self.metadata = dict(vector.metadata)
        self.names = list(vector.names)
        self.shapes = {k: tuple(int(s) for s in d.shape) for k, d in vector.items()}

    def rank(self, name: str) -> int | None:
        d = self.vector[name]
        return d.rank if isinstance(d, LowRankDelta) else None

    def get(self, name: str) -> Delta:
        return self.vector[name]

    def get_rows(self, name: str, start: int, stop: int) -> Delta:
        d = self.vector[name]
        if isinstance(d, LowRankDelta):
            return LowRankDelta(d.A, d.B[start:stop], d.scale)
        return d[start:stop]


class FileSource(VectorSource):
    """A taskvec ``.safetensors`` vector file, read lazily with positional reads (no mmap)."""

    lazy = True

    def __init__(self, path: str | os.PathLike, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        self._file = VectorFile(self.path)  # every check of the format, before any data
        self.names = self._file.names
        self.shapes = self._file.shapes
        self.metadata = self._file.metadata

    def rank(self, name: str) -> int | None:
        return self._file.rank(name)

    def get(self, name: str) -> Delta:
        return self._file.delta(name)

    def get_rows(self, name: str, start: int, stop: int) -> Delta:
        return self._file.delta_rows(name, start, stop)

    def close(self) -> None:
        self._file.close()


def open_source(vector: TaskVector | VectorSource | str | os.PathLike, label: str | None = None) -> VectorSource:
    """A source for a ``TaskVector``, a source (returned as is) or a vector file: ``.safetensors``
    files are read lazily (headers only up front), ``.pth`` files are loaded whole.

    Another kind of taskvec file (a basis, an activation vector) is refused with the command to
    use; a task of a basis is opened by :func:`taskvec.basis.open_source` (``BASIS#TASK``).
    """
    if isinstance(vector, VectorSource):
        return vector
    if isinstance(vector, TaskVector):
        return MemorySource(vector, label)
    from taskvec.weights.io import PTH_SUFFIXES, load_vector

    path = Path(vector)
    check_vector_path(path, "pass a task vector file; make one with `taskvec extract`.")
    if path.suffix in PTH_SUFFIXES:
        return MemorySource(load_vector(path), label, path)
    kind = file_kind(path)
    if kind != KIND and kind is not None:
        raise wrong_kind(path, kind, (KIND,))
    return FileSource(path, label)


def common_shapes(sources: Sequence[VectorSource]) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the inputs (first-seen order) and its shape; ``ShapeMismatchError``
    when two inputs disagree on a shape (vectors of different models)."""
    shapes: dict[str, tuple[int, ...]] = {}
    owner: dict[str, VectorSource] = {}
    for src in sources:
        for name in src.names:
            shape = tuple(int(s) for s in src.shapes[name])
            if name not in shapes:
                shapes[name], owner[name] = shape, src
            elif shapes[name] != shape:
                raise ShapeMismatchError(
                    f'"{name}" is {shapes[name]} in {owner[name].label} but {shape} in {src.label}: '
                    "the vectors were made for different models; use vectors of one base model."
                )
    return shapes


def check_finite(t: torch.Tensor | LowRankDelta, name: str, where: str) -> None:
    """Raise ``NonFiniteError`` if a delta (or its factors) holds NaN or Inf."""
    parts = (t.A, t.B) if isinstance(t, LowRankDelta) else (t,)
    for x in parts:
        if x.numel() and not bool(torch.isfinite(x.float().sum())) and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f'tensor "{name}" of {where} contains NaN or Inf.')
