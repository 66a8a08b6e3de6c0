"""Protocol guards: coefficients must be chosen on examples the vectors were not trained on.

A vector's metadata records how it was trained (``recipe``: task, split, and the held-out slice
``holdout`` / ``holdout_seed`` that ``taskvec finetune`` and ``build_collection`` keep out of
training). Before a search or a negation, :func:`selection_issues` compares that with where the
selection will happen and returns one line per problem:

- selecting on the held-out slice of a task whose vector was trained on the *whole* train split
  (those "held-out" examples are training examples);
- a search slice that is not inside the slice the vector was trained without (another seed, or
  more examples than were held out: the slice of ``n`` is the last ``n`` of a seeded permutation,
  so a smaller ``n`` with the same seed is a subset);
- selecting on the very split the vector was trained on.

Choosing on a task's eval split (the split the final numbers come from) is refused by
:func:`taskvec.weights.search.search_examples` unless ``allow_eval_split=True``; results chosen so
carry ``selected_on_eval_split: true``. Vectors without a recipe (other tools' files) give no issue:
nothing is known about their training data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from taskvec.defaults import DEFAULT_HOLDOUT

FIT_SPLIT = "train_fit"
SEARCH_SPLIT = "search_holdout"


def training_record(vector: Any) -> dict[str, Any] | None:
    """``{"task", "split", "holdout", "holdout_seed"}`` from a vector's recipe, or None."""
    meta = getattr(vector, "metadata", None) or {}
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict):
        return None
    task = recipe.get("task") or meta.get("task")
    if not task or not recipe.get("split"):
        return None
    held = recipe.get("holdout")
    seed = recipe.get("holdout_seed", 0)
    if isinstance(held, dict):  # {"n": N, "seed": S}
        held, seed = held.get("n"), held.get("seed", 0)
    return {"task": str(task), "split": str(recipe["split"]), "holdout": int(held) if held else 0,
            "holdout_seed": int(seed or 0)}


def recorded_holdout(vectors: Iterable[Any]) -> tuple[int, int] | None:
    """The ``(n, seed)`` of the held-out slice the vectors were trained without, if they all agree."""
    seen = {(r["holdout"], r["holdout_seed"]) for r in map(training_record, vectors)
            if r and r["split"] == FIT_SPLIT and r["holdout"]}
    return seen.pop() if len(seen) == 1 else None


def selection_issues(vectors: Iterable[Any], task_names: Iterable[str], split: str | None,
                     holdout: int = DEFAULT_HOLDOUT, seed: int = 0,
                     train_splits: dict[str, str] | None = None) -> list[str]:
    """One line per way the planned selection would see a vector's training examples."""
    names = set(task_names)
    train_splits = train_splits or {}
    out: list[str] = []
    for i, v in enumerate(vectors):
        rec = training_record(v)
        if rec is None or rec["task"] not in names:
            continue
        label = f"vector {i + 1} ({rec['task']})"
        t = rec["task"]
        if split in (None, SEARCH_SPLIT):
            if rec["split"] == train_splits.get(t, "train"):
                out.append(f"{label} was fine-tuned on all of {t}'s train split, so its held-out slice is "
                           f"training data: fine-tune with --holdout (the default keeps {DEFAULT_HOLDOUT}) "
                           "or choose on another split with --split.")
            elif rec["split"] == FIT_SPLIT and (seed != rec["holdout_seed"] or holdout > rec["holdout"]):
                out.append(f"{label} was fine-tuned without the held-out slice of {rec['holdout']} "
                           f"(seed {rec['holdout_seed']}); a slice of {holdout} with seed {seed} contains "
                           f"training examples: use --holdout {rec['holdout']} --seed {rec['holdout_seed']}.")
        elif split == rec["split"]:
            out.append(f"{label} was fine-tuned on split {split}: choose on another split.")
    return out


__all__ = ["FIT_SPLIT", "SEARCH_SPLIT", "recorded_holdout", "selection_issues", "training_record"]
