"""Streaming application of a task vector to a model directory: ``out = base + scale * vector``.

``stream_apply`` never holds the model in memory. It reads the base directory's safetensors
one tensor at a time, in row blocks of at most ``CHUNK_BYTES`` (16 MiB of float32), adds
``scale * delta`` (dense rows, or ``B[rows] @ A`` for a low-rank delta) in float32, rounds once
to the tensor's own dtype, and appends the block to the output through
:class:`~taskvec.formats.StreamingSafetensorsWriter`, whose header (names,
dtypes, shapes, offsets) is known up front from the input headers. A vector file is read
lazily the same way. Peak memory is the interpreter plus a few row blocks, whatever the model
size (see docs/benchmarks.md). The arithmetic is ``TaskVector.apply_to``'s (both call
:func:`~taskvec.weights.lowrank.add_scaled_`: one fused ``addmm`` for a low-rank delta): dense
deltas give bitwise the same result; low-rank ones the same up to the rounding of each entry's
(r + 1)-term sum when row blocks run other matmul kernels.

Everything is validated before anything is written (names, shapes, tied heads, scale,
fingerprint, output path). The output directory is built in a hidden temp directory next to
``out_dir`` (``.<name>.<random>.tmp``) and renamed into place when complete, so a killed run
leaves no partial output (only that hidden temp directory, which is safe to delete).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import (
    NonFiniteError,
    ShapeMismatchError,
    UserInputError,
)
from taskvec.formats import (
    INDEX_NAME,
    SafetensorsReader,
    StreamingSafetensorsWriter,
    TensorSpec,
    dtype_size,
    model_safetensors_files,
    open_tensors,
    row_blocks,
)
from taskvec.io_utils import atomic_dir
from taskvec.models.fingerprint import check_fingerprint, fingerprint_tensors
from taskvec.weights.lowrank import add_scaled_, same_delta
from taskvec.weights.vector import TaskVector
from taskvec.weights.vector_source import VectorSource, open_source

__all__ = [
    "CHUNK_BYTES",
    "ApplyReport",
    "plan_shards",
    "stream_apply",
    "stream_apply_report",
    "vector_source",
]

#: float32 bytes per row block: bounds the working memory for tensors of any size
CHUNK_BYTES = 16 * 2**20

# Files never copied from the base: its weights (replaced by ours) in any format.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".msgpack", ".h5", ".ckpt")
_HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")


@dataclass
class ApplyReport:
    """What ``stream_apply_report`` did."""

    out_dir: Path
    base_dir: Path
    scale: float
    tensors: int = 0
    tensors_changed: int = 0
    shards: int = 0
    bytes_written: int = 0
    files_copied: list[str] = field(default_factory=list)
    seconds: float = 0.0
    fingerprint_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out_dir),
            "base": str(self.base_dir),
            "scale": self.scale,
            "tensors": self.tensors,
            "tensors_changed": self.tensors_changed,
            "shards": self.shards,
            "bytes_written": self.bytes_written,
            "files_copied": self.files_copied,
            "seconds": round(self.seconds, 3),
            "fingerprint_checked": self.fingerprint_checked,
        }


def vector_source(vector: TaskVector | str | os.PathLike) -> VectorSource:
    """A lazy, tensor-by-tensor view of a task vector (:func:`taskvec.weights.vector_source.open_source`)."""
    return open_source(vector)


# -- the base directory ---------------------------------------------------------------------
def _config(base_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((base_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _check_names(source: VectorSource, base: dict[str, SafetensorsReader], base_dir: Path) -> None:
    """Every vector tensor exists in the base files, with the same shape and a float dtype."""
    cfg = None
    for name, shape in source.shapes.items():
        r = base.get(name)
        if r is None:
            cfg = _config(base_dir) if cfg is None else cfg
            tied = cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", True))
            embeds = [n for n in base if n.endswith(_EMBED_SUFFIXES)]
            if name.endswith(_HEAD_SUFFIXES) and tied and embeds:
                if embeds[0] in source.shapes:  # both tied names given (a full state dict)
                    if same_delta(source.get(name), source.get(embeds[0])):
                        continue  # the stored embedding gets it once
                    raise ShapeMismatchError(
                        f'"{name}" and "{embeds[0]}" are the same (tied) tensor in this base, but the '
                        f'vector gives them different deltas: keep one of the two and apply again.'
                    )
                raise ShapeMismatchError(
                    f'the vector changes "{name}", but this base ties it to "{embeds[0]}" and does not '
                    f'store it: drop "{name}" from the vector (or add it to "{embeds[0]}") and apply again.'
                )
            close = [n for n in base if n.endswith(name.split(".", 1)[-1])][:1]
            hint = f' (the base has "{close[0]}")' if close else ""
            raise ShapeMismatchError(
                f'the vector changes "{name}" but the base has no such tensor{hint}: '
                "apply it to the base model it was made from."
            )
        spec = r.specs[name]
        if tuple(spec.shape) != tuple(shape):
            raise ShapeMismatchError(
                f'"{name}" is {tuple(shape)} in the vector but {spec.shape} in the base: '
                "apply it to the base model it was made from."
            )
        if spec.dtype not in ("F64", "F32", "F16", "BF16"):
            raise UserInputError(f'"{name}" is {spec.dtype} in the base: task vectors only change float tensors.')


def _check_out(base_dir: Path, out_dir: Path, overwrite: bool) -> None:
    b, o = base_dir.resolve(), out_dir.expanduser().resolve()
    if o == b:
        raise UserInputError(f"--out {out_dir} is the base directory: write to a new directory.")
    if o in b.parents:
        raise UserInputError(f"--out {out_dir} contains the base directory: write to a new directory.")
    if out_dir.exists():
        if not overwrite:
            raise UserInputError(f"{out_dir} already exists: remove it, choose a new --out, or pass --overwrite.")
        if not out_dir.is_dir():
            raise UserInputError(f"{out_dir} exists and is not a directory: choose a new --out.")


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Split tensors (in order) into shards of at most ``max_shard_bytes`` of data each.

    A tensor larger than the limit gets a shard of its own. Within a shard, tensors are
    ordered by element size (largest first, stable), as safetensors does, so every tensor's
    data stays aligned to its element size.
    """
    if max_shard_bytes <= 0:
        raise UserInputError(f"the shard size must be positive, got {max_shard_bytes} bytes.")
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return [sorted(sh, key=lambda s: -dtype_size(s.dtype)) for sh in shards if sh]


def _shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _copy_aux(base_dir: Path, dst: Path) -> list[str]:
    """Copy config, generation config, tokenizer and other small top-level files."""
    copied = []
    for f in sorted(base_dir.iterdir()):
        if f.name.startswith(".") or f.name == INDEX_NAME or not f.is_file():
            continue
        if f.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="apply", unit="tensor", disable=not enabled, leave=False)


def _parts(spec: TensorSpec, reader: SafetensorsReader, source: VectorSource, scale: float) -> Iterator[torch.Tensor]:
    """The output tensor, row block by row block: ``base + scale * delta`` in its own dtype."""
    name = spec.name
    changed = name in source.shapes
    for rng in row_blocks(spec.shape, CHUNK_BYTES // 4) or [None]:  # float32 blocks
        t = reader.get_tensor(name) if rng is None else reader.get_rows(name, *rng)
        if changed:
            d = source.get(name) if rng is None else source.get_rows(name, *rng)
            try:
                t = add_scaled_(t, d, scale, check_finite=True)  # float32: in place; else rounded once
            except NonFiniteError:
                raise NonFiniteError(
                    f'the vector\'s delta for "{name}" contains NaN or Inf: it is corrupt; rebuild it.'
                ) from None
            del d
        yield t
        del t


def stream_apply_report(
    base_dir: str | os.PathLike,
    vector: TaskVector | str | os.PathLike,
    out_dir: str | os.PathLike,
    scale: float = 1.0,
    force: bool = False,
    max_shard_bytes: int = 2**30,
    progress: bool = True,
    overwrite: bool = False,
) -> ApplyReport:
    """Like :func:`stream_apply`, returning an :class:`ApplyReport` (counts, bytes, seconds)."""
    from taskvec import __version__
    from taskvec.models.loading import model_dir

    t0 = time.perf_counter()
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise NonFiniteError(f"scale must be a finite number, got {scale!r}.")
    if max_shard_bytes <= 0:
        raise UserInputError(f"the shard size must be positive, got {max_shard_bytes} bytes.")
    source = vector_source(vector)  # headers only: cheap, so checked before the base
    readers: dict[str, SafetensorsReader] = {}
    try:
        base = model_dir(base_dir)  # embedded names and GGUF files resolve to their cache
        out = Path(out_dir).expanduser()
        _check_out(base, out, overwrite)
        readers, specs = open_tensors(model_safetensors_files(base))
        _check_names(source, readers, base)
        want = source.metadata.get("base_fingerprint")
        check_fingerprint(lambda: fingerprint_tensors(readers), source.metadata, force=force)
        shards = plan_shards(specs, max_shard_bytes)
        names = _shard_names(len(shards))
        applied = {
            "task": source.metadata.get("task"),
            "base_model": source.metadata.get("base_model"),
            "base_fingerprint": want,
            "scale": float(scale),
            "vector": str(source.path) if source.path else None,
            "forced": bool(force),
            "taskvec_version": __version__,
        }
        meta = dict(readers[specs[0].name].metadata) if specs else {}
        meta |= {"format": "pt", "taskvec_applied": json.dumps(applied, sort_keys=True)}
        report = ApplyReport(out_dir=out, base_dir=base, scale=float(scale), tensors=len(specs),
                             shards=len(shards), fingerprint_checked=bool(want) and not force)
        bar = _progress(len(specs), progress)
        try:
            with atomic_dir(out, overwrite=overwrite) as tmp:
                weight_map: dict[str, str] = {}
                for shard, fname in zip(shards, names):
                    with StreamingSafetensorsWriter(tmp / fname, shard, meta) as w:
                        for spec in shard:
                            w.write_parts(spec.name, _parts(spec, readers[spec.name], source, float(scale)))
                            report.tensors_changed += int(spec.name in source.shapes)
                            weight_map[spec.name] = fname
                            bar.update(1)
                    report.bytes_written += w.bytes_total
                if len(shards) > 1:
                    index = {"metadata": {"total_size": sum(s.nbytes for s in specs), "taskvec_applied": applied},
                             "weight_map": dict(sorted(weight_map.items()))}
                    (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
                report.files_copied = _copy_aux(base, tmp)
        finally:
            bar.close()
    finally:
        source.close()
        for r in set(readers.values()):
            r.close()
    report.seconds = time.perf_counter() - t0
    return report


def stream_apply(
    base_dir: str | os.PathLike,
    vector: TaskVector | str | os.PathLike,
    out_dir: str | os.PathLike,
    scale: float = 1.0,
    force: bool = False,
    max_shard_bytes: int = 2**30,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``base + scale * vector`` to ``out_dir`` as a Hugging Face directory, streaming.

    ``base_dir``: a Hugging Face directory (single or sharded safetensors) or an embedded model
    name (``smollm2-135m``). ``vector``: a ``TaskVector`` or a vector file (``.safetensors``
    files are read lazily, tensor by tensor). The output keeps every tensor's dtype (the sum
    is done in float32 and rounded once), is sharded at ``max_shard_bytes`` (HF naming plus
    ``model.safetensors.index.json`` when there is more than one shard), gets the base's
    config/tokenizer files, and records provenance in the safetensors metadata
    (``taskvec_applied``). Raises ``FingerprintMismatchError`` when the vector was made on
    another base (unless ``force``), ``ShapeMismatchError`` for names/shapes the base lacks,
    ``UserInputError`` for a bad ``out_dir`` (existing, unless ``overwrite``; the base itself),
    all before anything is written. The directory appears atomically when complete.
    """
    return stream_apply_report(
        base_dir, vector, out_dir, scale=scale, force=force, max_shard_bytes=max_shard_bytes,
        progress=progress, overwrite=overwrite,
    ).out_dir
