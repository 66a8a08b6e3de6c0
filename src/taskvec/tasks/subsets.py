"""Subsets of a split that represent it: first N, or a seeded random sample, with a skew check.

``--limit N`` takes the first N examples of a split. Many public test files are sorted by label,
so the first N can hold one class only; :func:`label_skew` compares the first-N label shares with
the whole split's and :func:`choose` warns (:class:`~taskvec.errors.SubsetWarning`) when a share
is off by more than 4 standard errors of a random subset of that size (finite-population
corrected; a balanced random order trips it about once in 10^4 checks per class) and by more
than 5 points. ``--sample N --seed S`` draws N examples uniformly without replacement with a
seeded generator (the same N, seed and file give the same examples on every machine) and keeps
them in file order.
"""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from taskvec.errors import SubsetWarning, UserInputError

SKEW_SE = 4.0  # standard errors of a random subset
SKEW_MIN = 0.05  # and at least this absolute difference in a class's share


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """``n`` of ``range(total)`` uniformly without replacement (seeded, sorted); all if n >= total."""
    if n >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), n))


def label_skew(labels_all: Sequence[Any], labels_subset: Sequence[Any]) -> str | None:
    """A one-line description of the largest label-share skew of a subset, or None if none."""
    total, n = len(labels_all), len(labels_subset)
    if n == 0 or n >= total:
        return None
    full, sub = Counter(labels_all), Counter(labels_subset)
    fpc = (total - n) / (total - 1)
    worst: tuple[float, Any, float, float] | None = None
    for lab, k in full.items():
        p, q = k / total, sub.get(lab, 0) / n
        se = math.sqrt(max(p * (1 - p) / n * fpc, 0.0))
        d = abs(q - p)
        if d > SKEW_MIN and d > SKEW_SE * se and (worst is None or (round(d, 9), q) > (round(worst[0], 9), worst[2])):
            worst = (d, lab, q, p)  # the largest difference; on ties the over-represented class
    if worst is None:
        return None
    _, lab, q, p = worst
    return f'label "{lab}" is {100 * q:.1f}% of the first {n} examples but {100 * p:.1f}% of the split'


def choose(
    rows: Sequence[dict],
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    label_of: Callable[[dict], Any] | None = None,
    where: str = "",
) -> list[dict]:
    """The first ``limit`` rows, or a seeded random ``sample`` of them (not both).

    With ``limit`` and a ``label_of`` (classification tasks), warns when the first rows'
    label distribution is far from the split's, and says how to get a representative subset.
    """
    for flag, v in (("--limit", limit), ("--sample", sample)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise UserInputError(f"{flag} must be a positive integer, got {v!r}.")
    if limit is not None and sample is not None:
        raise UserInputError("--limit and --sample are exclusive: use one (--sample N --seed S is representative).")
    if sample is not None:
        return [rows[i] for i in sample_indices(len(rows), sample, seed)]
    if limit is None:
        return list(rows)
    chosen = list(rows[:limit])
    if label_of is not None:
        msg = label_skew([label_of(r) for r in rows], [label_of(r) for r in chosen])
        if msg:
            warnings.warn(f"{where + ': ' if where else ''}{msg}; the first {limit} examples do not represent "
                          f"it (use --sample {limit} --seed 0 for a seeded random subset).", SubsetWarning,
                          stacklevel=3)
    return chosen


__all__ = ["SKEW_MIN", "SKEW_SE", "choose", "label_skew", "sample_indices"]
