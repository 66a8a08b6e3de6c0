"""What activation-space vector files share: safetensors plus string metadata, read and written whole.

Used by :mod:`taskvec.activations.files` (function / residual vectors, head means) and
:mod:`taskvec.activations.soft_files` (soft task vectors); each keeps its own kinds, tensors and
messages. Numbers in the metadata are stored as strings and parsed back on load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskvec import __version__
from taskvec.activations.hooks import Positions, positions_from_str, positions_to_str
from taskvec.errors import (
    FileFormatError,
    FingerprintMismatchError,
    MissingFileError,
    UserInputError,
)
from taskvec.io_utils import atomic_path
from taskvec.weights.io import (
    check_format_version,
    decode_metadata,
    encode_metadata,
    read_safetensors_header,
)

__all__ = [
    "check_fingerprint",
    "check_safetensors_suffix",
    "open_metadata",
    "parse_metadata",
    "read_tensors",
    "write_file",
]


def check_fingerprint(model: nn.Module, metadata: Mapping[str, Any], made: str, force: bool) -> None:
    """Unless ``force``, refuse a model whose fingerprint is not the one ``metadata`` records.

    ``made`` starts the message, e.g. ``"this function_vector was extracted from"``.
    """
    want = metadata.get("model_fingerprint")
    if want and not force:
        from taskvec.models.fingerprint import fingerprint

        have = fingerprint(model)
        if have != want:
            raise FingerprintMismatchError(
                f"{made} {metadata.get('model', '?')} "
                f"(fingerprint {want}) but the given model has fingerprint {have}: use the "
                "matching model, or pass --force."
            )


def check_safetensors_suffix(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; ``UserInputError`` unless it ends in ``.safetensors``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"{what} are saved as .safetensors, got {path.name!r}.")
    return path


def write_file(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    fields: Mapping[str, Any],
    number_keys: Sequence[str],
) -> Path:
    """Write ``tensors`` (as float32, CPU) and ``metadata | fields`` atomically as safetensors.

    ``positions`` is written as text; ``taskvec_version`` and ``created`` (unless the metadata
    has one) are added after ``fields``; values of ``number_keys`` are written as strings.
    """
    from safetensors.torch import save_file

    meta = dict(metadata)
    if isinstance(meta.get("positions"), Positions):
        meta["positions"] = positions_to_str(meta["positions"])
    meta |= dict(fields) | {
        "taskvec_version": __version__,
        "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for k in number_keys:
        if k in meta and meta[k] is not None:
            meta[k] = str(meta[k])
    data = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=encode_metadata(meta))
    return path


def open_metadata(path: str | os.PathLike, what: str) -> tuple[Path, dict[str, Any], Any]:
    """Check that ``path`` is a safetensors file; its path, decoded metadata and ``taskvec_kind``.

    ``what`` names the file in messages (``"activation vector"``); the kind is popped from the
    metadata. Raises ``MissingFileError``, ``UserInputError`` (a directory) or ``FileFormatError``.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} file {path} does not exist.")
    if path.is_dir():
        raise UserInputError(f"{path} is a directory: pass a .safetensors {what} file.")
    header = read_safetensors_header(path)
    meta = decode_metadata(header.get("__metadata__"))
    return path, meta, meta.pop("taskvec_kind", None)


def parse_metadata(
    path: Path, meta: dict[str, Any], format_version: str, int_keys: Sequence[str], float_keys: Sequence[str]
) -> None:
    """Check the format version, parse numbers (in place) and the positions."""
    check_format_version(path, meta, format_version)
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
    """Every tensor of a safetensors file, on the CPU."""
    from safetensors import SafetensorError, safe_open

    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except SafetensorError as exc:
        raise FileFormatError(f"{path} is corrupted ({exc}): re-create it.") from None
    return tensors
