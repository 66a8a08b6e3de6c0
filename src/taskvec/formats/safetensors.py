"""The safetensors layer every taskvec file goes through: headers, reads, writes.

The layout is ``<u64 little-endian header length> <JSON header> <tensor bytes>``; the header
maps each name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the end of
the header, plus an optional ``"__metadata__"`` (str -> str).

- :func:`read_header` parses and checks a header (offsets against the file size) without
  reading tensor data; :class:`SafetensorsReader` reads one tensor, or some rows of one, with
  positional reads (``os.pread``) rather than a memory map: pages of a mapped file that were
  touched count towards the process's resident set until the map is closed, so mapping a 2 GB
  checkpoint makes a "streaming" pass look 2 GB big. :func:`read_tensors` reads them all.
- Writers: :func:`write_file` (a whole file from tensors in memory, atomic: temp file +
  rename); :class:`StreamingSafetensorsWriter` (header first, then each tensor's bytes in
  order, whole or in row blocks); :class:`PositionalSafetensorsWriter` (header first, then any
  row block of any tensor at its offset, in any order). The two streaming writers share the
  header encoder, so their files are laid out as safetensors itself lays them out.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from taskvec.errors import FileFormatError, ShapeMismatchError, UserInputError
from taskvec.io_utils import atomic_path, fsync

__all__ = [
    "DTYPE_FROM_ST",
    "ST_FROM_DTYPE",
    "PositionalSafetensorsWriter",
    "SafetensorsReader",
    "StreamingSafetensorsWriter",
    "TensorSpec",
    "dtype_size",
    "read_header",
    "read_tensors",
    "row_blocks",
    "write_file",
]

#: safetensors dtype string -> torch dtype (those this torch build has)
DTYPE_FROM_ST: dict[str, torch.dtype] = {
    k: v
    for k, v in {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "U16": getattr(torch, "uint16", None),
        "U32": getattr(torch, "uint32", None),
        "U64": getattr(torch, "uint64", None),
        "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
        "F8_E5M2": getattr(torch, "float8_e5m2", None),
    }.items()
    if v is not None
}
ST_FROM_DTYPE: dict[torch.dtype, str] = {v: k for k, v in DTYPE_FROM_ST.items()}

# Seconds to sleep after each written tensor. Read only when set, and only meant for tests
# that need a slow writer (e.g. to kill a process midway); never set it in normal use.
_SLOW_ENV = "TASKVEC_TEST_SLOW_WRITE"


def dtype_size(st_dtype: str) -> int:
    """Bytes per element of a safetensors dtype string."""
    dt = DTYPE_FROM_ST.get(st_dtype)
    if dt is None:
        raise FileFormatError(f"unsupported safetensors dtype {st_dtype!r}.")
    return torch.empty((), dtype=dt).element_size()


@dataclass(frozen=True)
class TensorSpec:
    """Name, safetensors dtype string and shape of one tensor in a file."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_size(self.dtype)

def read_header(path: Path) -> dict[str, Any]:
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



class SafetensorsReader:
    """Random access to the tensors of one safetensors file, one tensor in memory at a time."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        header = read_header(self.path)  # validates offsets against the file size
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        with open(self.path, "rb") as f:
            self._data_start = 8 + int.from_bytes(f.read(8), "little")
        self.specs: dict[str, TensorSpec] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for name, info in header.items():
            dtype = info.get("dtype")
            shape = info.get("shape")
            if dtype not in DTYPE_FROM_ST or not isinstance(shape, list):
                raise FileFormatError(f'{self.path}: tensor "{name}" has an unsupported dtype {dtype!r}.')
            spec = TensorSpec(name, dtype, tuple(int(s) for s in shape))
            begin, end = (int(x) for x in info["data_offsets"])
            if end - begin != spec.nbytes:
                raise FileFormatError(
                    f'{self.path}: tensor "{name}" has {end - begin} bytes but its shape needs '
                    f"{spec.nbytes}: the file is corrupted; re-create it."
                )
            self.specs[name] = spec
            self._offsets[name] = (begin, end)
        self._fd: int | None = None

    def keys(self) -> list[str]:
        """Tensor names in the order their bytes appear in the file."""
        return sorted(self.specs, key=lambda k: self._offsets[k][0])

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def open(self) -> SafetensorsReader:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SafetensorsReader:
        return self.open()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, offset: int, n: int) -> torch.Tensor:
        """``n`` bytes at ``offset`` of the data section, as a fresh uint8 tensor."""
        buf = torch.empty(n, dtype=torch.uint8)
        if n:
            self.open()
            assert self._fd is not None
            view = memoryview(buf.numpy()).cast("B")
            got = 0
            while got < n:
                k = os.preadv(self._fd, [view[got:]], self._data_start + offset + got)
                if k <= 0:
                    raise FileFormatError(f"{self.path} is truncated: re-create or re-download it.")
                got += k
        return buf

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh, writable CPU tensor)."""
        spec = self.specs[name]
        begin, end = self._offsets[name]
        return self._read(begin, end - begin).view(DTYPE_FROM_ST[spec.dtype]).reshape(spec.shape)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (along dim 0) of one tensor, reading only those bytes."""
        spec = self.specs[name]
        if not spec.shape:
            return self.get_tensor(name)
        start, stop = max(0, start), min(spec.shape[0], stop)
        stop = max(start, stop)
        row = math.prod(spec.shape[1:]) * dtype_size(spec.dtype)
        begin, _ = self._offsets[name]
        buf = self._read(begin + start * row, (stop - start) * row)
        return buf.view(DTYPE_FROM_ST[spec.dtype]).reshape((stop - start, *spec.shape[1:]))

    def get_elements(self, name: str, flat_idx: Sequence[int]) -> torch.Tensor:
        """Elements ``flat_idx`` of one tensor (flattened), through a read-only memory map: no
        system call per element, only the touched pages are read (fingerprint samples)."""
        import mmap

        spec = self.specs[name]
        size = dtype_size(spec.dtype)
        begin, end = self._offsets[name]
        self.open()
        assert self._fd is not None
        if os.fstat(self._fd).st_size < self._data_start + end:
            raise FileFormatError(f"{self.path} is truncated: re-create or re-download it.")
        out = bytearray(len(flat_idx) * size)
        if flat_idx:
            with mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) as mm:
                base = self._data_start + begin
                for j, k in enumerate(flat_idx):
                    out[j * size:(j + 1) * size] = mm[base + k * size: base + (k + 1) * size]
        return torch.frombuffer(out, dtype=torch.uint8).view(DTYPE_FROM_ST[spec.dtype]) if out else \
            torch.empty(0, dtype=DTYPE_FROM_ST[spec.dtype])




def row_blocks(shape: Sequence[int], max_elems: int) -> list[tuple[int, int]] | None:
    """Row ranges (along dim 0) of at most ``max_elems`` elements each (at least one row), for
    streaming a tensor in blocks; one block when ``max_elems <= 0``; None for a 0-d tensor."""
    if not shape:
        return None
    row = max(1, math.prod(shape[1:]))
    step = shape[0] if max_elems <= 0 else max(1, max_elems // row)
    return [(a, min(shape[0], a + step)) for a in range(0, shape[0], max(step, 1))] or [(0, 0)]


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (fresh CPU tensors), header checked first."""
    with SafetensorsReader(path) as r:
        return {k: r.get_tensor(k) for k in r.keys()}


def write_file(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
               metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (CPU, contiguous) and string ``metadata`` as one file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=dict(metadata) if metadata else None)
    return path


def encode_header(specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None) -> tuple[bytes, list[int]]:
    """The header bytes (length prefix included, space-padded to 8) of a file holding ``specs``
    contiguously in that order, and each tensor's offset in the data section."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserInputError("duplicate tensor names in a safetensors file.")
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise UserInputError("safetensors metadata must map strings to strings.")
        header["__metadata__"] = dict(metadata)
    offsets, offset = [], 0
    for s in specs:
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offsets.append(offset)
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offsets


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class StreamingSafetensorsWriter:
    """Write a safetensors file tensor by tensor; the header is fixed when the writer opens.

    >>> specs = [TensorSpec("w", "F32", (2, 3))]
    >>> with StreamingSafetensorsWriter("x.safetensors", specs, {"format": "pt"}) as w:
    ...     w.write("w", torch.zeros(2, 3))

    Tensors must be written in ``specs`` order with the declared dtype and shape; ``close``
    checks that every declared tensor was written. Data is laid out contiguously in ``specs``
    order and the header is space-padded to a multiple of 8 bytes, as safetensors does.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        specs: Sequence[TensorSpec],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.specs = list(specs)
        head, _ = encode_header(self.specs, metadata)
        offset = sum(s.nbytes for s in self.specs)
        self.data_bytes = offset
        self.bytes_total = len(head) + offset
        self._next = 0
        self._slow = float(os.environ.get(_SLOW_ENV, "0") or 0)
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(head)

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append the next tensor's bytes; returns the number of bytes written."""
        spec = self._expect(name)
        if ST_FROM_DTYPE.get(tensor.dtype) != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ShapeMismatchError(
                f'tensor "{name}" is {tensor.dtype} {tuple(tensor.shape)} but the header declares '
                f"{spec.dtype} {spec.shape}."
            )
        return self.write_parts(name, (tensor,))

    def write_parts(self, name: str, parts: Iterable[torch.Tensor]) -> int:
        """Append the next tensor as consecutive row blocks (dim 0) of its declared shape."""
        spec = self._expect(name)
        total = 0
        for part in parts:
            if ST_FROM_DTYPE.get(part.dtype) != spec.dtype or tuple(part.shape[1:]) != spec.shape[1:] or (
                part.dim() == 0
            ) != (len(spec.shape) == 0):
                raise ShapeMismatchError(
                    f'a block of tensor "{name}" is {part.dtype} {tuple(part.shape)}, which does not '
                    f"fit the declared {spec.dtype} {spec.shape}."
                )
            data = tensor_bytes(part)
            self._f.write(data)
            total += len(data)
        if total != spec.nbytes:
            raise ShapeMismatchError(f'tensor "{name}" got {total} bytes, the header declares {spec.nbytes}.')
        self._next += 1
        if self._slow > 0:
            time.sleep(self._slow)
        return total

    def _expect(self, name: str) -> TensorSpec:
        if self._next >= len(self.specs):
            raise UserInputError(f'tensor "{name}" was not declared in the header.')
        spec = self.specs[self._next]
        if name != spec.name:
            raise UserInputError(f'expected tensor "{spec.name}" next, got "{name}".')
        return spec

    def close(self) -> None:
        """Flush and close; raises if some declared tensor was never written."""
        if self._f.closed:
            return
        missing = len(self.specs) - self._next
        self._f.flush()
        fsync(self._f.fileno())
        self._f.close()
        if missing:
            raise UserInputError(f"{self.path}: {missing} declared tensors were not written.")

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()


class PositionalSafetensorsWriter:
    """Write row blocks of declared tensors at their offsets (header space-padded to 8 bytes)."""

    def __init__(self, path: str | os.PathLike, specs: Sequence[TensorSpec], metadata: Mapping[str, str]) -> None:
        self.path = Path(path)
        self.specs = {s.name: s for s in specs}
        head, offsets = encode_header(list(specs), metadata)
        self._begin: dict[str, int] = {s.name: o for s, o in zip(specs, offsets)}
        self._data_start = len(head)
        self.bytes_total = self._data_start + sum(s.nbytes for s in specs)
        self._left = {s.name: s.nbytes for s in specs}
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._pwrite(head, 0)
        os.ftruncate(self._fd, self.bytes_total)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], offset + done)

    def write_rows(self, name: str, r0: int, block: torch.Tensor) -> None:
        """Write ``block`` as rows ``r0:r0+len(block)`` (dim 0) of tensor ``name``."""
        spec = self.specs.get(name)
        if spec is None:
            raise UserInputError(f'tensor "{name}" was not declared in the header.')
        if ST_FROM_DTYPE.get(block.dtype) != spec.dtype:
            raise ShapeMismatchError(f'a block of "{name}" is {block.dtype}, the header declares {spec.dtype}.')
        row = (math.prod(spec.shape[1:]) if spec.shape else 1) * dtype_size(spec.dtype)
        flat = block.detach().contiguous().reshape(-1)
        nbytes = flat.numel() * flat.element_size()
        if nbytes % row or r0 * row + nbytes > spec.nbytes:
            raise ShapeMismatchError(f'a block of {tuple(block.shape)} at row {r0} does not fit "{name}" {spec.shape}.')
        if nbytes:
            self._pwrite(memoryview(flat.view(torch.uint8).numpy()), self._data_start + self._begin[name] + r0 * row)
        self._left[name] -= nbytes

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor."""
        spec = self.specs[name]
        if tuple(tensor.shape) != spec.shape:
            raise ShapeMismatchError(f'"{name}" is {tuple(tensor.shape)}, the header declares {spec.shape}.')
        self.write_rows(name, 0, tensor.reshape(-1) if not spec.shape else tensor)

    def close(self) -> None:
        """fsync and close; raises if some declared bytes were never written."""
        if self._fd < 0:
            return
        fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        missing = [k for k, v in self._left.items() if v != 0]
        if missing:
            raise UserInputError(f"{self.path}: {len(missing)} tensors were not completely written (e.g. {missing[0]}).")

    def __enter__(self) -> PositionalSafetensorsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
