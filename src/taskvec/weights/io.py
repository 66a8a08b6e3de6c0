"""Task vector files by suffix: ``.safetensors`` (taskvec's format, :mod:`taskvec.weights.vector_file`)
or ``.pth`` for interop.

``.pth`` files hold a plain ``{name: delta}`` dict (or ``{"state_dict": {...}}``), read only
with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import FileFormatError, MissingFileError, UnsafeFileError, UserInputError
from taskvec.io_utils import atomic_path
from taskvec.weights.vector import TaskVector
from taskvec.weights.vector_file import check_vector_path, read_vector_file, write_vector_file

__all__ = ["PTH_SUFFIXES", "load_pth", "load_vector", "save_pth", "save_vector"]

#: suffixes read as ``.pth`` state dicts
PTH_SUFFIXES = (".pth", ".pt", ".bin")


def save_vector(vector: TaskVector, path: str | os.PathLike) -> Path:
    """Write ``vector`` atomically: ``.safetensors`` (default) or ``.pth`` (dense state dict)."""
    path = Path(path)
    if path.suffix in (".pth", ".pt"):
        vector.check_finite()
        return save_pth(vector, path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"unknown vector file type {path.suffix!r}: use .safetensors or .pth.")
    return write_vector_file(vector, path)


def load_vector(path: str | os.PathLike) -> TaskVector:
    """Load a task vector file (``.safetensors`` with taskvec metadata, or ``.pth``)."""
    path = Path(path)
    check_vector_path(
        path, "pass a vector file (for a PEFT adapter directory use `taskvec extract --finetuned DIR`)."
    )
    if path.suffix in PTH_SUFFIXES:
        return load_pth(path)
    return read_vector_file(path)


def save_pth(vector: TaskVector, path: str | os.PathLike) -> Path:
    """Export a plain dense ``{name: delta}`` state dict (for notebook workflows)."""
    path = Path(path)
    sd = {k: v.contiguous() for k, v in vector.to_dense().items()}
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)
    return path


def load_pth(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> TaskVector:
    """Import a ``{name: delta}`` state dict; refuses pickles that would run code."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"file {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "global" in msg.lower() or "Weights only load failed" in msg:
            raise UnsafeFileError(
                f"{path} holds pickled objects that could run code; refused (nothing was executed). "
                "Export plain tensors ({name: tensor}) instead."
            ) from None
        raise FileFormatError(f"{path} is not a readable .pth state dict (bad pickle data): re-create it.") from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on garbage input
        raise FileFormatError(f"{path} is not a readable .pth state dict ({type(exc).__name__}): re-create it.") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise FileFormatError(f"{path} is not a {{name: tensor}} state dict of deltas.")
    tv = TaskVector({k: v for k, v in obj.items()}, dict(metadata or {}) | {"storage": "dense", "source": str(path)})
    tv.check_finite()
    return tv
