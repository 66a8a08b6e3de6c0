"""Opening vectors that may be tasks of a basis: the one place ``BASIS#TASK`` is understood.

``BASIS#TASK`` names one task of a basis file (recovered as a dense vector); a bare basis file
where vectors are expected stands for all of its tasks. Plain vector files pass through to
:mod:`taskvec.weights` (read lazily where they can be).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from taskvec.basis.basis import KIND, Basis
from taskvec.errors import UserInputError
from taskvec.weights.vector import TaskVector
from taskvec.weights.vector_source import VectorSource

__all__ = ["is_basis_file", "load_basis_or_vector", "load_one_vector", "open_sources"]


def is_basis_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a taskvec basis file (reads the header only)."""
    from taskvec.formats import file_kind

    p = Path(path)
    return p.suffix == ".safetensors" and p.is_file() and file_kind(p) == KIND


def _split_task(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``BASIS#TASK`` -> (basis path, task); any other path -> (path, None)."""
    p = Path(path)
    if not p.exists() and "#" in str(path):
        head, _, tail = str(path).rpartition("#")
        if Path(head).exists():
            return Path(head), tail
    return p, None


def load_basis_or_vector(path: str | os.PathLike, task: str | None = None) -> list[TaskVector]:
    """Task vector(s) from a vector file, or recovered from a basis file (the one opener of
    ``BASIS#TASK``).

    ``PATH#TASK`` (or ``task=``) selects one task of a basis; a basis without a task gives all of
    its tasks, recovered one by one (each a full dense vector). A vector file gives ``[vector]``.
    """
    from taskvec.weights.io import load_vector

    p, selected = _split_task(path)
    task = task or selected
    if is_basis_file(p):
        with Basis.load(p) as basis:
            if task is not None:
                return [basis.recover(task)]
            return [basis.recover(i) for i in range(basis.T)]
    if task is not None:
        raise UserInputError(f"{p} is a task vector file, not a basis: drop the task selector #{task}.")
    return [load_vector(p)]


def load_one_vector(path: str | os.PathLike) -> TaskVector:
    """One task vector: a vector file, or ``BASIS#TASK`` (a basis of several tasks is refused)."""
    got = load_basis_or_vector(path)
    if len(got) != 1:
        raise UserInputError(f"{path} is a basis of {len(got)} tasks: pick one with {path}#TASK.")
    return got[0]


def open_sources(paths: Sequence[str | os.PathLike]) -> list[VectorSource]:
    """Sources for merging or streaming: vector files are read lazily; ``BASIS#TASK`` is that
    task recovered in memory; a bare basis file gives one source per task (``BASIS#TASK``)."""
    from taskvec.weights.vector_source import MemorySource, open_source

    out: list[VectorSource] = []
    try:
        for path in paths:
            p, task = _split_task(path)
            if not is_basis_file(p):
                if task is not None:
                    raise UserInputError(f"{p} is a task vector file, not a basis: drop the task selector #{task}.")
                out.append(open_source(p))
                continue
            with Basis.load(p) as basis:
                tasks = [task] if task is not None else list(basis.tasks)
                out.extend(MemorySource(basis.recover(t), label=f"{p}#{t}", path=p) for t in tasks)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out
