"""Accuracy with activation vectors injected: sweeps on validation data, comparisons on test data.

Everything reuses :func:`taskvec.eval.evaluate` (first-token accuracy for ICL generation tasks);
a vector is applied by wrapping the zero-shot evaluation in its :class:`Intervention`. The
comparison table (:func:`compare`) runs on the TEST split by default, which extraction never
touches (head means and the IE scan use train prompts, the sweeps the validation split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from torch import nn

from taskvec.activations.activation_vector import ActivationVector
from taskvec.activations.collect import progress_bar
from taskvec.activations.intervention import Intervention
from taskvec.errors import UserInputError
from taskvec.eval.harness import EvalResult, evaluate

__all__ = ["accuracy", "compare", "grid_sweep", "load_examples", "sweep"]


def sweep_split(task: Any) -> str:
    """The split used to choose layers and scales: validation (never the test split)."""
    if "validation" in task.splits and task.train_split != "validation":
        return "validation"
    return task.eval_split


def load_examples(task: Any, split: str, limit: int | None) -> list[dict]:
    """The first ``limit`` examples of ``split`` (all when None), checked non-empty."""
    if split not in task.splits:
        from taskvec.errors import unknown_name

        raise unknown_name(f"split of task {task.name}", split, task.splits)
    if limit is not None and limit <= 0:
        raise UserInputError(f"--limit must be a positive number, got {limit}.")
    examples = task.load(split, limit=limit)
    if not examples:
        raise UserInputError(f"task {task.name} split {split} has no examples.")
    return list(examples)


def accuracy(
    model: nn.Module,
    tok: Any,
    task: Any,
    examples: Sequence[dict],
    intervention: Intervention | None = None,
    shots: int = 0,
    shuffle_labels: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    split: str = "validation",
    progress: bool = False,
) -> EvalResult:
    """:func:`taskvec.eval.evaluate` on ``examples``, inside ``intervention`` if given."""
    with intervention if intervention is not None else nullcontext():
        return evaluate(
            model, tok, task, split=split, shots=shots, seed=seed, batch_size=batch_size,
            progress=progress, examples=examples, shuffle_labels=shuffle_labels,
        )


def sweep(
    model: nn.Module,
    tok: Any,
    task: Any,
    examples: Sequence[dict],
    make: Callable[[Any], Intervention],
    values: Sequence[Any],
    batch_size: int = 16,
    split: str = "validation",
    progress: bool = False,
    desc: str = "sweep",
) -> dict[Any, float]:
    """Zero-shot accuracy on ``examples`` with ``make(value)`` applied, for every value."""
    out: dict[Any, float] = {}
    with progress_bar(len(values), desc, progress, unit="run") as upd:
        for v in values:
            res = accuracy(model, tok, task, examples, make(v), batch_size=batch_size, split=split)
            out[v] = res.accuracy
            if upd:
                upd(1)
    return out


def grid_sweep(
    model: nn.Module,
    tok: Any,
    task: Any,
    examples: Sequence[dict],
    make: Callable[[int, float], Intervention],
    layers: Sequence[int],
    scales: Sequence[float],
    batch_size: int = 16,
    split: str = "validation",
    progress: bool = False,
    desc: str = "sweep",
) -> tuple[int, float, dict[str, Any]]:
    """Choose ``(layer, scale)`` jointly: zero-shot accuracy with ``make(layer, scale)`` applied
    at every grid point. Returns ``(layer, scale, extra)``; ``extra`` has ``grid_accuracy``
    ({"L:S": acc}), ``layer_accuracy`` (best scale per layer) and ``scale_accuracy`` (at the
    chosen layer), each only when that axis has more than one value."""
    grid = [(li, float(s)) for li in layers for s in scales]
    if len(grid) == 1:
        return grid[0][0], grid[0][1], {}
    by_cfg = sweep(
        model, tok, task, examples, lambda cfg: make(*cfg), grid, batch_size, split, progress,
        f"{desc} layer x scale sweep" if len(scales) > 1 else f"{desc} layer sweep",
    )
    layer, scale = best(by_cfg)
    extra: dict[str, Any] = {}
    if len(layers) > 1:
        extra["layer_accuracy"] = {str(li): max(by_cfg[(li, float(s))] for s in scales) for li in layers}
    if len(scales) > 1:
        extra["scale_accuracy"] = {f"{s:g}": by_cfg[(layer, float(s))] for s in scales}
        extra["grid_accuracy"] = {f"{li}:{s:g}": a for (li, s), a in by_cfg.items()}
    return layer, scale, extra


def best(scores: dict[Any, float]) -> Any:
    """The key with the highest score (the first one on ties)."""
    return max(scores, key=lambda k: (scores[k], -list(scores).index(k)))


def compare(
    model: nn.Module,
    tok: Any,
    task: Any,
    vectors: Sequence[ActivationVector] = (),
    split: str = "test",
    limit: int | None = None,
    shots: int = 10,
    seed: int = 0,
    batch_size: int = 16,
    scale: float | None = None,
    layer: int | None = None,
    progress: bool = False,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Rows of {method, accuracy, n, ...}: zero-shot, k-shot ICL, shuffled-label ICL, then each
    vector injected into the zero-shot prompts (``scale`` / ``layer`` override the file's).

    Vectors are checked against the model (shape; fingerprint unless ``force``)."""
    examples = load_examples(task, split, limit)
    runs: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("zero-shot", {}, {}),
        (f"{shots}-shot ICL", {"shots": shots}, {}),
        (f"{shots}-shot shuffled labels", {"shots": shots, "shuffle_labels": True}, {}),
    ]
    if shots == 0:
        runs = runs[:1]
    for i, av in enumerate(vectors):
        av.check_model(model, force=force)
        runs.append((av.describe() if scale is None and layer is None else av.kind, {}, {"i": i}))
    rows = []
    with progress_bar(len(runs), f"{task.name} {split}", progress, unit="run") as upd:
        for name, kw, vec in runs:
            iv = None
            row: dict[str, Any] = {"method": name}
            if vec:
                av = vectors[vec["i"]]
                iv = av.intervention(model, scale=scale, layer=layer)
                row |= {
                    "kind": av.kind,
                    "layer": av.layer if layer is None else layer,
                    "scale": av.scale if scale is None else scale,
                }
                if av.kind == "residual_vector":
                    row["mode"] = av.metadata.get("mode", "replace")
                if scale is not None or layer is not None:
                    row["method"] = f"{av.kind.replace('_', ' ')} (layer {row['layer']}, x{row['scale']:g})"
            res = accuracy(
                model, tok, task, examples, iv, seed=seed, batch_size=batch_size, split=split, **kw
            )
            rows.append(row | {"accuracy": res.accuracy, "n": res.n, "split": split,
                               "seconds": res.seconds})
            if upd:
                upd(1)
    return rows
