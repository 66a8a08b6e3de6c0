"""Choosing the merging coefficient of task vectors on held-out data (never the eval split).

For every candidate coefficient the merged vector is applied to the loaded model **in
memory**, every task is scored on its *search* examples, and the touched parameters are put
back exactly (from a copy; see :func:`applied`). Nothing is written to disk.

Search split. By default a task's search examples are a *held-out slice of its train split*:
the last ``holdout`` (default 200) positions of a seeded permutation of the train split
(:func:`search_split_examples`). ``benchmarks/build_collection.py`` fine-tunes on the train split
*minus* that slice (:func:`with_holdout`, split ``train_fit``), so the coefficient is chosen on
examples no vector was trained on, and the eval split stays untouched for the final numbers.
A named split may be used instead (``split=``), never the task's ``eval_split``.

Coefficients. Every merge method of ``taskvec.weights.merge`` is ``lambda * f(vectors, weights)``,
so the global search merges once with ``lambda = 1`` and applies the result scaled by each
candidate ``lambda`` (identical to merging with ``lam=lambda``). With ``per_task=True`` a
coordinate search follows: see :func:`search_coefficients`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from taskvec.defaults import DEFAULT_HOLDOUT  # re-exported
from taskvec.errors import UserInputError
from taskvec.weights.protocol import (  # FIT/SEARCH re-exported
    FIT_SPLIT,
    SEARCH_SPLIT,
    selection_issues,
)
from taskvec.weights.vector import TaskVector

MAX_GRID = 1000

#: ``scorer(model, tok, task, examples, split_label) -> accuracy``
Scorer = Callable[[Any, Any, Any, list[dict], str], float]


# -- grids -----------------------------------------------------------------------------------
def parse_grid(spec: str | Sequence[float]) -> list[float]:
    """``"0.1:1.0:0.1"`` (start:stop:step, stop included) or ``"0.2,0.5,1"`` -> sorted floats.

    Values are ``round(start + i * step, 10)``, so ``0.1:1.0:0.1`` gives exactly 10 values
    ending at 1.0 despite float rounding. Duplicates are removed.
    """
    bad = UserInputError(
        f'bad grid "{spec}": write start:stop:step (e.g. 0.1:1.0:0.1) or a list like 0.2,0.5,1.'
    )
    if not isinstance(spec, str):
        values = [float(v) for v in spec]
    elif ":" in spec:
        try:
            parts = [float(x) for x in spec.split(":")]
        except ValueError:
            raise bad from None
        if len(parts) != 3:
            raise bad
        start, stop, step = parts
        if not all(math.isfinite(v) for v in parts):
            raise UserInputError(f'grid "{spec}" has a non-finite number; use finite start:stop:step.')
        if step <= 0:
            raise UserInputError(f'grid "{spec}": step must be positive.')
        if stop < start:
            raise UserInputError(f'grid "{spec}": stop is below start; write start:stop:step.')
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_GRID:
            raise UserInputError(f'grid "{spec}" has {n} values (at most {MAX_GRID}); use a larger step.')
        values = [round(start + i * step, 10) for i in range(n)]
    else:
        try:
            values = [float(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise bad from None
    if not values:
        raise UserInputError(f'grid "{spec}" is empty: give at least one coefficient.')
    if not all(math.isfinite(v) for v in values):
        raise UserInputError(f'grid "{spec}" has a non-finite value.')
    if len(values) > MAX_GRID:
        raise UserInputError(f"the grid has {len(values)} values (at most {MAX_GRID}).")
    return sorted(set(values))


# -- the held-out search split --------------------------------------------------------------
def holdout_indices(task: Any, n: int = DEFAULT_HOLDOUT, seed: int = 0) -> list[int]:
    """Positions (in the train split) of the held-out slice: the last ``n`` of a seeded permutation.

    ``n`` is capped at half the train split. The permutation is ``random.Random`` seeded from
    ``("taskvec-holdout", task.name, seed)``, the same on every platform.
    """
    from taskvec.tasks.task import stable_rng

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"the held-out slice size must be a positive integer, got {n!r}.")
    total = len(task.load(task.train_split))
    n = min(n, total // 2)
    if n < 1:
        raise UserInputError(f"task {task.name} has {total} train examples: too few to hold out a search slice.")
    perm = list(range(total))
    stable_rng("taskvec-holdout", task.name, seed).shuffle(perm)
    return perm[-n:]


def search_split_examples(task: Any, n: int = DEFAULT_HOLDOUT, seed: int = 0,
                          limit: int | None = None) -> list[dict]:
    """The held-out train slice for coefficient selection (first ``limit`` of it)."""
    rows = task.load(task.train_split)
    idx = holdout_indices(task, n, seed)
    return [rows[i] for i in idx[:limit]]


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def fit_split_examples(task: Any, n: int = DEFAULT_HOLDOUT, seed: int = 0) -> list[dict]:
    """The train split minus the held-out slice, in stored order (what the collection trains on).

    Rows whose content equals a held-out row (duplicates inside the train split) go too, so no
    held-out example is ever trained on.
    """
    rows = task.load(task.train_split)
    held_idx = holdout_indices(task, n, seed)
    held = set(held_idx)
    held_keys = {_key(rows[i]) for i in held_idx}
    return [r for i, r in enumerate(rows) if i not in held and _key(r) not in held_keys]


def with_holdout(task: Any, n: int = DEFAULT_HOLDOUT, seed: int = 0) -> Any:
    """A copy of a ``Task`` with two extra splits: ``train_fit`` and ``search_holdout``."""
    if SEARCH_SPLIT in task.splits:
        return task
    original = task.load

    def loader(split: str) -> list[dict]:
        if split == FIT_SPLIT:
            return fit_split_examples(task, n, seed)
        if split == SEARCH_SPLIT:
            return search_split_examples(task, n, seed)
        return original(split)

    return dataclasses.replace(task, splits=(*task.splits, FIT_SPLIT, SEARCH_SPLIT), loader=loader)


def search_examples(task: Any, split: str | None = None, limit: int | None = None,
                    holdout: int = DEFAULT_HOLDOUT, seed: int = 0,
                    allow_eval_split: bool = False) -> tuple[str, list[dict]]:
    """``(split label, examples)`` to select coefficients on: the held-out slice, or a named split.

    A named split equal to the task's ``eval_split`` is refused (the final numbers come from it)
    unless ``allow_eval_split``; then a :class:`~taskvec.errors.ProtocolWarning` is raised.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserInputError(f"--limit must be a positive integer, got {limit!r}.")
    if split in (None, SEARCH_SPLIT):
        return SEARCH_SPLIT, search_split_examples(task, holdout, seed, limit)
    if split == task.eval_split:
        if not allow_eval_split:
            raise UserInputError(
                f"split {split} is task {task.name}'s eval split: choose coefficients on another split "
                "(default: a held-out train slice), or pass --allow-eval-split to do it anyway (marked)."
            )
        warn_protocol([f"choosing on {task.name}'s eval split {split}: numbers reported on it are "
                       "optimistic (marked selected_on_eval_split)."])
    return split, task.load(split, limit=limit)


def warn_protocol(issues: list[str]) -> list[str]:
    """Raise a :class:`~taskvec.errors.ProtocolWarning` for each issue; return them."""
    import warnings

    from taskvec.errors import ProtocolWarning

    for msg in issues:
        warnings.warn(msg, ProtocolWarning, stacklevel=3)
    return issues


# -- in-memory application ---------------------------------------------------------------
@contextmanager
def applied(model: Any, vector: TaskVector, scale: float = 1.0, restore: str = "copy") -> Iterator[Any]:
    """Add ``scale * vector`` to ``model`` in place for the ``with`` block, then undo it.

    ``restore="copy"`` (default) saves the touched parameters first and copies them back, so
    the model is bit-identical afterwards (costs one copy of those tensors); ``"subtract"``
    uses ``remove_from`` (no copy; equal up to float rounding).
    """
    if restore not in ("copy", "subtract"):
        raise UserInputError(f'restore must be "copy" or "subtract", got {restore!r}.')
    params = dict(model.named_parameters(remove_duplicate=False))
    saved: dict[str, torch.Tensor] = {}
    if restore == "copy":
        saved = {n: params[n].detach().clone() for n in vector.names if n in params}
    vector.apply_to(model, scale)  # checks names and shapes before changing anything
    try:
        yield model
    finally:
        if restore == "copy":
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)
        else:
            vector.remove_from(model, scale)


def accuracy_scorer(batch_size: int = 16) -> Scorer:
    """The default scorer: ``taskvec.eval.evaluate`` accuracy on the given examples."""
    from taskvec.eval import evaluate

    def score(model: Any, tok: Any, task: Any, examples: list[dict], split: str) -> float:
        return evaluate(model, tok, task, split=split, examples=examples, batch_size=batch_size,
                        progress=False).accuracy

    return score


# -- results --------------------------------------------------------------------------------
TIE_TOLERANCE = 1e-9
"""Means closer than this are a tie. A mean of per-task accuracies is a float sum of fractions, so
two settings with the same correct counts can differ in the last bits depending on the order of
the sum; such differences must not decide a search."""


def first_best(candidates: Sequence[Candidate]) -> Candidate:
    """The first candidate whose mean is within :data:`TIE_TOLERANCE` of the best mean.

    Candidates come in grid order, so a tie goes to the smallest ``lambda``.
    """
    top = max(c.mean for c in candidates)
    return next(c for c in candidates if c.mean >= top - TIE_TOLERANCE)


def grid_edge(grid: Sequence[float], chosen: float | None) -> str | None:
    """``"top"`` / ``"bottom"`` when ``chosen`` is the largest / smallest (positive) value of a grid
    of at least two values (the best may lie beyond the grid: extend it), else None."""
    values = sorted(grid)
    if chosen is None or len(values) < 2:
        return None
    if chosen == values[-1]:
        return "top"
    if chosen == values[0] and chosen > 0:  # below 0 would flip the vectors: not a grid extension
        return "bottom"
    return None


def edge_note(edge: str | None, name: str = "lambda") -> str:
    """One line for a chosen value at a grid edge ("" when it is inside the grid)."""
    if edge is None:
        return ""
    where, extend = ("largest", "larger") if edge == "top" else ("smallest", "smaller")
    return (f"note: the chosen {name} is the {where} value of the grid, so the best may lie outside it; "
            f"rerun with a --grid that reaches {extend} values.")


@dataclass
class Candidate:
    """One evaluated setting: global ``lam`` and per-vector ``coefficients``, search accuracies."""

    lam: float
    coefficients: list[float]
    accuracy: dict[str, float]
    mean: float
    stage: str = "global"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SearchResult:
    """Every candidate's per-task search accuracy, and the best one (highest mean)."""

    method: str
    params: dict[str, Any]
    tasks: list[str]
    splits: dict[str, str]
    n: dict[str, int]
    grid: list[float]
    per_task: bool
    candidates: list[Candidate]
    best: Candidate
    seconds: float = 0.0
    holdout: dict[str, int] = field(default_factory=dict)
    #: where the selection could see training or reported examples (taskvec.weights.protocol)
    protocol_warnings: list[str] = field(default_factory=list)
    selected_on_eval_split: bool = False

    @property
    def grid_edge(self) -> str | None:
        """``"top"``/``"bottom"`` when the best global ``lambda`` is the grid's largest/smallest value."""
        return grid_edge(self.grid, self.best.lam)

    @property
    def coefficient_edges(self) -> dict[str, str]:
        """Per-task searches: ``{task: "top"/"bottom"}`` for each vector whose coefficient is at a
        grid edge (its best may lie outside the grid); empty for a global search."""
        if not self.per_task:
            return {}
        edges = {t: grid_edge(self.grid, c) for t, c in zip(self.tasks, self.best.coefficients)}
        return {t: e for t, e in edges.items() if e}

    def weights_and_lam(self) -> tuple[list[float], float]:
        """(merge weights, lambda) that reproduce the best candidate with ``merge``."""
        return merge_args(self.best)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["best"] = self.best.to_dict()
        d["grid_edge"] = self.grid_edge
        d["coefficient_edges"] = self.coefficient_edges
        return d


def merge_args(c: Candidate) -> tuple[list[float], float]:
    """``(weights, lambda)`` for a candidate: ``weights = c_i / lam`` (or ``c_i`` if ``lam == 0``)."""
    if c.lam == 0:
        return list(c.coefficients), 1.0
    return [x / c.lam for x in c.coefficients], c.lam


def merged_at(vectors: Sequence[TaskVector], method: str, params: dict[str, Any] | None,
              candidate: Candidate) -> TaskVector:
    """The merged vector of a candidate (a real merge with its ``lambda``; metadata records it)."""
    from taskvec.weights.merge import merge_vectors

    weights, lam = merge_args(candidate)
    return merge_vectors(method, vectors, weights, dict(params or {}) | {"lambda": lam})


def check_no_lambda(params: dict[str, Any] | None) -> dict[str, Any]:
    """Refuse a user ``lambda`` (it is what the search varies); return a copy of ``params``."""
    from taskvec.weights.merge.base import ALIASES

    params = dict(params or {})
    for key in params:
        if ALIASES.get(key, key) == "lambda":
            raise UserInputError(f'parameter "{key}" is the coefficient being searched: drop it and set --grid.')
    return params


def _open_log(log: str | os.PathLike | None, model: Any, method: str, params: dict[str, Any],
              vectors: Sequence[TaskVector], tasks: Sequence[Any], data: dict[str, tuple[str, list[dict]]],
              scorer: Scorer | None, batch_size: int, restore: str) -> Any:
    """The search log at ``log`` keyed by everything a setting's scores depend on (or None)."""
    if log is None:
        return None
    from taskvec.models.fingerprint import fingerprint
    from taskvec.weights.search_log import SearchLog, examples_digest, vector_digest

    if scorer is None:
        scorer_id = f"accuracy(batch_size={batch_size})"
    else:
        scorer_id = f"{getattr(scorer, '__module__', '?')}.{getattr(scorer, '__qualname__', type(scorer).__name__)}"
    key = {"model": fingerprint(model), "method": method, "params": params, "restore": restore,
           "scorer": scorer_id, "vectors": [vector_digest(v) for v in vectors],
           "tasks": {t.name: {"split": data[t.name][0], "n": len(data[t.name][1]),
                              "examples": examples_digest(data[t.name][1])} for t in tasks}}
    return SearchLog(log, key)


# -- the search ----------------------------------------------------------------------------
def search_coefficients(
    model: Any, tok: Any, vectors: Sequence[TaskVector], tasks: Sequence[Any],
    method: str = "task_arithmetic", grid: str | Sequence[float] = "0.1:1.0:0.1",
    params: dict[str, Any] | None = None, split: str | None = None, limit: int | None = None,
    *, holdout: int = DEFAULT_HOLDOUT, seed: int = 0, per_task: bool = False, passes: int = 1,
    scorer: Scorer | None = None, batch_size: int = 16, progress: bool = True,
    restore: str = "copy", allow_eval_split: bool = False, log: str | os.PathLike | None = None,
) -> SearchResult:
    """Pick the merging coefficient with the best mean search accuracy over ``tasks``.

    Global search: for each ``lambda`` in ``grid`` apply ``lambda * merge(vectors, lambda=1)``,
    score every task on its search examples (:func:`search_examples`), restore the model.
    Ties (means within ``TIE_TOLERANCE`` = 1e-9, i.e. float rounding of equal sums) go to the smaller
    ``lambda``.

    ``per_task=True`` then runs ``passes`` rounds of coordinate ascent over per-vector
    coefficients ``c_i`` (start: all ``c_i = lambda*``): for each vector in turn try every grid
    value with the others fixed and keep the best (the current value on ties). A setting ``c`` is
    merged as ``merge(weights=c / lambda*, lambda=lambda*)``: for linear methods
    (task_arithmetic, dare_linear, breadcrumbs, tsv) that is exactly ``sum_i c_i tau_i``-style
    scaling; methods that normalise by the weights (ties, dare_ties) use ``c`` as relative
    weights at the global scale ``lambda*``. Each coordinate step re-merges.

    ``log=PATH`` makes the search resumable (:mod:`taskvec.weights.search_log`): every scored
    setting is appended to ``PATH`` and a rerun on the same model, vectors, method, parameters and
    examples reuses those scores (any grid or ``per_task``: scores are per setting).
    """
    from tqdm.auto import tqdm

    from taskvec.weights.merge import get_method, merge_vectors

    values = parse_grid(grid)
    params = check_no_lambda(params)
    m = get_method(method)
    vectors = list(vectors)
    tasks = list(tasks)
    if not vectors:
        raise UserInputError("search needs at least one vector.")
    if not tasks:
        raise UserInputError("search needs at least one task.")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise UserInputError(f"passes must be a positive integer, got {passes!r}.")
    m.validate(None, params, len(vectors))  # every parameter problem before any evaluation
    data = {t.name: search_examples(t, split, limit, holdout, seed, allow_eval_split) for t in tasks}
    issues = warn_protocol(selection_issues(vectors, [t.name for t in tasks], split, holdout, seed,
                                            {t.name: t.train_split for t in tasks}))
    on_eval = any(data[t.name][0] == t.eval_split for t in tasks)
    for t in tasks:
        if not data[t.name][1]:
            raise UserInputError(f"task {t.name} has no search examples.")
    slog = _open_log(log, model, m.name, params, vectors, tasks, data, scorer, batch_size, restore)
    scorer = scorer or accuracy_scorer(batch_size)
    n_evals = len(values) + (passes * len(vectors) * (len(values) - 1) if per_task else 0)
    bar = tqdm(total=n_evals * len(tasks), desc=f"search {m.name}", unit="task", disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    candidates: list[Candidate] = []

    def evaluate_at(vector: TaskVector, scale: float) -> dict[str, float]:
        accs: dict[str, float] = {}
        with applied(model, vector, scale, restore):
            for t in tasks:
                label, exs = data[t.name]
                accs[t.name] = float(scorer(model, tok, t, exs, label))
                bar.update(1)
        return accs

    def score(c: Candidate, vector: Callable[[], TaskVector], scale: float) -> Candidate:
        """Fill ``c``'s accuracies: from the log when it has them, else by evaluating."""
        accs = slog.get(c.lam, c.coefficients) if slog else None
        if accs is not None and set(accs) == set(names):
            bar.update(len(tasks))
        else:
            accs = evaluate_at(vector(), scale)
            if slog:
                slog.add(c.lam, c.coefficients, accs, c.stage)
        c.accuracy = {n: accs[n] for n in names}
        c.mean = sum(c.accuracy.values()) / len(c.accuracy)
        return c

    names = [t.name for t in tasks]
    unit_cache: list[TaskVector] = []

    def unit() -> TaskVector:  # merged once with lambda = 1, only if some lambda is not logged
        if not unit_cache:
            unit_cache.append(merge_vectors(m, vectors, None, params | {"lambda": 1.0}))
        return unit_cache[0]

    try:
        for lam in values:
            candidates.append(score(Candidate(lam, [lam] * len(vectors), {}, 0.0), unit, lam))
        best = first_best(candidates)
        unit_cache.clear()
        if per_task:
            current = best
            for p in range(passes):
                for i in range(len(vectors)):
                    start = current.coefficients[i]
                    for v in values:
                        if v == start:  # already scored
                            continue
                        coefs = list(current.coefficients)
                        coefs[i] = v
                        trial = Candidate(current.lam, coefs, {}, 0.0, stage=f"pass {p + 1}, vector {i + 1}")

                        def merged(trial: Candidate = trial) -> TaskVector:
                            weights, lam = merge_args(trial)
                            return merge_vectors(m, vectors, weights, params | {"lambda": lam})

                        candidates.append(score(trial, merged, 1.0))
                        if trial.mean > current.mean + TIE_TOLERANCE:  # ties keep the current value
                            current = trial
            best = current
    finally:
        bar.close()
    return SearchResult(
        method=m.name, params=params, tasks=[t.name for t in tasks],
        splits={k: v[0] for k, v in data.items()}, n={k: len(v[1]) for k, v in data.items()},
        grid=values, per_task=per_task, candidates=candidates, best=best,
        seconds=round(time.perf_counter() - t0, 3),
        holdout={"n": holdout, "seed": seed} if split in (None, SEARCH_SPLIT) else {},
        protocol_warnings=issues, selected_on_eval_split=on_eval,
    )
