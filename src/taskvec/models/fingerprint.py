"""Cheap, stable identity of a model's weights.

``fingerprint`` hashes tensor names, shapes, dtypes and a fixed sample of values, so a task
vector can record the base model it was made for and refuse a different one. It reads a
safetensors directory lazily (headers plus a few rows), never the whole model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskvec.errors import FingerprintMismatchError, MissingFileError, UserInputError
from taskvec.formats import DTYPE_FROM_ST, SafetensorsReader, model_safetensors_files, open_tensors

__all__ = ["check_fingerprint", "fingerprint", "fingerprint_tensors", "recorded_fingerprint", "sample_indices"]

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


def reader_entries(readers: Mapping[str, SafetensorsReader]) -> Iterator[tuple[str, _Entry]]:
    """Entries of tensors in safetensors files (name -> its reader), reading only sampled rows."""
    for name, r in readers.items():
        spec = r.specs[name]

        def fetch(idx: list[int], r: SafetensorsReader = r, name: str = name) -> torch.Tensor:
            return r.get_elements(name, idx)  # only the sampled elements (memory-mapped)

        yield name, (spec.shape, DTYPE_FROM_ST[spec.dtype], fetch)


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


def fingerprint_tensors(readers: Mapping[str, SafetensorsReader]) -> str:
    """:func:`fingerprint` of tensors held in safetensors files (name -> the reader holding it),
    e.g. from :func:`taskvec.formats.open_tensors`; positional reads of the sampled rows only."""
    return _digest(reader_entries(readers))


def fingerprint(obj: nn.Module | Mapping[str, torch.Tensor] | str | PathLike) -> str:
    """16-hex-char sha256 of a model's weights: names, shapes, dtypes and sampled values.

    ``obj`` is a model (its ``state_dict()``), a state dict (name -> tensor), or a path to a
    Hugging Face model directory / ``.safetensors`` file (headers, then only the sampled rows,
    with positional reads).
    Per tensor, the first 16 and 64 evenly spaced elements are hashed as float32.

    Tied weights: the fingerprint covers the unique *stored* tensors. An output head
    (``*lm_head.weight``, ``*embed_out.weight``) whose shape, dtype and sampled values equal
    those of an input embedding (``*embed_tokens.weight``, ``*wte.weight``, ...) is skipped,
    since ``save_pretrained`` does not store tied heads. The rule depends only on the tensors,
    so a model, its state dict and its saved directory all give the same fingerprint.
    """
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
        readers, _ = open_tensors(model_safetensors_files(path))
        try:
            return fingerprint_tensors(readers)
        finally:
            for r in set(readers.values()):
                r.close()
    raise UserInputError(
        f"cannot fingerprint a {type(obj).__name__}; give a model, a state dict or a directory."
    )


#: metadata keys that record the model a file was made from (weight vectors and bases use the
#: first, activation files the second)
FINGERPRINT_KEYS = ("base_fingerprint", "model_fingerprint")


def recorded_fingerprint(metadata: Mapping[str, Any]) -> str | None:
    """The model fingerprint a file's metadata records (under either key), or None."""
    return next((str(metadata[k]) for k in FINGERPRINT_KEYS if metadata.get(k)), None)


def check_fingerprint(
    have: str | Callable[[], str] | nn.Module | PathLike,
    metadata: Mapping[str, Any],
    made: str = "this vector was made on",
    force: bool = False,
) -> bool:
    """Refuse, unless ``force``, a model whose fingerprint is not the one ``metadata`` records.

    ``have``: the model's fingerprint (a ``str``), a function computing it (called only when
    needed), or a model / directory path (``os.PathLike``) to fingerprint. ``made`` starts the message. Returns whether a check ran.
    """
    want = recorded_fingerprint(metadata)
    if not want or force:
        return False
    if isinstance(have, (nn.Module, PathLike)):
        have = fingerprint(have)
    elif callable(have):
        have = have()
    if have != want:
        name = metadata.get("base_model") or metadata.get("model") or "?"
        raise FingerprintMismatchError(
            f"{made} {name} (fingerprint {want}) but the given model has fingerprint {have}: "
            "use the matching model, or pass --force."
        )
    return True
