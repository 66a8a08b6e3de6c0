"""What activation-space vector files share on top of :mod:`taskvec.formats`.

Used by :mod:`taskvec.activations.activation_vector` (function / residual vectors, head means) and
:mod:`taskvec.activations.soft_vector` (soft task vectors). Tensors are stored as float32;
numbers in the metadata are stored as strings and parsed back on load; ``positions`` as text.
The envelope (kind, format version, release, date) and the kind checks are the formats layer's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.activations.hooks import Positions, positions_from_str, positions_to_str
from taskvec.errors import FileFormatError, UserInputError
from taskvec.formats import encode_metadata, envelope, read_envelope
from taskvec.formats import read_tensors as _read_all
from taskvec.formats import write_file as _write_all

__all__ = [
    "check_safetensors_suffix",
    "open_metadata",
    "parse_metadata",
    "read_tensors",
    "write_file",
]


def check_safetensors_suffix(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; ``UserInputError`` unless it ends in ``.safetensors``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"{what} are saved as .safetensors, got {path.name!r}.")
    return path


def write_file(
    path: Path,
    kind: str,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    number_keys: Sequence[str],
) -> Path:
    """Write ``tensors`` (as float32, CPU) and ``metadata`` in a ``kind`` envelope, atomically.

    ``positions`` is written as text; values of ``number_keys`` are written as strings.
    """
    meta = dict(metadata)
    if isinstance(meta.get("positions"), Positions):
        meta["positions"] = positions_to_str(meta["positions"])
    meta = envelope(kind, meta)
    for k in number_keys:
        if k in meta and meta[k] is not None:
            meta[k] = str(meta[k])
    data = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    return _write_all(path, data, encode_metadata(meta))


def open_metadata(path: str | os.PathLike, wanted: str | tuple[str, ...], what: str) -> tuple[Path, dict[str, Any], str]:
    """Check a file's envelope (exists, safetensors, a ``wanted`` kind, this format version):
    its path, decoded metadata (kind popped) and kind. ``what`` names the file in messages."""
    return read_envelope(path, wanted, what)


def parse_metadata(path: Path, meta: dict[str, Any], int_keys: Sequence[str], float_keys: Sequence[str]) -> None:
    """Parse numbers (in place) and check the positions."""
    try:
        for k in int_keys:
            if k in meta:
                meta[k] = int(meta[k])
        for k in float_keys:
            if k in meta:
                meta[k] = float(meta[k])
        if "positions" in meta:
            positions_from_str(str(meta["positions"]))
    except (ValueError, TypeError, LookupError):
        raise FileFormatError(f"{path} has malformed metadata: re-create the file.") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file, on the CPU."""
    return _read_all(path)
