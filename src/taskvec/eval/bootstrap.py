"""Bootstrap intervals for statistics over several tasks (means of accuracies, ratios, differences).

A goal such as "the merged model keeps >= 85% of the individual accuracy on average" or "the
vector reaches >= 75% of 10-shot ICL" is a function of several per-task accuracies. Its 95%
interval comes from resampling:

- :func:`paired_bootstrap`: per-example results (``correct`` lists) of several methods on the
  same examples. Each draw resamples the examples of every task with replacement, *the same
  indices for every method* (stratified by task, paired across methods), and recomputes the
  statistic from the per-task accuracies.
- :func:`binomial_bootstrap`: only rates and n are known (results saved without per-example data).
  Each (task, method) accuracy is redrawn independently as ``Binomial(n, rate) / n``. Methods
  scored on the same examples are positively correlated, so for differences and ratios this
  interval is wider than the paired one: conservative.

Both return the percentile interval of ``n_boot`` draws (seeded, reproducible) around the
statistic of the observed accuracies. A goal "statistic >= bound" is met only when the interval's
lower end is >= bound (:meth:`BootstrapInterval.clears`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Rates = Mapping[str, Mapping[str, float]]  # task -> method -> accuracy
Statistic = Callable[[Rates], float]


@dataclass(frozen=True)
class BootstrapInterval:
    """A statistic, its percentile bootstrap interval and how it was drawn."""

    estimate: float
    low: float
    high: float
    n_boot: int
    level: float
    paired: bool

    def clears(self, bound: float) -> bool:
        """Whether the whole interval lies at or above ``bound`` (a ">= bound" goal is met)."""
        return self.low >= bound

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n_boot": self.n_boot,
                "level": self.level, "paired": self.paired}


def _check(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    if not 0.5 <= level < 1:
        raise ValueError(f"level must be in [0.5, 1), got {level!r}")


def _interval(estimate: float, draws: np.ndarray, n_boot: int, level: float, paired: bool) -> BootstrapInterval:
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return BootstrapInterval(float(estimate), float(lo), float(hi), n_boot, level, paired)


def _apply(stat: Statistic, acc: dict[str, dict[str, np.ndarray]], n_boot: int) -> np.ndarray:
    return np.array([stat({t: {m: float(v[b]) for m, v in ms.items()} for t, ms in acc.items()})
                     for b in range(n_boot)])


def paired_bootstrap(correct: Mapping[str, Mapping[str, Sequence[bool]]], statistic: Statistic,
                     n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> BootstrapInterval:
    """Interval of ``statistic(task -> method -> accuracy)`` from per-example results.

    ``correct[task][method]`` is one 0/1 list per method, all of a task's lists over the same
    examples in the same order. Examples are resampled within each task, with the same indices
    for every method of that task."""
    _check(n_boot, level)
    rng = np.random.default_rng(seed)
    observed: dict[str, dict[str, float]] = {}
    acc: dict[str, dict[str, np.ndarray]] = {}
    for task, methods in correct.items():
        cols = {m: np.asarray(v, dtype=np.float64) for m, v in methods.items()}
        sizes = {len(c) for c in cols.values()}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"task {task}: every method needs results on the same, non-empty examples "
                             f"(lengths {sorted(len(c) for c in cols.values())})")
        n = sizes.pop()
        idx = rng.integers(0, n, size=(n_boot, n))  # (B, n): the same resample for every method
        observed[task] = {m: float(c.mean()) for m, c in cols.items()}
        acc[task] = {m: c[idx].mean(axis=1) for m, c in cols.items()}  # (B,)
    return _interval(statistic(observed), _apply(statistic, acc, n_boot), n_boot, level, True)


def binomial_bootstrap(rates: Mapping[str, Mapping[str, tuple[float, int]]], statistic: Statistic,
                       n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> BootstrapInterval:
    """Interval of ``statistic`` when only ``(accuracy, n)`` per task and method are known.

    Every accuracy is redrawn independently from ``Binomial(n, accuracy) / n``: conservative
    (wider) for differences and ratios of methods that were scored on the same examples."""
    _check(n_boot, level)
    rng = np.random.default_rng(seed)
    observed: dict[str, dict[str, float]] = {}
    acc: dict[str, dict[str, np.ndarray]] = {}
    for task, methods in rates.items():
        observed[task], acc[task] = {}, {}
        for m, (rate, n) in methods.items():
            if not (isinstance(n, int) and n > 0 and 0.0 <= rate <= 1.0):
                raise ValueError(f"task {task}, {m}: need 0 <= accuracy <= 1 and n > 0, got ({rate}, {n})")
            observed[task][m] = float(rate)
            acc[task][m] = rng.binomial(n, rate, size=n_boot) / n  # (B,)
    return _interval(statistic(observed), _apply(statistic, acc, n_boot), n_boot, level, False)


def mean_of(method: str) -> Statistic:
    """Statistic: the unweighted mean over tasks of ``method``'s accuracy."""
    return lambda r: float(np.mean([ms[method] for ms in r.values()]))


def mean_ratio(num: str, den: str) -> Statistic:
    """Statistic: the mean over tasks of ``num / den`` per task (e.g. normalized accuracy)."""
    return lambda r: float(np.mean([ms[num] / ms[den] if ms[den] > 0 else 0.0 for ms in r.values()]))


def ratio_of_means(num: str, den: str) -> Statistic:
    """Statistic: ``mean(num) / mean(den)`` over tasks (e.g. "reaches 75% of ICL on average")."""
    def stat(r: Rates) -> float:
        d = float(np.mean([ms[den] for ms in r.values()]))
        return float(np.mean([ms[num] for ms in r.values()])) / d if d > 0 else 0.0
    return stat


def mean_difference(a: str, b: str) -> Statistic:
    """Statistic: the mean over tasks of ``a - b``."""
    return lambda r: float(np.mean([ms[a] - ms[b] for ms in r.values()]))


__all__ = ["BootstrapInterval", "binomial_bootstrap", "mean_difference", "mean_of", "mean_ratio",
           "paired_bootstrap", "ratio_of_means"]
