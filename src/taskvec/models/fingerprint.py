"""Cheap, stable identity of a model's weights.

``fingerprint`` hashes tensor names, shapes, dtypes and a fixed sample of values, so a task
vector can record the base model it was made for and refuse a different one. It reads a
safetensors directory lazily (headers plus a few rows), never the whole model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskvec.errors import FileFormatError, MissingFileError, UserInputError

__all__ = ["fingerprint", "sample_indices"]

N_FIRST = 16  # leading elements sampled per tensor
N_STRIDED = 64  # evenly spaced elements sampled per tensor
DIGEST_CHARS = 16

# Output-head names that are dropped when they duplicate an input embedding (tied weights).
_HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")

# name -> (shape, dtype, fetch(flat_indices) -> values)
_Entry = tuple[tuple[int, ...], torch.dtype, Callable[[list[int]], torch.Tensor]]


def sample_indices(numel: int) -> list[int]:
    """Flat indices sampled from a tensor of ``numel`` elements: the first 16, then 64 strided."""
    first = list(range(min(N_FIRST, numel)))
    if numel <= N_STRIDED:
        strided = list(range(numel))
    else:
        strided = [k * numel // N_STRIDED for k in range(N_STRIDED)]
    return first + strided


def _tensor_entries(state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, _Entry]]:
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise UserInputError(
                f"state dict value {name!r} is a {type(t).__name__}, not a tensor."
            )
        if t.is_meta:
            raise UserInputError(f"tensor {name!r} is on the meta device; load its weights first.")

        def fetch(idx: list[int], t: torch.Tensor = t) -> torch.Tensor:
            flat = t.detach().reshape(-1)
            return flat[torch.tensor(idx, dtype=torch.long, device=flat.device)].cpu()

        yield name, (tuple(t.shape), t.dtype, fetch)


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise FileFormatError(f"{index} is not a valid safetensors index ({e}).") from None
        return [path / f for f in sorted(set(weight_map.values()))]
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise FileFormatError(f"no .safetensors files in {path}; save the model with safetensors.")
    return files


def _dir_entries(path: Path, stack: Any) -> Iterator[tuple[str, _Entry]]:
    from safetensors import safe_open

    from taskvec.weights.safetensors_stream import DTYPE_FROM_ST

    for file in _safetensors_files(path):
        try:
            f = stack.enter_context(safe_open(str(file), framework="pt"))
        except Exception as e:  # safetensors raises its own error types
            raise FileFormatError(f"cannot read {file} as safetensors: {e}") from None
        for name in f.keys():
            sl = f.get_slice(name)
            shape = tuple(int(s) for s in sl.get_shape())
            dtype = DTYPE_FROM_ST.get(sl.get_dtype())
            if dtype is None:
                raise FileFormatError(
                    f"tensor {name!r} in {file} has unsupported dtype {sl.get_dtype()}."
                )

            def fetch(
                idx: list[int],
                f: Any = f,
                sl: Any = sl,
                name: str = name,
                shape: tuple[int, ...] = shape,
            ) -> torch.Tensor:
                if len(shape) <= 1:
                    return f.get_tensor(name).reshape(-1)[idx]
                row = 1
                for s in shape[1:]:
                    row *= s
                rows: dict[int, torch.Tensor] = {}
                out = []
                for k in idx:  # read only the rows holding sampled elements
                    r = k // row
                    if r not in rows:
                        rows[r] = sl[r : r + 1].reshape(-1)
                    out.append(rows[r][k % row])
                return torch.stack(out)

            yield name, (shape, dtype, fetch)


def _record(shape: tuple[int, ...], dtype: torch.dtype, fetch: Callable) -> bytes:
    numel = 1
    for s in shape:
        numel *= s
    idx = sample_indices(numel)
    values = fetch(idx) if idx else torch.zeros(0)
    values = values.to(torch.float32).contiguous().numpy().astype("<f4")
    head = f"{list(shape)}|{str(dtype).removeprefix('torch.')}|".encode()
    return head + values.tobytes()


def _digest(entries: Iterator[tuple[str, _Entry]]) -> str:
    records = {name: _record(*entry) for name, entry in entries}
    embeds = {rec for name, rec in records.items() if name.endswith(_EMBED_SUFFIXES)}
    h = hashlib.sha256()
    for name in sorted(records):
        rec = records[name]
        if name.endswith(_HEAD_SUFFIXES) and rec in embeds:
            continue  # tied alias of the input embedding: not stored on disk
        h.update(name.encode() + b"\0" + rec + b"\0")
    return h.hexdigest()[:DIGEST_CHARS]


def fingerprint(obj: nn.Module | Mapping[str, torch.Tensor] | str | PathLike) -> str:
    """16-hex-char sha256 of a model's weights: names, shapes, dtypes and sampled values.

    ``obj`` is a model (its ``state_dict()``), a state dict (name -> tensor), or a path to a
    Hugging Face model directory / ``.safetensors`` file (read lazily with ``safe_open``).
    Per tensor, the first 16 and 64 evenly spaced elements are hashed as float32.

    Tied weights: the fingerprint covers the unique *stored* tensors. An output head
    (``*lm_head.weight``, ``*embed_out.weight``) whose shape, dtype and sampled values equal
    those of an input embedding (``*embed_tokens.weight``, ``*wte.weight``, ...) is skipped,
    since ``save_pretrained`` does not store tied heads. The rule depends only on the tensors,
    so a model, its state dict and its saved directory all give the same fingerprint.
    """
    from contextlib import ExitStack

    if isinstance(obj, nn.Module):
        return _digest(_tensor_entries(obj.state_dict()))
    if isinstance(obj, Mapping):
        return _digest(_tensor_entries(obj))
    if isinstance(obj, (str, PathLike)):
        path = Path(obj)
        if not path.exists():
            raise MissingFileError(
                f"{path} does not exist; give a model directory or .safetensors file."
            )
        with ExitStack() as stack:
            return _digest(_dir_entries(path, stack))
    raise UserInputError(
        f"cannot fingerprint a {type(obj).__name__}; give a model, a state dict or a directory."
    )
