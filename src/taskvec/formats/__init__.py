"""The ground floor of every taskvec file: safetensors reads and writes, model directories'
weight files, and the metadata envelope and kinds of taskvec's own files (docs/formats.md).
Imports nothing from the rest of taskvec but ``errors``, ``registry`` and ``io_utils``."""

from taskvec.formats.deferred import DeferredHeaderWriter
from taskvec.formats.envelope import (
    KINDS,
    LOADERS,
    decode_metadata,
    encode_metadata,
    envelope,
    file_kind,
    read_envelope,
    wrong_kind,
)
from taskvec.formats.model_dir import INDEX_NAME, model_safetensors_files, open_tensors
from taskvec.formats.safetensors import (
    DTYPE_FROM_ST,
    ST_FROM_DTYPE,
    PositionalSafetensorsWriter,
    SafetensorsReader,
    StreamingSafetensorsWriter,
    TensorSpec,
    dtype_size,
    read_header,
    read_tensors,
    row_blocks,
    write_file,
)

__all__ = [
    "DTYPE_FROM_ST",
    "DeferredHeaderWriter",
    "INDEX_NAME",
    "KINDS",
    "LOADERS",
    "ST_FROM_DTYPE",
    "PositionalSafetensorsWriter",
    "SafetensorsReader",
    "StreamingSafetensorsWriter",
    "TensorSpec",
    "decode_metadata",
    "dtype_size",
    "encode_metadata",
    "envelope",
    "file_kind",
    "model_safetensors_files",
    "open_tensors",
    "read_envelope",
    "read_header",
    "read_tensors",
    "row_blocks",
    "wrong_kind",
    "write_file",
]
