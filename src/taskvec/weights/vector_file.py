"""A taskvec ``.safetensors`` vector file read lazily: the header up front, each delta on demand.

One reader for every place that streams vector files (``stream_apply``, merging, the basis
Gram pass): the header is parsed and checked (``taskvec_kind``, ``format_version``, the
``dense::`` / ``lora_A::`` / ``lora_B::`` keys, factor shapes, low-rank scales) before any
tensor data is read, then :meth:`VectorFile.delta` and :meth:`VectorFile.delta_rows` read
only the bytes asked for, with positional reads (no memory map). The file layout is described
in :mod:`taskvec.weights.io`; ``load_vector`` reads a whole file into a ``TaskVector``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import FileFormatError, NonFiniteError
from taskvec.weights.io import read_vector_metadata, split_vector_key
from taskvec.weights.lowrank import Delta, LowRankDelta
from taskvec.weights.safetensors_stream import SafetensorsReader

__all__ = ["VectorFile"]


class VectorFile:
    """The tensors of one vector file: ``names`` (file order), ``shapes``, ``metadata``.

    Raises ``FileFormatError`` for anything that is not a complete taskvec vector file and
    ``NonFiniteError`` for a non-finite low-rank scale, all while opening it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        reader = SafetensorsReader(self.path)  # validates the header against the file size
        meta = read_vector_metadata(path, reader.metadata)
        scales = meta.pop("scales", {}) or {}
        groups: dict[str, dict[str, str]] = {}
        for key in reader.keys():
            prefix, name = split_vector_key(path, key)
            groups.setdefault(name, {})[prefix] = key
        self._keys: dict[str, tuple[str, ...]] = {}
        self._scales: dict[str, float] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, g in groups.items():
            if "dense" in g:
                if len(g) != 1:
                    raise FileFormatError(f'{path} stores "{name}" both dense and low-rank: the file is corrupted.')
                self._keys[name] = (g["dense"],)
                self.shapes[name] = reader.specs[g["dense"]].shape
                continue
            if set(g) != {"lora_A", "lora_B"}:
                raise FileFormatError(f"{path} has unpaired low-rank factors: the file is corrupted.")
            a, b = reader.specs[g["lora_A"]].shape, reader.specs[g["lora_B"]].shape
            if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
                raise FileFormatError(
                    f'{path}: low-rank factors of "{name}" do not fit (A {a}, B {b}): the file is corrupted.'
                )
            try:
                scale = float(scales[name])
            except (KeyError, TypeError, ValueError):
                raise FileFormatError(f'{path} has no scale for low-rank tensor "{name}": the file is corrupted.') from None
            if not math.isfinite(scale):
                raise NonFiniteError(f'{path}: tensor "{name}" has a non-finite scale; rebuild the vector.')
            self._keys[name] = (g["lora_A"], g["lora_B"])
            self._scales[name] = scale
            self.shapes[name] = (b[0], a[1])
        self.names: list[str] = list(groups)
        self.metadata: dict[str, Any] = meta
        self._reader = reader
        self._a_cache: tuple[str | None, torch.Tensor | None] = (None, None)

    def rank(self, name: str) -> int | None:
        """The rank of a low-rank delta; None for a dense one."""
        keys = self._keys[name]
        return None if len(keys) == 1 else self._reader.specs[keys[0]].shape[0]

    def delta(self, name: str) -> Delta:
        """The delta of one tensor, read now (only this tensor's data; fresh tensors)."""
        keys = self._keys[name]
        if len(keys) == 1:
            return self._reader.get_tensor(keys[0])
        return LowRankDelta(self._reader.get_tensor(keys[0]), self._reader.get_tensor(keys[1]), self._scales[name])

    def delta_rows(self, name: str, start: int, stop: int) -> Delta:
        """Rows ``start:stop`` of one delta (the low-rank ``A`` factor is read once per tensor)."""
        keys = self._keys[name]
        if len(keys) == 1:
            return self._reader.get_rows(keys[0], start, stop)
        if self._a_cache[0] != name:
            self._a_cache = (name, self._reader.get_tensor(keys[0]))
        A = self._a_cache[1]
        assert A is not None
        return LowRankDelta(A, self._reader.get_rows(keys[1], start, stop), self._scales[name])

    def close(self) -> None:
        self._reader.close()
