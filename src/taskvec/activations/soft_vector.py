"""Soft task vectors in memory and on disk: per-head blend coefficients plus the head means.

A :class:`SoftTaskVector` holds, for a model with L layers of H heads of size D,

- ``coefficients`` t, (L, H): the trained logits; ``alpha = sigmoid(t / temperature)``;
- ``head_means`` m, (L, H, D): each head's mean o_proj input at the last token of k-shot prompts.

Applied (:meth:`SoftTaskVector.intervention`), each head's o_proj input a at the chosen positions
becomes ``(1 - alpha) * a + alpha * m`` (:class:`~taskvec.activations.hooks.BlendHook`).

File layout (``.safetensors``, float32, written atomically): tensors ``coefficients`` (L, H) and
``head_means`` (L, H, D); metadata strings ``taskvec_kind`` ("soft_task_vector"),
``format_version`` ("1"), ``model``, ``model_fingerprint``, ``task``, ``positions`` ("last" or
"last+generated"), ``temperature``, ``recipe`` (JSON: the training settings), ``validation_score``
(first-token accuracy of the kept checkpoint), ``validation_loss``, ``best_step``, ``n_params``
(L * H), ``extra`` (JSON: training history, zero-shot validation accuracy, head-mean provenance,
timing), ``taskvec_version``, ``created``. Coefficients may be +-inf (alpha exactly 1 or 0), never
NaN; the means must be finite.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from taskvec.activations import file_layout
from taskvec.activations.hooks import BlendHook, Positions, PositionSpec, positions_from_str
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

__all__ = ["KIND", "SoftBlendHook", "SoftTaskVector", "blend_intervention", "load_soft", "save_soft"]

KIND = "soft_task_vector"
_INT_KEYS = ("n_params", "best_step")
_FLOAT_KEYS = ("temperature", "validation_score", "validation_loss")


class SoftBlendHook(BlendHook):
    """:class:`BlendHook` with each layer's factors precomputed on the flat o_proj features.

    ``a' = a * (1 - alpha) + alpha * m`` with ``1 - alpha`` repeated over each head's D features
    and ``alpha * m`` flattened to (H*D,): the same values as BlendHook's per-head form, with
    fewer tensor ops per call (the hook runs on every layer of every forward). The factors are
    cached per (layer, dtype, device), except while gradients flow to a trainable alpha (then a
    cached graph could not be backpropagated twice).
    """

    def __init__(
        self,
        means: torch.Tensor,
        alpha: torch.Tensor,
        positions: PositionSpec = Positions.LAST,
        layer_of: dict[str, int] | None = None,
    ) -> None:
        super().__init__(means, alpha, positions, layer_of)
        self._flat: dict[tuple[str, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _factors(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer_of[name]
        m = self.means[layer].to(device=x.device, dtype=x.dtype)  # (H, D)
        n_heads, head_dim = m.shape
        if x.shape[-1] != n_heads * head_dim:
            raise ShapeMismatchError(
                f"{name}: input has {x.shape[-1]} features but means are {n_heads} x {head_dim}."
            )
        a = self.alpha[layer].to(device=x.device, dtype=x.dtype)[:, None]  # (H, 1)
        scale = (1 - a).expand(n_heads, head_dim).reshape(-1)  # (H*D,)
        shift = (a * m).reshape(-1)  # (H*D,)
        return scale, shift

    def edit(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if self.alpha.requires_grad and torch.is_grad_enabled():
            scale, shift = self._factors(name, x)
        else:
            key = (name, x.dtype, x.device)
            if key not in self._flat:
                self._flat[key] = self._factors(name, x)
            scale, shift = self._flat[key]
        return x * scale + shift  # (B, t, H*D)


def blend_intervention(
    model: nn.Module,
    means: torch.Tensor,
    alpha: torch.Tensor,
    positions: PositionSpec = Positions.LAST,
) -> Intervention:
    """An :class:`Intervention` blending every layer's o_proj input per head with ``means``.

    ``means`` (L, H, D); ``alpha`` (L, H), may require grad. Enter it to apply.
    """
    ad = get_adapter(model)
    want = (ad.n_layers, ad.n_heads, ad.head_dim)
    if tuple(means.shape) != want:
        raise ShapeMismatchError(
            f"head means of shape {tuple(means.shape)} do not fit this model's "
            f"(layers, heads, head_dim) = {want}: use the model they were extracted from."
        )
    if tuple(alpha.shape) != want[:2]:
        raise ShapeMismatchError(f"alpha must be (layers, heads) = {want[:2]}, got {tuple(alpha.shape)}.")
    sites = [site_key("head_out", i) for i in range(ad.n_layers)]
    layer_of = {k: i for i, k in enumerate(sites)}
    return Intervention(model, sites=sites, hook=SoftBlendHook(means, alpha, positions=positions, layer_of=layer_of))


@dataclass
class SoftTaskVector:
    """Trained per-head blend coefficients and the head means they blend towards."""

    coefficients: torch.Tensor  # (L, H) t
    head_means: torch.Tensor  # (L, H, D)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t, m = self.coefficients, self.head_means
        if t.dim() != 2 or m.dim() != 3 or tuple(t.shape) != tuple(m.shape[:2]):
            raise ShapeMismatchError(
                f"coefficients {tuple(t.shape)} must be (L, H) and head means {tuple(m.shape)} "
                "(L, H, D) with the same L and H."
            )
        if not t.is_floating_point() or not m.is_floating_point():
            raise ShapeMismatchError("coefficients and head means must be floating-point tensors.")
        if torch.isnan(t).any():
            raise NonFiniteError("the soft task vector's coefficients contain NaN.")
        if not torch.isfinite(m).all():
            raise NonFiniteError("the soft task vector's head means contain NaN or Inf.")
        temp = self.temperature
        if not (math.isfinite(temp) and temp > 0):
            raise UserInputError(f"the temperature must be a positive number, got {temp}.")

    # ------------------------------------------------------------------ fields

    @property
    def n_layers(self) -> int:
        return int(self.coefficients.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.coefficients.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.head_means.shape[2])

    @property
    def temperature(self) -> float:
        return float(self.metadata.get("temperature", 1.0))

    @property
    def alpha(self) -> torch.Tensor:
        """Blend weights ``sigmoid(t / temperature)``, (L, H) in [0, 1]."""
        return torch.sigmoid(self.coefficients.float() / self.temperature)

    @property
    def positions(self) -> Positions:
        return positions_from_str(str(self.metadata.get("positions", "last")))

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "?"))

    @property
    def n_params(self) -> int:
        """Trained parameters: one coefficient per (layer, head)."""
        return int(self.coefficients.numel())

    @property
    def n_values(self) -> int:
        """Values stored: coefficients plus head means."""
        return int(self.coefficients.numel() + self.head_means.numel())

    @property
    def validation_score(self) -> float | None:
        v = self.metadata.get("validation_score")
        return None if v is None else float(v)

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the largest alpha: ``(layer, head, alpha)``, largest first."""
        a = self.alpha.flatten()
        order = torch.argsort(a, descending=True, stable=True)[: max(0, k)]
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(a[i])) for i in order]

    def describe(self) -> str:
        """A short label such as ``soft task vector (270 coefficients)``."""
        return f"soft task vector ({self.n_params} coefficients)"

    # ------------------------------------------------------------------ use

    def check_model(self, model: nn.Module, force: bool = False) -> None:
        """Refuse a model of another head geometry; and, unless ``force``, of another fingerprint."""
        ad = get_adapter(model)
        have = (ad.n_layers, ad.n_heads, ad.head_dim)
        mine = (self.n_layers, self.n_heads, self.head_dim)
        if have != mine:
            raise ShapeMismatchError(
                f"this soft task vector is for (layers, heads, head_dim) = {mine} but the model has "
                f"{have}: use the model it was trained on."
            )
        check_fingerprint(model, self.metadata, "this soft task vector was trained on", force)

    def intervention(self, model: nn.Module, positions: PositionSpec | str | None = None) -> Intervention:
        """An :class:`Intervention` applying the vector to ``model`` (enter it to apply).

        ``positions`` defaults to the file's (``last``: the last prompt token of each prefill
        call; ``last+generated``: also every generated token).
        """
        if isinstance(positions, str):
            positions = positions_from_str(positions)
        pos = self.positions if positions is None else positions
        dev = next(model.parameters()).device
        return blend_intervention(model, self.head_means.to(dev), self.alpha.to(dev), pos)

    def save(self, path: str | os.PathLike) -> Path:
        return save_soft(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SoftTaskVector:
        return load_soft(path)


# ---------------------------------------------------------------------------- files


def save_soft(sv: SoftTaskVector, path: str | os.PathLike) -> Path:
    """Write ``sv`` atomically as ``.safetensors`` (see the module docstring for the layout)."""
    path = file_layout.check_safetensors_suffix(path, "soft task vectors")
    meta = dict(sv.metadata) | {"n_params": sv.n_params, "temperature": sv.temperature}
    tensors = {"coefficients": sv.coefficients, "head_means": sv.head_means}  # (L, H), (L, H, D)
    return file_layout.write_file(path, KIND, tensors, meta, (*_INT_KEYS, *_FLOAT_KEYS))


def load_soft(path: str | os.PathLike) -> SoftTaskVector:
    """Read a soft task vector file.

    Raises ``MissingFileError``, or ``FileFormatError`` for anything that is not a complete soft
    task vector file (truncated, corrupted, another kind, inconsistent shapes or metadata).
    """
    path, meta, _ = file_layout.open_metadata(path, KIND, "soft task vector")
    file_layout.parse_metadata(path, meta, _INT_KEYS, _FLOAT_KEYS)
    if "recipe" in meta and not isinstance(meta["recipe"], dict):
        raise FileFormatError(f"{path} has a malformed training recipe in its metadata: re-create it.")
    tensors = file_layout.read_tensors(path)
    missing = {"coefficients", "head_means"} - set(tensors)
    if missing:
        raise FileFormatError(f"{path} has no {', '.join(sorted(missing))} tensor: re-create the file.")
    try:
        sv = SoftTaskVector(tensors["coefficients"], tensors["head_means"], meta)
    except (ShapeMismatchError, NonFiniteError, UserInputError) as exc:
        raise FileFormatError(f"{path}: {exc} Re-create the file.") from None
    if "n_params" in meta and meta["n_params"] != sv.n_params:
        raise FileFormatError(
            f"{path} records {meta['n_params']} parameters but holds {sv.n_params}: the file is corrupted."
        )
    return sv


LOADERS.register(KIND, load_soft)
