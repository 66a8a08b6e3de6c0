"""The metadata envelope of every taskvec file, and the table of file kinds.

safetensors metadata is str -> str. Every taskvec file carries the same envelope:
``taskvec_kind`` (what the file holds, a key of :data:`KINDS`), ``format_version`` (of that
kind's layout), ``taskvec_version`` (the release that wrote it) and ``created`` (UTC). Other
values are JSON-encoded when they are not strings (:func:`encode_metadata`) and decoded back
(:func:`decode_metadata`).

:data:`KINDS` says, for each kind, what it is and how it is used, so that every "this is X,
not Y" error names the right command. :data:`LOADERS` maps a kind to the function that loads
it; each format's module registers its own (``taskvec inspect`` imports them all).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskvec import __version__
from taskvec.errors import FileFormatError, MissingFileError, UserInputError
from taskvec.formats.safetensors import read_header
from taskvec.registry import Registry

__all__ = [
    "KINDS",
    "LOADERS",
    "FileKind",
    "decode_metadata",
    "encode_metadata",
    "envelope",
    "file_kind",
    "read_envelope",
    "wrong_kind",
]

#: metadata values always stored as JSON (others are decoded when they look like JSON)
JSON_KEYS = ("recipe", "scales", "extra")


@dataclass(frozen=True)
class FileKind:
    """One kind of taskvec file: a noun for messages, its format version, how it is used."""

    noun: str
    format_version: str
    use: str


KINDS: dict[str, FileKind] = {
    "task_vector": FileKind(
        "weight-space task vector", "1",
        "pass it with --vector (eval, generate, apply, merge, search, negate); make one with `taskvec extract`"),
    "task_vector_basis": FileKind(
        "task vector basis", "1",
        "pick one task with BASIS#TASK, or use `taskvec basis info/recover`; make one with `taskvec basis build`"),
    "function_vector": FileKind(
        "function vector", "1", "pass it with --vector to `taskvec eval`; make one with `taskvec fv extract`"),
    "residual_vector": FileKind(
        "residual vector", "1", "pass it with --vector to `taskvec eval`; make one with `taskvec residual extract`"),
    "head_means": FileKind(
        "head-means file", "1", "load it in Python (taskvec.activations.load_activation) for function_vector(); make one with `taskvec fv means`"),
    "soft_task_vector": FileKind(
        "soft task vector", "1", "pass it with --vector to `taskvec eval`; make one with `taskvec soft train`"),
}

#: kind -> loader(path) (registered by each format's module)
LOADERS: Registry[Callable[[Path], Any]] = Registry("taskvec file kind")


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """safetensors metadata is str -> str: JSON-encode non-strings (None values are dropped)."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


def decode_metadata(meta: Mapping[str, str] | None) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata` (JSON-looking values are parsed)."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        if k in JSON_KEYS or (v[:1] in "{[" and v[-1:] in "}]"):
            try:
                out[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        out[k] = v
    return out


def envelope(kind: str, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``metadata`` plus the envelope of a ``kind`` file (``created`` kept if already set)."""
    meta = dict(metadata or {})
    return meta | {
        "taskvec_kind": kind,
        "format_version": KINDS[kind].format_version,
        "taskvec_version": __version__,
        "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _describe(kind: str | None) -> str:
    if kind in KINDS:
        return f"a {KINDS[kind].noun} ({KINDS[kind].use})"
    return f'a taskvec "{kind}" file' if kind else "not a taskvec file"


def wrong_kind(path: Any, found: str | None, wanted: tuple[str, ...]) -> FileFormatError:
    """The one-line error for a file of kind ``found`` where one of ``wanted`` was expected."""
    nouns = " or ".join(KINDS[k].noun if k in KINDS else k for k in wanted)
    return FileFormatError(f"{path} is {_describe(found)}, not a {nouns}.")


def file_kind(path: str | os.PathLike) -> str | None:
    """The ``taskvec_kind`` of a safetensors file (header only); None if it has none."""
    return (read_header(Path(path)).get("__metadata__") or {}).get("taskvec_kind")


def read_envelope(path: str | os.PathLike, wanted: str | tuple[str, ...], what: str) -> tuple[Path, dict[str, Any], str]:
    """Check a file's envelope: it exists, is safetensors, of a ``wanted`` kind, in this
    release's format version. Returns (path, decoded metadata without the kind, kind).

    ``what`` names the file in the messages for a missing path or a directory.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} file {path} does not exist.")
    if path.is_dir():
        raise UserInputError(f"{path} is a directory: pass a .safetensors {what} file.")
    wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    meta = decode_metadata(read_header(path).get("__metadata__"))
    kind = meta.pop("taskvec_kind", None)
    if kind not in wanted:
        raise wrong_kind(path, kind, wanted)
    check_format_version(path, meta, KINDS[kind].format_version)
    return path, meta, kind


def check_format_version(path: Any, meta: Mapping[str, Any], expected: str) -> None:
    """Refuse a taskvec file written in another format version (one-line FileFormatError)."""
    if str(meta.get("format_version")) != expected:
        raise FileFormatError(
            f"{path} has format version {meta.get('format_version')}, this taskvec reads {expected}: "
            "upgrade taskvec."
        )
