"""Data parallelism under ``torchrun`` (gloo on CPU, nccl on GPUs), a no-op otherwise.

Work is sharded by example index (``i % world == rank``) and results are gathered on every rank,
so a distributed run computes exactly what a single process computes, only faster.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); initializes the process group on first use under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("TASKVEC_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
        # shut the group down before the interpreter does: a rank that finishes early (e.g. the
        # non-writing ranks of a basis build) otherwise exits with gloo's threads still running,
        # which aborts it ("terminate called without an active exception")
        atexit.register(_shutdown)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def _shutdown() -> None:
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass


def finish() -> None:
    """End of a command under torchrun: wait for every rank (rank 0 may still be writing), then
    shut the process group down, so no rank exits with gloo's threads still running. A no-op in
    a single process or when the group was never started."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        _shutdown()


def leave(code: int) -> None:
    """End a torchrun rank now, with ``code``, after :func:`finish` (a no-op in a single process).

    ``destroy_process_group`` does not always join every gloo thread: a rank could still abort
    in the interpreter's teardown ("terminate called without an active exception", exit 134)
    after writing correct output. Every file is written (temp file + rename) and every rank has
    passed the barrier by now, so the rank flushes its streams and skips that teardown.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more to write
            pass
    os._exit(code)


def is_main() -> bool:
    """True on rank 0 (and in a single process): only it prints and writes files."""
    return world()[0] == 0


def shard_indices(n: int) -> list[int]:
    """The example indices this rank handles."""
    rank, size = world()
    return list(range(rank, n, size))


def gather_by_index(n: int, local: dict[int, T]) -> list[T]:
    """Combine {index: value} dicts from all ranks into one list of length n (on every rank)."""
    rank, size = world()
    if size == 1:
        return [local[i] for i in range(n)]
    import torch.distributed as dist

    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, local)
    merged: dict[int, T] = {}
    for p in parts:
        merged.update(p)
    return [merged[i] for i in range(n)]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity in a single process)."""
    _, size = world()
    if size == 1:
        return t
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = t.to(dev).clone()
    dist.all_reduce(out)
    return out.to(t.device)


def select(items: Sequence[T], indices: Sequence[int]) -> list[T]:
    return [items[i] for i in indices]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    _, size = world()
    if size > 1:
        import torch.distributed as dist

        dist.barrier()


def all_equal(value: Any) -> bool:
    """True when ``value`` (picklable, small) is the same on every rank."""
    _, size = world()
    if size == 1:
        return True
    import torch.distributed as dist

    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, value)
    return all(p == parts[0] for p in parts)


def device_ids(device: torch.device) -> list[int] | None:
    """``device_ids`` for DistributedDataParallel: the local GPU, or None on CPU."""
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
