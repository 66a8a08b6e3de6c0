"""Atomic file and directory writes: a killed process leaves the old file or a complete new one."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from taskvec.errors import UserInputError

#: whether writes end with fsync (off only inside ``durable_writes(False)``, e.g. ``apply --no-fsync``)
_DURABLE: ContextVar[bool] = ContextVar("taskvec_durable_writes", default=True)


def fsync(fd: int) -> None:
    """``os.fsync(fd)``, skipped inside ``durable_writes(False)``."""
    if _DURABLE.get():
        os.fsync(fd)


@contextmanager
def durable_writes(on: bool) -> Iterator[None]:
    """Inside ``durable_writes(False)`` files are renamed into place without ``fsync``: a killed
    process still leaves the old file or a complete new one, but a power loss or OS crash soon
    after may leave an empty or partial file (the kernel writes the bytes back later)."""
    token = _DURABLE.set(on)
    try:
        yield
    finally:
        _DURABLE.reset(token)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Validate an output path before any work: parent exists and is writable, not an input."""
    out = Path(path).expanduser()
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise UserInputError(f"output directory {parent} does not exist: create it first.")
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"cannot write to {parent}: choose another --out.")
    for inp in inputs:
        try:
            if Path(inp).exists() and out.exists() and out.resolve() == Path(inp).resolve():
                raise UserInputError(f"output {out} is also an input: write to a new path.")
        except OSError:
            continue
    return out


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path next to ``path``; on success fsync it and rename onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory next to ``path``; on success rename it onto ``path``.

    With ``overwrite``, an existing ``path`` is replaced only after the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise UserInputError(f"{target} already exists: remove it or pass a new --out.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    fsync(fh.fileno())
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
