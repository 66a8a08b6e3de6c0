"""The merge driver: one tensor of every input at a time, in memory or file to file.

``merge_files`` never holds a whole vector: it opens every input file's header, checks names,
shapes and base fingerprints, fixes the output header (dense, or low-rank with a known rank
for ``task_arithmetic`` on all-low-rank inputs), then for each tensor name reads that tensor
from every input, merges it and appends it to the output with
:class:`~taskvec.formats.StreamingSafetensorsWriter`. The file is written
under a temp name and renamed when complete (``taskvec.io_utils.atomic_path``).

Peak memory ~ (T + c) x the largest tensor in float32 (T inputs, densified if the method
works element-wise, plus c working buffers; see docs/merging.md), independent of model size.
``trim="global"`` (ties) first streams over every input twice to find exact thresholds.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskvec.errors import FingerprintMismatchError, UserInputError
from taskvec.weights.core_space import compress
from taskvec.weights.lowrank import Delta, LowRankDelta, dense_of
from taskvec.weights.merge.base import MergeMethod
from taskvec.weights.merge.registry import get_method
from taskvec.weights.vector import TaskVector
from taskvec.weights.vector_source import (
    MemorySource,
    VectorSource,
    check_finite,
    common_shapes,
    open_source,
)


@dataclass(frozen=True)
class OutSpec:
    """One output tensor: its name, shape, and rank (None for dense)."""

    name: str
    shape: tuple[int, ...]
    rank: int | None = None


@dataclass
class MergeReport:
    """What ``merge_files`` wrote."""

    out: Path
    method: str
    inputs: list[str]
    weights: list[float]
    params: dict[str, Any]
    tensors: int = 0
    low_rank_tensors: int = 0
    storage: str = "dense"
    bytes_written: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    truncation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"truncation": self.truncation,
            "out": str(self.out), "method": self.method, "inputs": self.inputs, "weights": self.weights,
            "params": self.params, "tensors": self.tensors, "low_rank_tensors": self.low_rank_tensors,
            "storage": self.storage, "bytes_written": self.bytes_written, "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


def plan(method: MergeMethod, sources: Sequence[VectorSource], params: dict[str, Any] | None = None,
         rank: int | None = None) -> list[OutSpec]:
    """Output tensors in input order (rank: an upper bound, None for dense); refuses shapes
    that differ between inputs. ``rank`` caps every low-rank output (truncation)."""
    specs = []
    for name, shape in common_shapes(sources).items():
        ranks = [s.rank(name) for s in sources if name in s]
        bound = method.output_rank(name, ranks, shape, params or {})
        if bound is not None and rank is not None:
            bound = min(bound, rank)
        specs.append(OutSpec(name, shape, bound))
    return specs


def common_base(sources: Sequence[VectorSource], force: bool, base_model: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The inputs' shared ``base_model``/``base_fingerprint``; mismatches refused unless ``force``."""
    notes: list[str] = []
    fps = {s.label: s.metadata.get("base_fingerprint") for s in sources}
    distinct = sorted({f for f in fps.values() if f})
    if len(distinct) > 1:
        detail = ", ".join(f"{lab}: {fp}" for lab, fp in fps.items() if fp)
        if not force:
            raise FingerprintMismatchError(
                f"the vectors were made on different base models ({detail}): merge vectors of one base, "
                "or pass --force."
            )
        notes.append(f"merged vectors of different bases (forced): {detail}")
    missing = [lab for lab, fp in fps.items() if not fp]
    if missing and distinct:
        notes.append(f"no base fingerprint recorded in {', '.join(missing)}: not checked")
    names = [s.metadata.get("base_model") for s in sources if s.metadata.get("base_model")]
    base = {"base_model": names[0] if names else None, "base_fingerprint": distinct[0] if distinct else None}
    if base_model is not None:
        notes.extend(_check_base_model(base_model, base, force))
        base["base_model"] = base["base_model"] or base_model
    return base, notes


def _check_base_model(base_model: str, base: dict[str, Any], force: bool) -> list[str]:
    """Compare a configured ``base_model`` with what the vectors recorded."""
    fp, name = base.get("base_fingerprint"), base.get("base_model")
    if Path(base_model).is_dir() and fp:
        from taskvec.models.fingerprint import check_fingerprint, fingerprint

        have = fingerprint(Path(base_model))
        check_fingerprint(have, base, f"base_model {base_model} is not the base the vectors were made on:", force)
        return [] if have == fp else [f"base_model {base_model} does not match the vectors' base (forced)"]
    if name is None or base_model in (name, fp):
        return []
    if not force:
        raise FingerprintMismatchError(
            f'base_model "{base_model}" is not the base the vectors were made on ("{name}"): '
            "fix base_model (a model directory is checked by fingerprint), or pass --force."
        )
    return [f'base_model "{base_model}" differs from the vectors\' base "{name}" (forced)']


@dataclass
class Truncation:
    """Optional ``rank`` / ``energy`` truncation of low-rank outputs and what it cost."""

    rank: int | None = None
    energy: float | None = None
    err2: float = 0.0  # sum over tensors of ||dropped||_F^2
    norm2: float = 0.0  # sum over tensors of ||merged||_F^2
    worst: tuple[float, str] = (0.0, "")

    @property
    def active(self) -> bool:
        return self.rank is not None or self.energy is not None

    def apply(self, name: str, d: LowRankDelta) -> LowRankDelta:
        if not self.active:
            return d
        out, rel = compress(d, self.rank, self.energy)
        n2 = d.norm2()
        self.norm2 += n2
        self.err2 += rel * rel * n2
        if rel > self.worst[0]:
            self.worst = (rel, name)
        return out

    def summary(self) -> dict[str, Any] | None:
        if not self.active:
            return None
        rel = math.sqrt(self.err2 / self.norm2) if self.norm2 > 0 else 0.0
        return {"rank": self.rank, "energy": self.energy, "relative_error": rel,
                "worst_tensor": self.worst[1], "worst_relative_error": self.worst[0]}


def merged_tensors(method: MergeMethod, sources: Sequence[VectorSource], weights: list[float],
                   params: dict[str, Any], specs: Sequence[OutSpec], progress: bool = False,
                   truncation: Truncation | None = None) -> Iterator[tuple[OutSpec, Delta]]:
    """Yield (spec, merged delta) one tensor at a time; inputs and results checked finite."""
    it: Any = specs
    if progress:
        from tqdm import tqdm

        it = tqdm(specs, desc=f"merge ({method.name})", unit="tensor", leave=False)
    for spec in it:
        deltas: list[Delta | None] = []
        for s in sources:
            d = s.get(spec.name) if spec.name in s else None
            if d is not None:
                check_finite(d, spec.name, s.label)
            deltas.append(d)
        out = method.apply_tensor(spec.name, deltas, weights, params)
        del deltas
        if out is None:
            raise RuntimeError(f'{method.name} returned nothing for "{spec.name}"')
        if spec.rank is None and isinstance(out, LowRankDelta):
            out = out.to_dense()
        if spec.rank is not None and not isinstance(out, LowRankDelta):
            raise RuntimeError(f'{method.name} returned a dense "{spec.name}" where a low-rank one was planned')
        if isinstance(out, LowRankDelta) and truncation is not None:
            out = truncation.apply(spec.name, out)
        if spec.rank is not None and out.rank > spec.rank:  # type: ignore[union-attr]
            raise RuntimeError(f'{method.name} returned rank {out.rank} for "{spec.name}" (at most {spec.rank})')  # type: ignore[union-attr]
        if tuple(out.shape) != spec.shape:
            raise RuntimeError(f'{method.name} returned shape {tuple(out.shape)} for "{spec.name}" {spec.shape}')
        check_finite(out, spec.name, f"the {method.name} merge (overflow?)")
        yield spec, out


def merge_metadata(method: MergeMethod, sources: Sequence[VectorSource], weights: list[float],
                   params: dict[str, Any], base: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    tasks = [str(s.metadata.get("task") or Path(s.label).stem) for s in sources]
    public = {k: v for k, v in params.items() if not k.startswith("_")}
    info = {"method": method.name, "params": public, "weights": weights, "tasks": tasks,
            "inputs": [s.label for s in sources]}
    if notes:
        info["notes"] = notes
    return {"task": f"{method.name}({', '.join(tasks)})", **{k: v for k, v in base.items() if v}, "merge": info}


def merge_vectors(method: str | MergeMethod, vectors: Sequence[TaskVector], weights: Sequence[float] | None = None,
                  params: dict[str, Any] | None = None, force: bool = False, base_model: str | None = None,
                  rank: int | None = None, energy: float | None = None) -> TaskVector:
    """Merge task vectors in memory (the same per-tensor code as ``merge_files``)."""
    m = get_method(method)
    vectors = list(vectors)
    if not all(isinstance(v, TaskVector) for v in vectors):
        raise UserInputError("merge takes TaskVector objects; load files with TaskVector.load or use merge_files.")
    w, p, notes = m.validate(weights, params or {}, len(vectors))
    check_truncation(rank, energy)
    sources = [MemorySource(v, label=str(v.metadata.get("task") or f"vector #{i + 1}")) for i, v in enumerate(vectors)]
    base, base_notes = common_base(sources, force, base_model)
    specs = plan(m, sources, p, rank)
    p = m.prepare(sources, w, p)
    trunc = Truncation(rank, energy)
    deltas = {spec.name: d for spec, d in merged_tensors(m, sources, w, p, specs, truncation=trunc)}
    meta = merge_metadata(m, sources, w, p, base, notes + base_notes)
    if trunc.summary():
        meta["merge"]["truncation"] = trunc.summary()
    tv = TaskVector(deltas, meta)
    tv.metadata["storage"] = tv.form
    return tv


def check_truncation(rank: int | None, energy: float | None) -> None:
    """``rank`` >= 1 and ``energy`` in (0, 1], at most one of them."""
    if rank is not None and energy is not None:
        raise UserInputError("give --rank or --energy, not both.")
    if rank is not None and (isinstance(rank, bool) or int(rank) != rank or rank < 1):
        raise UserInputError(f"--rank must be a positive integer, got {rank!r}.")
    if energy is not None and not 0 < float(energy) <= 1:
        raise UserInputError(f"--energy must be in (0, 1], got {energy!r}: e.g. 0.99 keeps 99% of each module's energy.")


def merge_files(method: str | MergeMethod, inputs: Sequence[str | os.PathLike | VectorSource], out: str | os.PathLike,
                weights: Sequence[float] | None = None, params: dict[str, Any] | None = None, force: bool = False,
                base_model: str | None = None, progress: bool = False, rank: int | None = None,
                energy: float | None = None) -> MergeReport:
    """Merge vectors into ``out`` (.safetensors), streaming tensor by tensor (atomic write).

    ``inputs``: vector files (read lazily) or open :class:`VectorSource`s (for a task of a basis
    file use :func:`taskvec.basis.open_sources`, which the CLI does for ``BASIS#TASK``).
    ``rank`` / ``energy`` truncate every low-rank output by an SVD of its core; the relative
    Frobenius error this costs is in the report and the file's metadata.
    """
    from taskvec.io_utils import check_writable
    from taskvec.weights.vector_file import Entry, VectorWriter

    t0 = time.perf_counter()
    m = get_method(method)
    w, p, notes = m.validate(weights, params or {}, len(inputs))
    check_truncation(rank, energy)
    files = tuple(Path(x) for x in inputs if not isinstance(x, VectorSource))
    files += tuple(x.path for x in inputs if isinstance(x, VectorSource) and x.path is not None)
    out = check_writable(out, files)
    if out.suffix != ".safetensors":
        raise UserInputError(f"the merged vector is written as .safetensors, got {out.name}: rename --out.")
    sources: list[VectorSource] = []
    try:
        for x in inputs:
            sources.append(open_source(x))
        base, base_notes = common_base(sources, force, base_model)
        notes = notes + base_notes
        specs = plan(m, sources, p, rank)
        p = m.prepare(sources, w, p)
        entries = [Entry(s.name, s.shape, s.rank) for s in specs]
        n_low = sum(s.rank is not None for s in specs)
        meta = merge_metadata(m, sources, w, p, base, notes)
        report = MergeReport(out, m.name, [s.label for s in sources], w, meta["merge"]["params"],
                             tensors=len(specs), low_rank_tensors=n_low, notes=notes)
        trunc = Truncation(rank, energy)
        # low-rank ranks are bounds until computed: the header is written last (scales folded into B)
        with VectorWriter(out, entries, meta, bounded=n_low > 0) as writer:
            for spec, d in merged_tensors(m, sources, w, p, specs, progress, trunc):
                writer.write(spec.name, d if isinstance(d, LowRankDelta) else dense_of(d).float())
                del d
            if trunc.summary():
                meta["merge"]["truncation"] = report.truncation = trunc.summary()
                writer.set_metadata(meta)
        report.storage = "dense" if n_low == 0 else ("low-rank" if n_low == len(specs) else "mixed")
        report.bytes_written = writer.bytes_written
    finally:
        for s in sources:
            s.close()
    report.seconds = time.perf_counter() - t0
    return report


def merge(method: str | MergeMethod, vectors: Sequence[TaskVector], weights: Sequence[float] | None = None,
          *, force: bool = False, base_model: str | None = None, rank: int | None = None,
          energy: float | None = None, **params: Any) -> TaskVector:
    """``merge("ties", [tv1, tv2], density=0.2, lam=1.0)``: in-memory merge by method name."""
    return merge_vectors(method, vectors, weights, params, force=force, base_model=base_model, rank=rank, energy=energy)


__all__ = ["MergeReport", "OutSpec", "merge", "merge_files", "merge_vectors", "plan"]
