"""Task vector files: safetensors with provenance metadata, and ``.pth`` for interop.

safetensors layout: ``dense::<name>``, ``lora_A::<name>``, ``lora_B::<name>`` tensors; the
metadata (strings) holds ``taskvec_kind``, ``format_version``, ``storage``, ``scales`` (JSON),
``base_model``, ``base_fingerprint``, ``task``, ``recipe`` (JSON), ``taskvec_version``,
``created``. ``.pth`` files hold a plain ``{name: delta}`` dict, read only with
``torch.load(weights_only=True)``: a pickle that would run code is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from taskvec import __version__
from taskvec.errors import FileFormatError, MissingFileError, UnsafeFileError, UserInputError
from taskvec.io_utils import atomic_path
from taskvec.weights.lowrank import LowRankDelta
from taskvec.weights.vector import TaskVector

FORMAT_VERSION = "1"
KIND = "task_vector"
_JSON_KEYS = ("recipe", "scales", "extra")


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata is str -> str: JSON-encode non-strings."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


def decode_metadata(meta: Mapping[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        if k in _JSON_KEYS or (v[:1] in "{[" and v[-1:] in "}]"):
            try:
                out[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def check_format_version(path: Any, meta: Mapping[str, Any], expected: str = FORMAT_VERSION) -> None:
    """Refuse a taskvec file written in another format version (one-line FileFormatError)."""
    if str(meta.get("format_version")) != expected:
        raise FileFormatError(
            f"{path} has format version {meta.get('format_version')}, this taskvec reads {expected}: "
            "upgrade taskvec."
        )


def read_vector_metadata(path: Any, raw: Mapping[str, str] | None) -> dict[str, Any]:
    """Decode a vector file's safetensors metadata; refuse other kinds and format versions."""
    meta = decode_metadata(raw)
    kind = meta.get("taskvec_kind")
    if kind != KIND:
        what = f'a taskvec "{kind}" file' if kind else "not a taskvec task vector"
        raise FileFormatError(f"{path} is {what}: pass a file written by `taskvec extract` or TaskVector.save.")
    check_format_version(path, meta, FORMAT_VERSION)
    return meta


def check_vector_path(path: Path, dir_hint: str) -> None:
    """``MissingFileError`` for a missing vector file, ``UserInputError`` (with ``dir_hint``) for a directory."""
    if not path.exists():
        raise MissingFileError(f"vector file {path} does not exist.")
    if path.is_dir():
        raise UserInputError(f"{path} is a directory: {dir_hint}")


def split_vector_key(path: Any, key: str) -> tuple[str, str]:
    """``"lora_A::<name>"`` -> ``("lora_A", "<name>")``; refuse keys a vector file cannot hold."""
    prefix, _, name = key.partition("::")
    if prefix not in ("dense", "lora_A", "lora_B") or not name:
        raise FileFormatError(f'{path} has an unexpected tensor "{key}": not a taskvec vector file.')
    return prefix, name


def save_vector(vector: TaskVector, path: str | os.PathLike) -> Path:
    """Write ``vector`` atomically: ``.safetensors`` (default) or ``.pth`` (dense state dict)."""
    vector.check_finite()
    path = Path(path)
    if path.suffix == ".pth" or path.suffix == ".pt":
        return save_pth(vector, path)
    if path.suffix != ".safetensors":
        raise UserInputError(f"unknown vector file type {path.suffix!r}: use .safetensors or .pth.")
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    for name, d in vector.items():
        if isinstance(d, LowRankDelta):
            tensors[f"lora_A::{name}"] = d.A.contiguous()
            tensors[f"lora_B::{name}"] = d.B.contiguous()
            scales[name] = float(d.scale)
        else:
            tensors[f"dense::{name}"] = d.contiguous()
    meta = dict(vector.metadata) | {
        "taskvec_kind": KIND,
        "format_version": FORMAT_VERSION,
        "storage": vector.form,
        "scales": scales,
        "taskvec_version": __version__,
        "created": vector.metadata.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=encode_metadata(meta))
    return path


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without reading tensor data."""
    size = path.stat().st_size
    if size < 8:
        raise FileFormatError(f"{path} is empty or truncated ({size} bytes): not a safetensors file.")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > min(size - 8, 100 * 1024 * 1024):
            raise FileFormatError(
                f"{path} has an invalid header length ({n} bytes for a {size}-byte file): "
                "the file is truncated or not a safetensors file."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path} has a corrupted header ({type(exc).__name__}): re-create or re-download it.") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path} has a corrupted header (not a JSON object).")
    data_len = size - 8 - n
    for k, v in header.items():
        if k == "__metadata__":
            if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                raise FileFormatError(f"{path} has malformed metadata: re-create the file.")
            continue
        offs = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and 0 <= offs[0] <= offs[1] <= data_len):
            raise FileFormatError(
                f'{path}: tensor "{k}" points past the end of the file: the file is truncated; '
                "re-create or re-download it."
            )
    return header


def load_vector(path: str | os.PathLike, device: str = "cpu") -> TaskVector:
    """Load a task vector file (``.safetensors`` with taskvec metadata, or ``.pth``)."""
    path = Path(path)
    check_vector_path(
        path, "pass a vector file (for a PEFT adapter directory use `taskvec extract --finetuned DIR`)."
    )
    if path.suffix in (".pth", ".pt", ".bin"):
        return load_pth(path)
    meta = read_vector_metadata(path, read_safetensors_header(path).get("__metadata__"))
    from safetensors import SafetensorError, safe_open

    scales = meta.pop("scales", {}) or {}
    if not isinstance(scales, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in scales.values()
    ):
        raise FileFormatError(f"{path} has malformed low-rank scales in its metadata: the file is corrupted.")
    dense: dict[str, torch.Tensor] = {}
    fa: dict[str, torch.Tensor] = {}
    fb: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device=device) as fh:
            for key in fh.keys():
                prefix, name = split_vector_key(path, key)
                target = {"dense": dense, "lora_A": fa, "lora_B": fb}[prefix]
                t = fh.get_tensor(key)
                if not t.is_floating_point():
                    raise FileFormatError(
                        f'{path}: tensor "{key}" has dtype {t.dtype}; task vectors hold floating-point deltas.'
                    )
                target[name] = t
    except SafetensorError as exc:
        raise FileFormatError(f"{path} is corrupted ({exc}): re-create or re-download it.") from None
    if set(fa) != set(fb):
        raise FileFormatError(f"{path} has unpaired low-rank factors: the file is corrupted.")
    both = sorted(set(dense) & set(fa))
    if both:
        raise FileFormatError(f'{path} stores "{both[0]}" both dense and low-rank: the file is corrupted.')
    deltas: dict[str, Any] = dict(dense)
    for name in fa:
        if name not in scales:
            raise FileFormatError(f'{path} has no scale for low-rank tensor "{name}": the file is corrupted.')
        deltas[name] = LowRankDelta(fa[name], fb[name], float(scales[name]))
    tv = TaskVector(deltas, meta)
    tv.check_finite()
    return tv


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
