"""Intervals and paired tests for accuracies: Wilson score intervals and the exact McNemar test.

Every accuracy taskvec reports is a proportion of n examples; its 95% interval is Wilson's
(well behaved near 0 and 1 and for small n, unlike the normal approximation). Two models on
the *same* examples are compared by their discordant pairs: ``b`` examples only A gets right,
``c`` only B; under "no difference" b ~ Binomial(b + c, 1/2), and the exact two-sided McNemar
p-value is ``min(1, 2 P(X <= min(b, c)))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes out of ``n`` (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def wilson_of_rate(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson interval of an accuracy kept only as a rate over ``n`` examples: ``k = round(accuracy
    * n)`` (unique for a rate k / n stored to 3 decimals when n <= 1000); for results saved
    without per-example data. ValueError if the rate is not some k / n to 3 decimals."""
    k = round(accuracy * n)
    if n > 0 and abs(k / n - accuracy) > 5e-4 + 1e-9:
        raise ValueError(f"accuracy {accuracy} is not k / {n} for any integer k")
    return wilson(k, n, z)


def binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (log-space sums for large n)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


@dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test of A vs B on the same examples."""

    n: int
    a_correct: int
    b_correct: int
    only_a: int  # examples A gets right and B wrong
    only_b: int
    p_value: float

    @property
    def significant(self) -> bool:
        """Whether the difference is significant at the 5% level."""
        return self.p_value < 0.05

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"n": self.n, "a_correct": self.a_correct, "b_correct": self.b_correct, "only_a": self.only_a,
                "only_b": self.only_b, "p_value": self.p_value, "significant": self.significant}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact McNemar test of two per-example correctness lists over the same examples."""
    if len(a) != len(b):
        raise ValueError(f"paired test needs the same examples: {len(a)} vs {len(b)} results")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    d = only_a + only_b
    p = 1.0 if d == 0 else min(1.0, 2 * binom_cdf_half(min(only_a, only_b), d))
    return PairedTest(len(a), sum(map(bool, a)), sum(map(bool, b)), only_a, only_b, p)


__all__ = ["PairedTest", "Z95", "binom_cdf_half", "mcnemar", "wilson"]
