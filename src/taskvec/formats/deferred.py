"""A streaming safetensors writer for tensors whose shapes are only bounded when it opens.

A low-rank merge knows each output's rank only after computing it (the rank of a merged core,
or what ``--energy`` keeps), yet a streaming writer must not hold every result. The safetensors
layout allows the JSON header to be padded with trailing spaces, so this writer reserves the
header's *largest possible* size up front (every declared shape at its bound), appends each
tensor's bytes as they come (any shape that fits the bound), and at close writes the real
header into the reserved space, padded with spaces. The file is an ordinary safetensors file
(read by ``safetensors`` itself); only the header carries a few bytes of padding.

Metadata may be extended at close (e.g. with a summary of what truncation cost) as long as it
fits in ``metadata_slack`` extra bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import torch

from taskvec.errors import ShapeMismatchError, UserInputError
from taskvec.formats.safetensors import ST_FROM_DTYPE, TensorSpec, encode_header, tensor_bytes
from taskvec.io_utils import fsync

#: extra header bytes reserved for metadata added at close
METADATA_SLACK = 4096


class DeferredHeaderWriter:
    """Write tensors in ``bounds`` order, each at most its declared shape; header at close.

    >>> bounds = [TensorSpec("A", "F32", (16, 64))]
    >>> with DeferredHeaderWriter("x.safetensors", bounds, {"format": "pt"}) as w:
    ...     w.write("A", torch.zeros(5, 64))   # rank 5 of at most 16
    """

    def __init__(self, path: str | os.PathLike, bounds: Sequence[TensorSpec],
                 metadata: Mapping[str, str] | None = None, metadata_slack: int = METADATA_SLACK) -> None:
        self.path = Path(path)
        self.bounds = list(bounds)
        self.metadata = dict(metadata or {})
        head, _ = encode_header(self.bounds, self.metadata)
        self._reserved = len(head) - 8 + metadata_slack + (-metadata_slack % 8)
        self._written: list[TensorSpec] = []
        self.data_bytes = 0
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(self._reserved.to_bytes(8, "little") + b" " * self._reserved)

    @property
    def bytes_total(self) -> int:
        return 8 + self._reserved + self.data_bytes

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append the next tensor; its shape may be smaller than the bound in any dimension."""
        i = len(self._written)
        if i >= len(self.bounds):
            raise UserInputError(f'tensor "{name}" was not declared in the header.')
        bound = self.bounds[i]
        if name != bound.name:
            raise UserInputError(f'expected tensor "{bound.name}" next, got "{name}".')
        shape = tuple(tensor.shape)
        if (ST_FROM_DTYPE.get(tensor.dtype) != bound.dtype or len(shape) != len(bound.shape)
                or any(s > b for s, b in zip(shape, bound.shape))):
            raise ShapeMismatchError(
                f'tensor "{name}" is {tensor.dtype} {shape}, which does not fit the declared bound '
                f"{bound.dtype} {bound.shape}."
            )
        data = tensor_bytes(tensor)
        self._f.write(data)
        self.data_bytes += len(data)
        self._written.append(TensorSpec(name, bound.dtype, shape))
        return len(data)

    def close(self, metadata: Mapping[str, str] | None = None) -> None:
        """Write the real header (``metadata`` replaces the opening one if given) and close."""
        if self._f.closed:
            return
        try:
            if len(self._written) != len(self.bounds):
                raise UserInputError(f"{self.path}: {len(self.bounds) - len(self._written)} declared tensors were not written.")
            head, _ = encode_header(self._written, dict(metadata) if metadata is not None else self.metadata)
            raw = head[8:]
            if len(raw) > self._reserved:
                raise UserInputError(
                    f"{self.path}: the final header ({len(raw)} bytes) exceeds the space reserved for it "
                    f"({self._reserved}); give less metadata at close."
                )
            self._f.seek(8)
            self._f.write(raw + b" " * (self._reserved - len(raw)))
            self._f.flush()
            fsync(self._f.fileno())
        finally:
            self._f.close()

    def __enter__(self) -> DeferredHeaderWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()
