"""Activation vectors in memory and on disk (safetensors with provenance metadata).

An :class:`ActivationVector` is one of three kinds:

- ``function_vector``: ``vector`` (hidden,) added to the residual stream after ``layer``
  (Todd et al.); the file also keeps ``head_means`` (L, H, D), ``ie_scores`` (L, H) and, for
  models with a norm after attention (Gemma), ``attn_rms`` (L,).
- ``residual_vector``: ``vector`` (hidden,) that replaces (``mode="replace"``) or is added
  ``scale`` times to (``mode="add"``; ``mode="diff"``, where ``vector`` is the ICL mean minus
  the zero-shot mean) the residual stream after ``layer`` (Hendel et al.); optionally
  ``layer_means`` (L, hidden), the mean residual after every layer, and for ``diff``
  ``zero_shot_means`` (L, hidden).
- ``head_means``: ``head_means`` (L, H, D) and, for Gemma, ``attn_rms`` (L,) (not injectable).

File layout: tensors by name (``vector``, ``head_means``, ``ie_scores``, ``layer_means``,
``zero_shot_means``);
metadata strings: ``taskvec_kind`` (the kind), ``format_version`` ("1"), ``model``,
``model_fingerprint``, ``task``, ``layer``, ``heads`` (JSON list of [layer, head]),
``positions`` ("last", "last+generated", ...), ``method``, ``mode``, ``shots``, ``n_prompts``,
``scale``, ``seed``, ``extra`` (JSON: sweeps, timings), ``taskvec_version``, ``created``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskvec.activations.file_layout import (
    check_safetensors_suffix,
    open_metadata,
    parse_metadata,
    read_tensors,
    write_file,
)
from taskvec.activations.hooks import AddHook, Positions, ReplaceHook, positions_from_str
from taskvec.activations.intervention import Intervention
from taskvec.errors import (
    FileFormatError,
    NonFiniteError,
    ShapeMismatchError,
    UserInputError,
)
from taskvec.formats import LOADERS
from taskvec.models.adapter import get_adapter
from taskvec.models.fingerprint import check_fingerprint
from taskvec.models.sites import site_key
from taskvec.registry import Registry

__all__ = [
    "KINDS",
    "ActivationVector",
    "load_activation",
    "save_activation",
]

#: the hook site of function and residual vectors (files before the ``site`` key used it too)
DEFAULT_SITE = "resid_post"
_INT_KEYS = ("layer", "shots", "n_prompts", "seed")
_FLOAT_KEYS = ("scale",)
_REQUIRED = {
    "function_vector": ("vector",),
    "residual_vector": ("vector",),
    "head_means": ("head_means",),
}


@dataclass
class ActivationVector:
    """An activation-space task vector plus provenance (see the module docstring)."""

    kind: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in _REQUIRED:
            raise UserInputError(f'unknown activation vector kind "{self.kind}".')
        for name in _REQUIRED[self.kind]:
            if name not in self.tensors:
                raise FileFormatError(f'a {self.kind} needs a "{name}" tensor.')

    # ------------------------------------------------------------------ fields

    @property
    def vector(self) -> torch.Tensor:
        """The injected vector, (hidden,)."""
        if "vector" not in self.tensors:
            raise UserInputError(f"a {self.kind} file holds no injectable vector.")
        return self.tensors["vector"]

    @property
    def layer(self) -> int:
        return int(self.metadata["layer"])

    @property
    def scale(self) -> float:
        return float(self.metadata.get("scale", 1.0))

    @property
    def positions(self) -> Positions:
        return positions_from_str(str(self.metadata.get("positions", "last")))

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [(int(li), int(h)) for li, h in self.metadata.get("heads") or []]

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "?"))

    def describe(self) -> str:
        """A short label such as ``function vector (layer 9, 10 heads, x1)``."""
        if self.kind == "head_means":
            return "head means"
        what = "function vector" if self.kind == "function_vector" else "residual vector"
        extra = f", {len(self.heads)} heads" if self.kind == "function_vector" else ""
        mode = f", {self.metadata.get('mode', 'replace')}" if self.kind == "residual_vector" else ""
        return f"{what} (layer {self.layer}{extra}{mode}, x{self.scale:g})"

    # ------------------------------------------------------------------ use

    def check_model(self, model: nn.Module, force: bool = False) -> None:
        """Refuse a model of another shape; and, unless ``force``, of another fingerprint."""
        ad = get_adapter(model)
        if "vector" in self.tensors and self.vector.shape != (ad.hidden_size,):
            raise ShapeMismatchError(
                f"the {self.kind} has {tuple(self.vector.shape)} features but the model's hidden "
                f"size is {ad.hidden_size}: use the model it was extracted from."
            )
        if "layer" in self.metadata and not 0 <= self.layer < ad.n_layers:
            raise ShapeMismatchError(
                f"the {self.kind} is for layer {self.layer} but the model has {ad.n_layers} layers."
            )
        check_fingerprint(model, self.metadata, f"this {self.kind} was extracted from", force)

    def intervention(
        self,
        model: nn.Module,
        scale: float | None = None,
        layer: int | None = None,
        positions: Positions | None = None,
    ) -> Intervention:
        """An :class:`Intervention` that injects this vector into ``model`` (enter it to apply)."""
        return INTERVENTIONS.get(self.kind)(
            self,
            model,
            self.scale if scale is None else scale,
            self.layer if layer is None else layer,
            self.positions if positions is None else positions,
        )

    def save(self, path: str | os.PathLike) -> Path:
        return save_activation(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str | None = None) -> ActivationVector:
        return load_activation(path, kind)


# ---------------------------------------------------------------------------- injection

_Builder = Callable[[ActivationVector, nn.Module, float, int, Positions], Intervention]
#: kind -> intervention builder
INTERVENTIONS: Registry[_Builder] = Registry("injectable activation vector kind")


def _check_scale(scale: float) -> None:
    if not math.isfinite(scale):
        raise UserInputError(f"the scale must be a finite number, got {scale}.")


def _site(av: ActivationVector, scale: float, layer: int) -> list[str]:
    """The vector's hook site at ``layer``: ``resid_post`` unless the file names another."""
    _check_scale(scale)
    return [site_key(str(av.metadata.get("site", DEFAULT_SITE)), layer)]


@INTERVENTIONS.register("function_vector")
def _fv_intervention(
    av: ActivationVector, model: nn.Module, scale: float, layer: int, positions: Positions
) -> Intervention:
    return Intervention(model, sites=_site(av, scale, layer), hook=AddHook(av.vector, positions=positions, scale=scale))


@INTERVENTIONS.register("residual_vector")
def _residual_intervention(
    av: ActivationVector, model: nn.Module, scale: float, layer: int, positions: Positions
) -> Intervention:
    sites = _site(av, scale, layer)
    mode = av.metadata.get("mode", "replace")
    if mode in ("add", "diff"):
        return Intervention(model, sites=sites, hook=AddHook(av.vector, positions=positions, scale=scale))
    if mode != "replace":
        raise UserInputError(
            f"this residual vector has mode {mode!r}; known: diff, replace, add. Re-extract it "
            "with `taskvec residual extract`."
        )
    return Intervention(model, sites=sites, hook=ReplaceHook(av.vector * scale, positions=positions))


# ---------------------------------------------------------------------------- files


def save_activation(av: ActivationVector, path: str | os.PathLike) -> Path:
    """Write ``av`` atomically as ``.safetensors``."""
    path = check_safetensors_suffix(path, "activation vectors")
    for name, t in av.tensors.items():
        if not torch.isfinite(t).all() and name != "ie_scores":
            raise NonFiniteError(f'the {av.kind} tensor "{name}" has NaN or Inf values; not saved.')
    return write_file(path, av.kind, av.tensors, av.metadata, (*_INT_KEYS, *_FLOAT_KEYS))


def load_activation(path: str | os.PathLike, kind: str | None = None) -> ActivationVector:
    """Read an activation vector file; ``kind`` (or a tuple of kinds) restricts what is accepted.

    Raises ``MissingFileError``, or ``FileFormatError`` for anything that is not a complete
    taskvec activation file (truncated, corrupted, another kind, a weight-space task vector).
    """
    wanted = (kind,) if isinstance(kind, str) else tuple(kind or KINDS)
    path, meta, found = open_metadata(path, wanted, "activation vector")
    parse_metadata(path, meta, _INT_KEYS, _FLOAT_KEYS)
    tensors = read_tensors(path)
    av = ActivationVector(found, tensors, meta)
    if "vector" in tensors:
        if tensors["vector"].dim() != 1:
            raise FileFormatError(f"{path}: the vector must be 1-D, got {tuple(tensors['vector'].shape)}.")
        if not torch.isfinite(tensors["vector"]).all():
            raise NonFiniteError(f"{path}: the vector has NaN or Inf values; re-create it.")
        if "layer" not in meta:
            raise FileFormatError(f"{path} records no layer: re-create the file.")
    return av


#: the kinds of activation files
KINDS: tuple[str, ...] = tuple(_REQUIRED)
for _kind in KINDS:
    LOADERS.register(_kind, load_activation)
