"""The task vector ``.safetensors`` format: its one reader and its one writer.

Layout: tensors ``dense::<name>`` (the delta), or ``lora_A::<name>`` (r, in) and
``lora_B::<name>`` (out, r) for a low-rank delta ``scale * B @ A``; metadata (strings, in the
:mod:`taskvec.formats` envelope, kind ``task_vector``): ``storage`` (dense | low-rank | mixed),
``scales`` (JSON {name: float}), ``base_model``, ``base_fingerprint``, ``task``, ``recipe``
(JSON), and any other provenance.

- :class:`VectorFile` opens a file lazily: the header is parsed and checked (envelope, keys,
  float dtypes, factor shapes, scales) before any tensor data is read; :meth:`VectorFile.delta`
  and :meth:`VectorFile.delta_rows` then read only the bytes asked for (positional reads).
  :func:`read_vector_file` is "open lazily, read every tensor", so the same checks guard every
  command that takes a vector file.
- :class:`VectorWriter` writes one, header first, tensor by tensor (merges stream through it;
  :func:`write_vector_file` writes a ``TaskVector`` through it too). Atomic: temp file + rename.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from taskvec.errors import FileFormatError, MissingFileError, NonFiniteError, UserInputError
from taskvec.formats import (
    LOADERS,
    ST_FROM_DTYPE,
    DeferredHeaderWriter,
    SafetensorsReader,
    StreamingSafetensorsWriter,
    TensorSpec,
    encode_metadata,
    envelope,
    read_envelope,
)
from taskvec.io_utils import atomic_path
from taskvec.weights.lowrank import Delta, LowRankDelta
from taskvec.weights.vector import TaskVector

__all__ = ["KIND", "VectorFile", "VectorWriter", "read_vector_file", "write_vector_file"]

KIND = "task_vector"
PREFIXES = ("dense", "lora_A", "lora_B")
_FLOAT = ("F64", "F32", "F16", "BF16")


def check_vector_path(path: Path, dir_hint: str) -> None:
    """``MissingFileError`` for a missing vector file, ``UserInputError`` (with ``dir_hint``) for a directory."""
    if not path.exists():
        raise MissingFileError(f"vector file {path} does not exist.")
    if path.is_dir():
        raise UserInputError(f"{path} is a directory: {dir_hint}")


def _split_key(path: Any, key: str) -> tuple[str, str]:
    """``"lora_A::<name>"`` -> ``("lora_A", "<name>")``; refuse keys a vector file cannot hold."""
    prefix, _, name = key.partition("::")
    if prefix not in PREFIXES or not name:
        raise FileFormatError(f'{path} has an unexpected tensor "{key}": not a taskvec vector file.')
    return prefix, name


class VectorFile:
    """The tensors of one vector file: ``names`` (file order), ``shapes``, ``metadata``.

    Raises ``FileFormatError`` for anything that is not a complete taskvec vector file and
    ``NonFiniteError`` for a non-finite low-rank scale, all while opening it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        check_vector_path(
            self.path, "pass a vector file (for a PEFT adapter directory use `taskvec extract --finetuned DIR`)."
        )
        _, meta, _ = read_envelope(self.path, KIND, "vector")
        reader = SafetensorsReader(self.path)  # validates the header against the file size
        scales = meta.pop("scales", {}) or {}
        if not isinstance(scales, dict):
            raise FileFormatError(f"{path} has malformed low-rank scales in its metadata: the file is corrupted.")
        groups: dict[str, dict[str, str]] = {}
        for key in reader.keys():
            prefix, name = _split_key(path, key)
            if reader.specs[key].dtype not in _FLOAT:
                raise FileFormatError(
                    f'{path}: tensor "{key}" has dtype {reader.specs[key].dtype}; task vectors hold '
                    "floating-point deltas."
                )
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
            scale = scales.get(name)
            if not isinstance(scale, (int, float)) or isinstance(scale, bool):
                raise FileFormatError(f'{path} has no scale for low-rank tensor "{name}": the file is corrupted.')
            if not math.isfinite(scale):
                raise NonFiniteError(f'{path}: tensor "{name}" has a non-finite scale; rebuild the vector.')
            self._keys[name] = (g["lora_A"], g["lora_B"])
            self._scales[name] = float(scale)
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
        assert A is not None  # set just above
        return LowRankDelta(A, self._reader.get_rows(keys[1], start, stop), self._scales[name])

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> VectorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_vector_file(path: str | os.PathLike) -> TaskVector:
    """Read a whole vector file: :class:`VectorFile`'s checks, then every tensor."""
    with VectorFile(path) as vf:
        tv = TaskVector({name: vf.delta(name) for name in vf.names}, vf.metadata)
    tv.check_finite()
    return tv


# -- the writer -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One delta of a vector file to be written: name, (out, in) shape, rank (None: dense), dtype."""

    name: str
    shape: tuple[int, ...]
    rank: int | None = None
    dtype: torch.dtype = torch.float32


def _storage(entries: Sequence[Entry]) -> str:
    n_low = sum(e.rank is not None for e in entries)
    return "dense" if n_low == 0 else ("low-rank" if n_low == len(entries) else "mixed")


class VectorWriter:
    """Write a vector file header first, then each delta in ``entries`` order (atomic).

    ``scales``: the low-rank scales to record (known up front, e.g. for a whole ``TaskVector``);
    without them every low-rank delta's scale is folded into ``B`` and recorded as 1.0, which
    is what a streaming merge needs (its results are not known when the header is written).
    ``bounded``: each entry's rank is an upper bound (a core-space merge knows a result's rank
    only once computed); the header is written at close (:class:`DeferredHeaderWriter`), and
    :meth:`set_metadata` may replace the metadata before then.
    """

    def __init__(self, path: str | os.PathLike, entries: Sequence[Entry], metadata: Mapping[str, Any],
                 scales: Mapping[str, float] | None = None, bounded: bool = False) -> None:
        self.path = Path(path)
        self.entries = {e.name: e for e in entries}
        self.scales = dict(scales) if scales is not None else None
        self.bounded = bounded
        specs: list[TensorSpec] = []
        for e in entries:
            st = ST_FROM_DTYPE.get(e.dtype)
            if st not in _FLOAT:
                raise UserInputError(f'"{e.name}" is {e.dtype}: task vectors hold floating-point deltas.')
            if e.rank is None:
                specs.append(TensorSpec(f"dense::{e.name}", st, e.shape))
            else:
                specs += [TensorSpec(f"lora_A::{e.name}", st, (e.rank, e.shape[1])),
                          TensorSpec(f"lora_B::{e.name}", st, (e.shape[0], e.rank))]
        self._recorded = {e.name: (self.scales or {}).get(e.name, 1.0) for e in entries if e.rank is not None}
        self._storage = _storage(entries)
        meta = self._envelope(metadata)
        self.bytes_written = 0
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            if bounded:
                self._writer: StreamingSafetensorsWriter | DeferredHeaderWriter = DeferredHeaderWriter(tmp, specs, meta)
            else:
                self._writer = StreamingSafetensorsWriter(tmp, specs, meta)
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def _envelope(self, metadata: Mapping[str, Any]) -> dict[str, str]:
        return encode_metadata(envelope(KIND, dict(metadata) | {"storage": self._storage, "scales": self._recorded}))

    def set_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata written at close (``bounded`` writers only)."""
        if not isinstance(self._writer, DeferredHeaderWriter):
            raise RuntimeError("set_metadata needs a bounded VectorWriter (its header is written last).")
        self._writer.metadata = self._envelope(metadata)

    def write(self, name: str, delta: Delta) -> None:
        """Append the next delta (its form must match the declared entry)."""
        e = self.entries[name]
        if (e.rank is None) == isinstance(delta, LowRankDelta):
            raise UserInputError(f'"{name}" was declared {"dense" if e.rank is None else "low-rank"}.')
        if isinstance(delta, LowRankDelta) and delta.rank > (e.rank or 0):
            raise UserInputError(f'"{name}" has rank {delta.rank}, more than the declared {e.rank}.')
        if isinstance(delta, LowRankDelta):
            B = delta.B.to(e.dtype)
            if self.scales is None and delta.scale != 1.0:
                B = (delta.B.to(torch.float32) * delta.scale).to(e.dtype)  # folded: scale 1.0
            elif self.scales is not None and delta.scale != self.scales.get(name):
                raise UserInputError(f'"{name}" has scale {delta.scale}, the header records {self.scales.get(name)}.')
            self.bytes_written += self._writer.write(f"lora_A::{name}", delta.A.to(e.dtype).contiguous())
            self.bytes_written += self._writer.write(f"lora_B::{name}", B.contiguous())
        else:
            self.bytes_written += self._writer.write(f"dense::{name}", delta.to(e.dtype).contiguous())

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._writer.__exit__(exc_type, exc, tb)
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._atomic.__exit__(exc_type, exc, tb)


def write_vector_file(vector: TaskVector, path: str | os.PathLike) -> Path:
    """Write a ``TaskVector`` as a ``.safetensors`` vector file (its own dtypes and scales)."""
    vector.check_finite()
    entries, scales = [], {}
    for name, d in vector.items():
        if isinstance(d, LowRankDelta):
            entries.append(Entry(name, tuple(d.shape), d.rank, d.B.dtype))
            scales[name] = float(d.scale)
        else:
            entries.append(Entry(name, tuple(d.shape), None, d.dtype))
    with VectorWriter(path, entries, vector.metadata, scales) as w:
        for name, d in vector.items():
            w.write(name, d)
    return Path(path)


LOADERS.register(KIND, read_vector_file)
