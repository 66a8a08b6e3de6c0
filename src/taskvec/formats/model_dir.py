"""The weight files of a Hugging Face model directory (the one place that lists them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from taskvec.errors import FileFormatError, MissingFileError
from taskvec.formats.safetensors import SafetensorsReader, TensorSpec

__all__ = ["INDEX_NAME", "model_safetensors_files", "open_tensors"]

INDEX_NAME = "model.safetensors.index.json"


def model_safetensors_files(path: str | Path) -> list[Path]:
    """The ``.safetensors`` weight files of a model: a file is itself; a directory's come from
    its shard index when it has one, else ``model.safetensors`` or ``model*.safetensors``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"{path} does not exist: give a model directory or .safetensors file.")
    index = path / INDEX_NAME
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FileFormatError(f"{index} is not a valid safetensors index ({exc}): re-save the model.") from None
        files = [path / f for f in names]
        for f in files:
            if not f.is_file():
                raise MissingFileError(f"{index} lists {f.name}, which is missing: re-download or re-save the model.")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise FileFormatError(
            f"{path} has no .safetensors weights: re-save the model with "
            "save_pretrained(..., safe_serialization=True)."
        )
    return files


def open_tensors(files: Sequence[Path]) -> tuple[dict[str, SafetensorsReader], list[TensorSpec]]:
    """name -> the reader holding it, and every tensor's spec in file order (headers only)."""
    where: dict[str, SafetensorsReader] = {}
    specs: list[TensorSpec] = []
    for f in files:
        r = SafetensorsReader(f)
        for k in r.keys():
            if k in where:
                raise FileFormatError(
                    f'tensor "{k}" is stored in both {where[k].path.name} and {f.name}: re-save the model.'
                )
            where[k] = r
            specs.append(r.specs[k])
    return where, specs
