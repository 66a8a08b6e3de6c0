"""Inputs of a merge: a task vector in memory or a vector file read one tensor at a time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import NonFiniteError, UserInputError
from taskvec.weights.lowrank import Delta, LowRankDelta
from taskvec.weights.vector import TaskVector


class VectorSource:
    """Names, shapes, forms and per-tensor deltas of one input vector.

    ``names`` keeps the vector's own order (file order for files); ``rank(name)`` is the
    low-rank rank or None for a dense delta; ``get(name)`` returns the delta, read now for
    files (only that tensor's bytes). ``label`` names the input in messages and metadata.
    """

    label: str
    metadata: dict[str, Any]
    names: list[str]
    shapes: dict[str, tuple[int, ...]]

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def rank(self, name: str) -> int | None:
        raise NotImplementedError

    def get(self, name: str) -> Delta:
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (no-op in memory)."""


class MemorySource(VectorSource):
    """A ``TaskVector`` already in memory."""

    def __init__(self, vector: TaskVector, label: str | None = None) -> None:
        self.vector = vector
        self.label = label or str(vector.metadata.get("task") or "vector")
        self.metadata = dict(vector.metadata)
        self.names = list(vector.names)
        self.shapes = {k: tuple(int(s) for s in d.shape) for k, d in vector.items()}

    def rank(self, name: str) -> int | None:
        d = self.vector[name]
        return d.rank if isinstance(d, LowRankDelta) else None

    def get(self, name: str) -> Delta:
        return self.vector[name]


class FileSource(VectorSource):
    """A taskvec ``.safetensors`` vector file, read lazily with positional reads (no mmap)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from taskvec.weights.vector_file import VectorFile

        self.path = Path(path)
        self.label = str(path)
        self._file = VectorFile(self.path)  # validates the header against the file size
        self.names = self._file.names
        self.shapes = self._file.shapes
        self.metadata = self._file.metadata

    def rank(self, name: str) -> int | None:
        return self._file.rank(name)

    def get(self, name: str) -> Delta:
        return self._file.delta(name)

    def close(self) -> None:
        self._file.close()


def open_source(path: str | os.PathLike) -> VectorSource:
    """A lazy source for ``.safetensors`` files; ``.pth`` files are loaded whole (no lazy form).

    ``BASIS#TASK`` (one task of a basis file) is recovered from the basis in memory, as one
    dense vector; a basis file without ``#TASK`` is refused (expand it with
    :func:`expand_basis_paths`).
    """
    from taskvec.weights.io import check_vector_path, load_vector

    p = Path(path)
    if not p.exists() and "#" in str(path) or _is_basis(p):
        from taskvec.basis import load_basis_or_vector

        got = load_basis_or_vector(path)
        if len(got) != 1:
            raise UserInputError(f"{path} is a basis of {len(got)} tasks: pick one with {path}#TASK.")
        return MemorySource(got[0], label=str(path))
    check_vector_path(p, "merge takes task vector files; make one with `taskvec extract`.")
    if p.suffix == ".safetensors":
        return FileSource(p)

    return MemorySource(load_vector(p), label=str(p))


def check_finite(t: torch.Tensor | LowRankDelta, name: str, where: str) -> None:
    """Raise ``NonFiniteError`` if a delta (or its factors) holds NaN or Inf."""
    parts = (t.A, t.B) if isinstance(t, LowRankDelta) else (t,)
    for x in parts:
        if x.numel() and not bool(torch.isfinite(x.float().sum())) and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f'tensor "{name}" of {where} contains NaN or Inf: refusing to merge it.')


def _is_basis(p: Path) -> bool:
    from taskvec.basis import is_basis_file

    return p.suffix == ".safetensors" and p.is_file() and is_basis_file(p)


def expand_basis_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Each bare basis file becomes ``BASIS#TASK`` for every task it holds; other paths stay."""
    from taskvec.basis import Basis

    out: list[str] = []
    for path in paths:
        p = Path(path)
        if _is_basis(p):
            with Basis.load(p) as basis:
                out.extend(f"{path}#{t}" for t in basis.tasks)
        else:
            out.append(str(path))
    return out
