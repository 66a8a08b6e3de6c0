"""``TaskVector``: finetuned - pretrained, dense or exact low-rank, with arithmetic."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from taskvec.errors import NonFiniteError, ShapeMismatchError, UserInputError
from taskvec.weights.lowrank import Delta, LowRankDelta, dense_of, svd_low_rank

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter name, or None (embeddings, final norm)."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_kind(name: str) -> str:
    """Short module name of a parameter, e.g. ``q_proj`` for ``...self_attn.q_proj.weight``."""
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else parts[-1]


def _state_items(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a model (unique parameters), a state dict or a HF directory."""
    if isinstance(obj, (str, os.PathLike)):
        from taskvec.formats import SafetensorsReader, model_safetensors_files

        for f in model_safetensors_files(Path(obj)):  # the shard index, when there is one
            with SafetensorsReader(f) as r:
                for k in r.keys():
                    yield k, r.get_tensor(k)
        return
    if isinstance(obj, Mapping):
        yield from obj.items()
        return
    for k, p in obj.named_parameters():
        yield k, p.detach()


def _is_weights(obj: Any) -> bool:
    """A model, a model directory, or a non-empty state dict of tensors (not metadata)."""
    if isinstance(obj, torch.nn.Module):
        return True
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).is_dir()
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


class TaskVector:
    """A task vector: parameter name -> delta (a dense tensor or a ``LowRankDelta``).

    Names are the base model's parameter names. Arithmetic (``+``, ``-``, unary ``-``, scalar
    ``*``) returns new vectors; low-rank + low-rank stays low-rank (stacked factors, exact).

    Besides ``TaskVector(deltas, metadata)``, the call forms of Task_vector_Interpretation_and_
    Analysis work as written (docs/seeds.md): ``TaskVector(pretrained, finetuned)`` (two models,
    state dicts or model directories: ``finetuned - pretrained``, as :meth:`from_models`) and
    ``TaskVector(vector=state_dict)``; ``.vector`` is the ``{name: dense delta}`` dict.
    """

    def __init__(self, deltas: Any = None, metadata: Any = None, *, vector: Mapping[str, Any] | None = None) -> None:
        if vector is not None:
            if deltas is not None:
                raise UserInputError("pass the deltas once: TaskVector(deltas) or TaskVector(vector=deltas).")
            deltas = vector
        elif _is_weights(deltas) and _is_weights(metadata):  # TaskVector(pretrained, finetuned)
            built = TaskVector.from_models(deltas, metadata)
            deltas, metadata = built.deltas, built.metadata
        if not isinstance(deltas, Mapping):
            raise UserInputError(
                f"TaskVector takes {{name: delta}} (or pretrained and finetuned models), got {type(deltas).__name__}."
            )
        self.deltas: dict[str, Delta] = dict(deltas)
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def vector(self) -> dict[str, torch.Tensor]:
        """``{name: dense delta}`` (low-rank deltas densified), e.g. for ``torch.save``."""
        return {k: d.to_dense() if isinstance(d, LowRankDelta) else d for k, d in self.deltas.items()}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_models(
        cls, base: Any, finetuned: Any, metadata: Mapping[str, Any] | None = None
    ) -> TaskVector:
        """``finetuned - base`` for every changed tensor (models, state dicts or HF directories)."""
        base_sd = dict(_state_items(base))
        deltas: dict[str, Delta] = {}
        seen = set()
        for name, ft in _state_items(finetuned):
            if name not in base_sd:
                raise ShapeMismatchError(
                    f'tensor "{name}" is in the fine-tuned model but not in the base: '
                    "are they the same architecture?"
                )
            b = base_sd[name]
            if b.shape != ft.shape:
                raise ShapeMismatchError(
                    f'tensor "{name}" has shape {tuple(ft.shape)} but {tuple(b.shape)} in the base.'
                )
            seen.add(name)
            if torch.equal(b, ft):
                continue
            deltas[name] = ft.float() - b.float()
        meta = {"storage": "dense"} | dict(metadata or {})
        if "base_fingerprint" not in meta:
            from taskvec.models.fingerprint import fingerprint

            meta["base_fingerprint"] = fingerprint(base)
        return cls(deltas, meta)

    @classmethod
    def from_peft(cls, adapter_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> TaskVector:
        """The exact low-rank vector of a PEFT LoRA adapter directory (no dense deltas built)."""
        from taskvec.weights.peft_io import read_peft_adapter

        return read_peft_adapter(adapter_dir, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        """Load a ``.safetensors`` task vector (or a ``.pth`` state dict of deltas)."""
        from taskvec.weights.io import load_vector

        return load_vector(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Save as safetensors with metadata (atomic); ``.pth`` writes a plain dense state dict."""
        from taskvec.weights.io import save_vector

        return save_vector(self, path)

    # -- views ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.deltas)

    def __iter__(self) -> Iterator[str]:
        return iter(self.deltas)

    def __getitem__(self, name: str) -> Delta:
        return self.deltas[name]

    def items(self):
        return self.deltas.items()

    @property
    def names(self) -> list[str]:
        return list(self.deltas)

    @property
    def form(self) -> str:
        """``dense``, ``low-rank`` or ``mixed`` (e.g. LoRA factors plus dense biases)."""
        lr = sum(isinstance(d, LowRankDelta) for d in self.deltas.values())
        if lr == 0:
            return "dense"
        return "low-rank" if lr == len(self.deltas) else "mixed"

    def numel(self) -> int:
        """Values stored (factors for low-rank deltas)."""
        return sum(d.numel() for d in self.deltas.values())

    def dense_numel(self) -> int:
        """Values the dense form of this vector would store."""
        return sum(math.prod(d.shape) for d in self.deltas.values())

    def __repr__(self) -> str:
        return (
            f"TaskVector({len(self)} tensors, {self.form}, {self.numel():,} values, "
            f"task={self.metadata.get('task', '?')!r})"
        )

    # -- conversion -----------------------------------------------------------------------
    def to_dense(self) -> TaskVector:
        """Every delta as a dense float32 tensor."""
        return TaskVector({k: dense_of(d) for k, d in self.deltas.items()}, self._meta(storage="dense"))

    def to_low_rank(self, rank: int | None = None, energy: float | None = None) -> TaskVector:
        """Truncated SVD of every 2-D delta (1-D deltas such as norms stay dense).

        Low-rank deltas are never densified: the SVD goes through their factors
        (``core_space.compress``), and with neither ``rank`` nor ``energy`` they are brought to
        their minimal (numerical) rank, e.g. after a sum or a merge."""
        from taskvec.weights.core_space import compress

        out: dict[str, Delta] = {}
        for k, d in self.deltas.items():
            if len(d.shape) != 2:
                out[k] = d
            elif isinstance(d, LowRankDelta):
                out[k] = compress(d, rank, energy)[0]
            else:
                out[k] = svd_low_rank(dense_of(d), rank=rank, energy=energy)
        tv = TaskVector(out, self._meta())
        tv.metadata["storage"] = tv.form
        return tv

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return dict(self.metadata) | extra

    # -- arithmetic -----------------------------------------------------------------------
    def __add__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        out: dict[str, Delta] = dict(self.deltas)
        for k, d in other.deltas.items():
            if k not in out:
                out[k] = d
                continue
            a = out[k]
            if a.shape != d.shape:
                raise ShapeMismatchError(f'"{k}" has shape {tuple(a.shape)} in one vector and {tuple(d.shape)} in the other.')
            if isinstance(a, LowRankDelta) and isinstance(d, LowRankDelta):
                out[k] = a.concat(d)
            else:
                out[k] = dense_of(a) + dense_of(d)
        tv = TaskVector(out, _merge_meta(self.metadata, other.metadata, "+"))
        tv.metadata["storage"] = tv.form
        return tv

    def __radd__(self, other: Any) -> TaskVector:
        if other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented

    def __mul__(self, c: float) -> TaskVector:
        if not isinstance(c, (int, float)):
            return NotImplemented
        if not math.isfinite(c):
            raise NonFiniteError(f"scaling coefficient must be finite, got {c}.")
        out = {k: (d.scaled(c) if isinstance(d, LowRankDelta) else d * c) for k, d in self.deltas.items()}
        return TaskVector(out, self._meta())

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> TaskVector:
        return self * (1.0 / c)

    def __neg__(self) -> TaskVector:
        tv = self * -1.0
        task = self.metadata.get("task")
        if task:
            tv.metadata["task"] = f"-({task})"
        return tv

    def __sub__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        tv = self + (-other)
        tv.metadata["task"] = _merge_meta(self.metadata, other.metadata, "-").get("task")
        return tv

    # -- geometry -------------------------------------------------------------------------
    def dot(self, other: TaskVector) -> float:
        """Inner product over shared tensors (low-rank factors are never densified together)."""
        total = 0.0
        for k, d in self.deltas.items():
            o = other.deltas.get(k)
            if o is None:
                continue
            if isinstance(d, LowRankDelta):
                total += d.dot(o)
            elif isinstance(o, LowRankDelta):
                total += o.dot(d)
            else:
                total += float((d.double() * o.double()).sum())
        return total

    def norm(self) -> float:
        """Frobenius norm over all deltas."""
        return math.sqrt(max(self.dot(self), 0.0))

    def cosine(self, other: TaskVector) -> float:
        """Cosine similarity with another vector (0 if either is zero)."""
        n = self.norm() * other.norm()
        return self.dot(other) / n if n > 0 else 0.0

    def stats(self) -> list[dict[str, Any]]:
        """Per-tensor statistics: layer, module, form, rank, shape, norm, stored values."""
        rows = []
        for k, d in self.deltas.items():
            lr = isinstance(d, LowRankDelta)
            rows.append(
                {
                    "name": k,
                    "layer": layer_of(k),
                    "module": module_kind(k),
                    "form": "low-rank" if lr else "dense",
                    "rank": d.rank if lr else None,
                    "shape": list(d.shape),
                    "norm": math.sqrt(max(d.norm2(), 0.0)) if lr else float(d.double().norm()),
                    "numel": d.numel(),
                }
            )
        return rows

    def check_finite(self) -> None:
        """Raise ``NonFiniteError`` if any delta holds NaN or Inf."""
        for k, d in self.deltas.items():
            parts = (d.A, d.B) if isinstance(d, LowRankDelta) else (d,)
            for t in parts:
                if not torch.isfinite(t).all():
                    raise NonFiniteError(f'tensor "{k}" contains NaN or Inf: the vector is corrupt; rebuild it.')
            if isinstance(d, LowRankDelta) and not math.isfinite(d.scale):
                raise NonFiniteError(f'tensor "{k}" has a non-finite scale.')

    # -- application (in memory) ----------------------------------------------------------
    def apply_to(self, model: Any, scale: float = 1.0) -> Any:
        """Add ``scale * vector`` to ``model``'s parameters in place, tensor by tensor."""
        from taskvec.weights.apply import apply_in_place

        apply_in_place(self, model, scale)
        return model

    def remove_from(self, model: Any, scale: float = 1.0) -> Any:
        """Subtract ``scale * vector`` (undoes ``apply_to`` to within float rounding)."""
        from taskvec.weights.apply import apply_in_place

        apply_in_place(self, model, -scale)
        return model

    def check_base(self, model_or_dir: Any, force: bool = False) -> None:
        """Refuse a base whose fingerprint differs from the one the vector was made on."""
        from taskvec.weights.apply import check_fingerprint

        check_fingerprint(self, model_or_dir, force)


def _merge_meta(a: Mapping[str, Any], b: Mapping[str, Any], op: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("base_model", "base_fingerprint"):
        if a.get(key) is not None and a.get(key) == b.get(key):
            out[key] = a[key]
        elif a.get(key) is not None and b.get(key) is None:
            out[key] = a[key]
        elif b.get(key) is not None and a.get(key) is None:
            out[key] = b[key]
    ta, tb = a.get("task"), b.get("task")
    if ta or tb:
        out["task"] = f"{ta or '?'} {op} {tb or '?'}"
    return out
