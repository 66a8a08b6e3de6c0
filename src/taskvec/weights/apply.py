"""Applying a task vector to a model in memory, and checking that it fits the base."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from taskvec.errors import NonFiniteError, ShapeMismatchError
from taskvec.weights.lowrank import add_scaled_, same_delta

if TYPE_CHECKING:
    from taskvec.weights.vector import TaskVector


def _resolve_params(vector: TaskVector, model: Any) -> dict[str, torch.nn.Parameter]:
    """Map every vector name to a parameter; check shapes and tied aliases before any change.

    A delta given under both names of a tied parameter (``lm_head.weight`` and
    ``model.embed_tokens.weight`` of a tied model: what a full-state-dict ``.pth`` holds) is
    applied once when the two deltas are equal, and refused when they differ.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, torch.nn.Parameter] = {}
    seen: dict[int, str] = {}
    for name, delta in vector.items():
        p = params.get(name)
        if p is None:
            close = [n for n in params if n.endswith(name.split(".", 1)[-1])][:1]
            hint = f' (the model has "{close[0]}")' if close else ""
            raise ShapeMismatchError(
                f'the vector changes "{name}" but the model has no such parameter{hint}: '
                "apply it to the base model it was made from."
            )
        if tuple(p.shape) != tuple(delta.shape):
            raise ShapeMismatchError(
                f'"{name}" is {tuple(delta.shape)} in the vector but {tuple(p.shape)} in the model: '
                "apply it to the base model it was made from."
            )
        if id(p) in seen:  # tied weights (e.g. lm_head = embed_tokens): apply once
            first = seen[id(p)]
            if same_delta(delta, vector[first]):
                continue
            raise ShapeMismatchError(
                f'"{name}" and "{first}" are the same (tied) parameter in this model, but the vector '
                "gives them different deltas: keep one of the two (or rebuild it from the tied model)."
            )
        seen[id(p)] = name
        out[name] = p
    return out


@torch.no_grad()
def apply_in_place(vector: TaskVector, model: Any, scale: float = 1.0) -> None:
    """``param += scale * delta`` for every delta, one tensor at a time (no model copy)."""
    if not math.isfinite(scale):
        raise NonFiniteError(f"scale must be finite, got {scale}.")
    params = _resolve_params(vector, model)
    for name, delta in vector.items():
        if name not in params:  # the tied alias of a parameter already updated
            continue
        p = params[name]
        with torch.no_grad():
            if p.dtype == torch.float32:
                add_scaled_(p.data, delta, scale)
            else:  # add in fp32, round once
                p.copy_(add_scaled_(p.data, delta, scale))


def check_fingerprint(vector: TaskVector, model_or_dir: Any, force: bool = False) -> None:
    """Raise ``FingerprintMismatchError`` if the vector was made on a different base."""
    from taskvec.models.fingerprint import check_fingerprint as check

    have = Path(model_or_dir) if isinstance(model_or_dir, str) else model_or_dir
    check(have, vector.metadata, "this vector was made on base", force)
