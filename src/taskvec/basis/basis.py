"""The ``Basis`` object and its file (safetensors + metadata), loaded with validation.

File layout (all metadata values are strings; JSON where noted):

* metadata: ``taskvec_kind="task_vector_basis"``, ``format_version="1"``, ``method``, ``M``,
  ``T``, ``seed``, ``per_layer`` ("true"/"false"), ``tasks`` (JSON list), ``groups`` (JSON:
  basis groups, ``["all"]`` or ``["layer.0", ..., "other"]``), ``stats_groups`` (JSON: layer
  groups), ``tensor_shapes`` (JSON [[name, shape], ...] in file order), ``options`` (JSON), ``fit_info`` (JSON, one
  entry per group: losses, selection, explained variance), ``collection`` (JSON: bytes of the
  inputs), ``base_model``, ``base_fingerprint``, ``taskvec_version``, ``created``.
* tensors (float64 unless noted): ``coefficients`` (G, T, M); ``mix`` (G, T, M) for methods whose
  basis is ``S = V mix``; ``singular_values`` (G, M) for pca; ``ae_logits`` (G, T, M) for the
  autoencoder; ``random_mix`` (G, M, M) for random; ``stats::gram`` (L, T, T) per layer group, and
  for random ``stats::rr`` (L, M, M), ``stats::rx`` (L, M, T); float32 ``mean::NAME`` (pca) and
  ``basis::m::NAME`` (every method but random, which regenerates its basis from ``seed``).
* core-space bases of LoRA collections (``space="core"``, ``basis.core_basis``): every
  ``NAME`` above is a (k, k) core; float32 ``span_U::NAME`` (out, k) and ``span_V::NAME``
  (in, k) hold the span, and ``span`` (JSON) the true shapes, span ranks and span errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from taskvec.basis.gram import group_key, layer_key
from taskvec.errors import FileFormatError, UserInputError, unknown_name
from taskvec.formats import KINDS, LOADERS, SafetensorsReader, read_envelope
from taskvec.weights.vector import TaskVector

__all__ = ["FORMAT_VERSION", "KIND", "Basis", "load_basis"]

KIND = "task_vector_basis"
FORMAT_VERSION = KINDS["task_vector_basis"].format_version
_SMALL = ("coefficients", "mix", "singular_values", "ae_logits", "random_mix", "stats::gram", "stats::rr", "stats::rx")


def _fail(path: Path, what: str) -> FileFormatError:
    return FileFormatError(f"{path}: {what}: the basis file is corrupted or incomplete; rebuild it with `taskvec basis build`.")


class Basis:
    """A task vector basis read from its file; tensors are read on demand, one at a time."""

    def __init__(self, path: Path, reader: SafetensorsReader, meta: dict[str, Any], small: dict[str, torch.Tensor]) -> None:
        self.path = path
        self.reader = reader
        self.metadata = meta
        self.method: str = meta["method"]
        self.M: int = meta["M"]
        self.T: int = meta["T"]
        self.seed: int = meta["seed"]
        self.per_layer: bool = meta["per_layer"]
        self.tasks: list[str] = meta["tasks"]
        self.groups: list[str] = meta["groups"]
        self.stats_groups: list[str] = meta["stats_groups"]
        self.shapes: dict[str, tuple[int, ...]] = meta["tensor_shapes"]
        self.fit_info: list[dict[str, Any]] = meta.get("fit_info") or [{} for _ in self.groups]
        self.coefficients = small["coefficients"]  # (G, T, M)
        self.mix = small.get("mix")
        self.random_mix = small.get("random_mix")
        self.singular_values = small.get("singular_values")
        self.logits = small.get("ae_logits")
        self.stats_gram = small.get("stats::gram")  # None for imported bases
        self.stats_rr = small.get("stats::rr")
        self.stats_rx = small.get("stats::rx")
        self.space: str = meta.get("space", "dense")  # "core": atoms are cores over span_U/span_V
        self.span: dict[str, Any] = meta.get("span") or {}
        self._gidx = {g: i for i, g in enumerate(self.groups)}
        from taskvec.basis.registry import get_method

        self.centered: bool = get_method(self.method).centered  # stores a mean

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Basis:
        """Open and validate a basis file (``FileFormatError`` on anything malformed)."""
        from taskvec.basis.registry import get_method, method_names

        path, _, _ = read_envelope(path, KIND, "basis")  # exists, safetensors, a basis, version
        reader = SafetensorsReader(path)  # header sanity: offsets within the file
        raw = reader.metadata
        try:
            meta = _parse_meta(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise _fail(path, f"malformed metadata ({type(exc).__name__}: {exc})") from None
        if meta["method"] not in method_names():
            raise _fail(path, f'unknown method "{meta["method"]}"')
        method = get_method(meta["method"])
        T, M, G, L = meta["T"], meta["M"], len(meta["groups"]), len(meta["stats_groups"])
        if len(meta["tasks"]) != T or T < 1 or M < 1 or G < 1 or L < 1:
            raise _fail(path, "inconsistent T, M, tasks or groups")
        want = {"coefficients": (G, T, M)}
        if not meta.get("imported"):  # imported bases (basis.source_import) have no Gram
            want["stats::gram"] = (L, T, T)
        if method.random_projection:
            want |= {"random_mix": (G, M, M), "stats::rr": (L, M, M), "stats::rx": (L, M, T)}
        else:
            want["mix"] = (G, T, M)
        if meta["method"] == "pca":
            want["singular_values"] = (G, M)
        if meta["method"] == "autoencoder":
            want["ae_logits"] = (G, T, M)
        for name, shape in meta["tensor_shapes"].items():
            g = group_key(name, meta["per_layer"])
            if g not in meta["groups"] or layer_key(name) not in meta["stats_groups"]:
                raise _fail(path, f'tensor "{name}" belongs to no listed group')
            if method.centered:
                want[f"mean::{name}"] = shape
            if not method.random_projection:
                for m in range(M):
                    want[f"basis::{m}::{name}"] = shape
        if meta.get("space", "dense") == "core":
            true = {str(n): tuple(int(x) for x in s) for n, s in (meta.get("span") or {}).get("true_shapes", [])}
            for name, shape in meta["tensor_shapes"].items():
                if name not in true or len(shape) != 2:
                    raise _fail(path, f'core-space tensor "{name}" has no true shape')
                want[f"span_U::{name}"] = (true[name][0], shape[0])
                want[f"span_V::{name}"] = (true[name][1], shape[1])
        have = reader.specs
        for key, shape in want.items():
            spec = have.get(key)
            if spec is None:
                raise _fail(path, f'tensor "{key}" is missing')
            dtype = "F64" if key in _SMALL else "F32"
            if spec.shape != tuple(shape) or spec.dtype != dtype:
                raise _fail(path, f'tensor "{key}" is {spec.dtype} {spec.shape}, expected {dtype} {tuple(shape)}')
        extra = sorted(set(have) - set(want))
        if extra:
            raise _fail(path, f'unexpected tensor "{extra[0]}"')
        small: dict[str, torch.Tensor] = {}
        with reader:
            for key in _SMALL:
                if key in want:
                    t = reader.get_tensor(key)
                    if not torch.isfinite(t).all():
                        raise _fail(path, f'tensor "{key}" holds NaN or Inf')
                    small[key] = t
        return cls(path, reader, meta, small)

    # -- lookups ----------------------------------------------------------------------------
    @property
    def form(self) -> str:
        if self.space == "core":
            return "core space (low-rank)"
        return "seeded random (no basis tensors)" if self.random_projection else "dense"

    @property
    def random_projection(self) -> bool:
        return self.random_mix is not None

    @property
    def selected(self) -> list[int] | None:
        """random_sample: indices of the tasks that are basis vectors."""
        sel = self.fit_info[0].get("selected") if self.fit_info else None
        return list(sel) if sel is not None else None

    def group_of(self, name: str) -> int:
        return self._gidx[group_key(name, self.per_layer)]

    def task_index(self, task: str | int) -> int:
        """Index of a task given by name or index (unknown names suggest the closest)."""
        if isinstance(task, int) or (isinstance(task, str) and task.isdigit() and task not in self.tasks):
            i = int(task)
            if not 0 <= i < self.T:
                raise UserInputError(f"task index {i} is out of range: this basis has {self.T} tasks.")
            return i
        if task not in self.tasks:
            raise unknown_name("task", str(task), self.tasks)
        return self.tasks.index(task)

    def in_basis(self, task: str | int) -> bool:
        """Whether the task is reconstructed exactly by construction (random_sample: sampled)."""
        sel = self.selected
        return sel is None or self.task_index(task) in sel

    def basis_rows(self, name: str, r0: int | None = None, r1: int | None = None) -> torch.Tensor:
        """Basis tensors of ``name`` (rows ``r0:r1``), flattened: (n, M) float64."""
        cols = []
        for m in range(self.M):
            key = f"basis::{m}::{name}"
            t = self.reader.get_tensor(key) if r0 is None else self.reader.get_rows(key, r0, r1)  # type: ignore[arg-type]
            cols.append(t.double().reshape(-1))
        return torch.stack(cols, dim=1)

    def mean_rows(self, name: str, r0: int | None = None, r1: int | None = None) -> torch.Tensor:
        key = f"mean::{name}"
        t = self.reader.get_tensor(key) if r0 is None else self.reader.get_rows(key, r0, r1)  # type: ignore[arg-type]
        return t.double().reshape(-1)

    # -- operations (see taskvec.basis.arithmetic) -------------------------------------------------
    def recover(self, task: str | int, progress: bool = False) -> TaskVector:
        """Task ``task`` reconstructed from the basis (warns when it is only a projection)."""
        from taskvec.basis.arithmetic import recover

        return recover(self, task, progress=progress)

    def addition(self, weights: float | Sequence[float] | dict[str, float] | None = None,
                 progress: bool = False) -> TaskVector:
        """``sum_i w_i v_i`` through the basis (``None``: all weights 1; a float: the same for all)."""
        from taskvec.basis.arithmetic import addition

        return addition(self, weights, progress=progress)

    def basis_sum(self, progress: bool = False) -> TaskVector:
        """The sum of the M basis vectors: uiuctml/TaskVectorBasis's task addition (see
        ``taskvec.basis.arithmetic.basis_sum``); :meth:`addition` sums the recovered tasks."""
        from taskvec.basis.arithmetic import basis_sum

        return basis_sum(self, progress=progress)

    def negation(self, task: str | int, progress: bool = False) -> TaskVector:
        """``-recover(task)``; refused for a task the basis cannot reconstruct exactly by design."""
        from taskvec.basis.arithmetic import negation

        return negation(self, task, progress=progress)

    def info(self, vectors: Sequence[Any] | None = None, progress: bool = False, chunk_elems: int | None = None) -> dict[str, Any]:
        """Storage and reconstruction errors (from the stored Gram; measured when ``vectors`` given)."""
        from taskvec.basis.arithmetic import info

        return info(self, vectors, progress=progress, chunk_elems=chunk_elems)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Basis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Basis({self.method}, M={self.M}, T={self.T}, per_layer={self.per_layer}, "
                f"{len(self.shapes)} tensors, file={str(self.path)!r})")


def load_basis(path: str | os.PathLike) -> Basis:
    """``Basis.load``."""
    return Basis.load(path)


def _parse_meta(raw: dict[str, str]) -> dict[str, Any]:
    def js(key: str, default: Any = None) -> Any:
        return json.loads(raw[key]) if key in raw else default

    per_layer = raw["per_layer"]
    if per_layer not in ("true", "false"):
        raise ValueError(f"per_layer is {per_layer!r}")
    meta: dict[str, Any] = {k: v for k, v in raw.items()}
    meta |= {
        "method": raw["method"],
        "M": int(raw["M"]),
        "T": int(raw["T"]),
        "seed": int(raw["seed"]),
        "per_layer": per_layer == "true",
        "tasks": [str(t) for t in js("tasks")],
        "groups": [str(g) for g in js("groups")],
        "stats_groups": [str(g) for g in js("stats_groups")],
        "tensor_shapes": {str(k): tuple(int(s) for s in v) for k, v in js("tensor_shapes")},
        "options": js("options", {}),
        "fit_info": js("fit_info", []),
        "collection": js("collection", {}),
        "span": js("span", None),
        "imported": js("imported", None),
    }
    if len(set(meta["tasks"])) != len(meta["tasks"]):
        raise ValueError("duplicate task names")
    return meta


LOADERS.register(KIND, load_basis)
