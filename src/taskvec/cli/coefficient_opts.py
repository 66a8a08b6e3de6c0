"""What ``taskvec search``, ``negate`` and ``compare`` share: the selection options (grid, held-out
slice), vector loading (files, bases, ``BASIS#TASK``) and accuracy formatting.

See docs/task_arithmetic.md for the protocols.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from taskvec.errors import UserInputError

DEFAULT_GRID = "0.1:1.0:0.1"


DEFAULT_NEG_GRID = "0.1:2.0:0.1"


def add_selection(p: argparse.ArgumentParser, grid: str) -> None:
    from taskvec.defaults import DEFAULT_HOLDOUT

    p.add_argument("--grid", default=grid, help=f"coefficients: start:stop:step (stop included) or a,b,c (default {grid})")
    p.add_argument("--limit", type=int, default=None, help="at most N search examples per task")
    p.add_argument("--split", default=None,
                   help="choose on this named split instead of the held-out train slice (not the eval split)")
    p.add_argument("--allow-eval-split", action="store_true",
                   help="allow --split to be a task's eval split (optimistic; the output is marked)")
    p.add_argument("--holdout", type=int, default=None,
                   help="size of the held-out train slice (default: the one the vectors were fine-tuned "
                        f"without, as their metadata records; else {DEFAULT_HOLDOUT})")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the held-out slice (default: the vectors' recorded one, else 0)")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (default 16)")
    p.add_argument("--force", action="store_true", help="use vectors whose base fingerprint differs from the model")


def check_positive_opt(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UserInputError(f"--{name} must be a positive integer, got {value}.")


def load_vectors(paths: list[str]) -> tuple[list[Any], list[str]]:
    """Vectors from files or bases (a basis gives all its tasks), with labels."""
    from taskvec.basis import load_basis_or_vector

    vectors, labels = [], []
    for path in paths:
        got = load_basis_or_vector(path)
        for i, v in enumerate(got):
            vectors.append(v)
            task = v.metadata.get("task")
            labels.append(str(task) if task else (Path(path).stem if len(got) == 1 else f"{path}#{i}"))
    return vectors, labels


def one_vector(path: str) -> Any:
    from taskvec.basis import load_one_vector

    return load_one_vector(path)


def load_model_for(args: argparse.Namespace, vectors: list[Any]) -> tuple[Any, Any]:
    from taskvec.models import load_model
    from taskvec.models.loading import check_dtype_device

    check_dtype_device(args.dtype, args.device)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    for v in vectors:
        v.check_base(model, force=args.force)
    return model, tok


def resolve_holdout(args: argparse.Namespace, vectors: list[Any]) -> None:
    """Fill ``args.holdout`` / ``args.seed`` left unset from the slice the vectors were trained without."""
    from taskvec.defaults import DEFAULT_HOLDOUT
    from taskvec.weights.protocol import recorded_holdout

    rec = recorded_holdout(vectors)
    if args.holdout is None:
        args.holdout = rec[0] if rec else DEFAULT_HOLDOUT
    if args.seed is None:
        args.seed = rec[1] if rec else 0


def check_selection(args: argparse.Namespace) -> list[float]:
    from taskvec.weights.search import parse_grid

    check_positive_opt("limit", args.limit)
    check_positive_opt("holdout", args.holdout)
    check_positive_opt("batch-size", args.batch_size)
    return parse_grid(args.grid)


def fmt_acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def acc_diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
