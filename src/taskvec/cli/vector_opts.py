"""--vector / --scale / --force options shared by eval and generate: the one door for every kind
of vector (weight-space, BASIS#TASK, function, residual, soft)."""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskvec.errors import UserInputError


def add_vector_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", default=None,
                   help="any taskvec vector: a weight-space vector file (or BASIS#TASK, a task recovered "
                        "from a basis), applied to the weights; or a function / residual / soft vector "
                        "file, injected into the activations")
    p.add_argument("--scale", type=float, default=None,
                   help="scaling coefficient of --vector (default: 1.0; an activation vector's own scale)")
    p.add_argument("--force", action="store_true", help="apply even if the base fingerprint differs")


#: file kinds that act on activations (through an Intervention) rather than on the weights
ACTIVATION_KINDS = ("function_vector", "residual_vector", "soft_task_vector")


@dataclass
class LoadedVector:
    """What --vector named: its kind, the object, and the scale it is used at."""

    kind: str
    vector: Any
    scale: float | None

    def describe(self, spec: str) -> str:
        scale = "" if self.scale is None else f"{self.scale:g} x "
        return f"{scale}{spec} ({self.kind.replace('_', ' ')})"


def open_vector(spec: str, scale: float | None) -> LoadedVector:
    """Any kind of vector file (validated before any model is loaded)."""
    from taskvec.formats import KINDS, LOADERS, file_kind, wrong_kind

    path = Path(spec)
    kind = file_kind(path) if path.suffix == ".safetensors" and path.is_file() else None
    if kind in ACTIVATION_KINDS:
        import taskvec.activations.activation_vector  # noqa: F401 - registers the activation file loaders
        import taskvec.activations.soft_vector  # noqa: F401

        vec = LOADERS.get(kind)(path)
        if kind == "soft_task_vector":
            if scale is not None:
                raise UserInputError("a soft task vector has no scale: drop --scale.")
            return LoadedVector(kind, vec, None)
        return LoadedVector(kind, vec, vec.scale if scale is None else scale)
    if kind in KINDS and kind not in ("task_vector", "task_vector_basis"):
        raise wrong_kind(path, kind, ("task_vector", *ACTIVATION_KINDS))
    from taskvec.basis import load_one_vector

    return LoadedVector("task_vector", load_one_vector(spec), 1.0 if scale is None else scale)


def load_model_with_vector(args: argparse.Namespace) -> tuple[Any, Any, LoadedVector | None, Any]:
    """Validate --vector/--scale, load the model, and use the vector: a weight vector is applied
    in memory; an activation vector gives the context (an Intervention) to run the model in.

    Returns ``(model, tokenizer, loaded vector or None, context)``.
    """
    from taskvec.models import load_model
    from taskvec.models.loading import check_dtype_device

    if args.scale is not None and not math.isfinite(args.scale):
        raise UserInputError(f"--scale must be a finite number, got {args.scale}.")
    check_dtype_device(args.dtype, args.device)
    vec = open_vector(args.vector, args.scale) if args.vector else None  # before the model
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    ctx: Any = nullcontext()
    if vec is not None and vec.kind == "task_vector":
        vec.vector.check_base(model, force=args.force)
        vec.vector.apply_to(model, vec.scale)
    elif vec is not None:
        vec.vector.check_model(model, force=args.force)
        if vec.kind == "soft_task_vector":
            ctx = vec.vector.intervention(model)
        else:
            ctx = vec.vector.intervention(model, scale=vec.scale)
    return model, tok, vec, ctx
