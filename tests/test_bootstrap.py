"""Bootstrap intervals of statistics over tasks (taskvec.eval.bootstrap)."""

from __future__ import annotations

import pytest

from taskvec.eval.bootstrap import (
    binomial_bootstrap,
    mean_difference,
    mean_of,
    mean_ratio,
    paired_bootstrap,
    ratio_of_means,
)
from taskvec.eval.stats import wilson


def test_statistics_hand_computed() -> None:
    r = {"t1": {"a": 0.5, "b": 1.0}, "t2": {"a": 0.9, "b": 0.9}}
    assert mean_of("a")(r) == pytest.approx(0.7)
    assert mean_ratio("a", "b")(r) == pytest.approx((0.5 + 1.0) / 2)
    assert ratio_of_means("a", "b")(r) == pytest.approx(0.7 / 0.95)
    assert mean_difference("a", "b")(r) == pytest.approx((-0.5 + 0.0) / 2)


def test_paired_identical_methods_give_a_zero_width_difference() -> None:
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1] * 20
    ci = paired_bootstrap({"t": {"a": a, "b": list(a)}}, mean_difference("a", "b"), n_boot=500)
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert ci.paired


def test_single_rate_matches_wilson() -> None:
    k, n = 300, 1000
    lo, hi = wilson(k, n)
    pb = paired_bootstrap({"t": {"a": [1] * k + [0] * (n - k)}}, mean_of("a"), n_boot=4000)
    bb = binomial_bootstrap({"t": {"a": (k / n, n)}}, mean_of("a"), n_boot=4000)
    for ci in (pb, bb):
        assert ci.estimate == pytest.approx(0.3)
        assert ci.low == pytest.approx(lo, abs=0.006) and ci.high == pytest.approx(hi, abs=0.006)


def test_binomial_is_wider_than_paired_for_correlated_methods() -> None:
    a = [1] * 600 + [0] * 400
    b = list(a)
    for i in range(0, 40):  # b differs from a on 40 examples: 20 gained, 20 lost
        b[i * 25] = 1 - b[i * 25]
    stat = mean_difference("a", "b")
    paired = paired_bootstrap({"t": {"a": a, "b": b}}, stat, n_boot=2000)
    unpaired = binomial_bootstrap({"t": {"a": (sum(a) / 1000, 1000), "b": (sum(b) / 1000, 1000)}}, stat,
                                  n_boot=2000)
    assert paired.estimate == pytest.approx(unpaired.estimate)
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_zero_rate_and_clears() -> None:
    ci = binomial_bootstrap({"t": {"a": (0.0, 50)}, "u": {"a": (1.0, 50)}}, mean_of("a"), n_boot=200)
    assert (ci.estimate, ci.low, ci.high) == (0.5, 0.5, 0.5)
    assert ci.clears(0.5) and not ci.clears(0.51)


def test_seeded_and_validated() -> None:
    data = {"t": {"a": [1, 0, 1, 0, 1]}}
    assert paired_bootstrap(data, mean_of("a"), seed=3, n_boot=300) == paired_bootstrap(
        data, mean_of("a"), seed=3, n_boot=300)
    with pytest.raises(ValueError, match="same, non-empty examples"):
        paired_bootstrap({"t": {"a": [1, 0], "b": [1]}}, mean_of("a"))
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(data, mean_of("a"), n_boot=10)
    with pytest.raises(ValueError, match="accuracy"):
        binomial_bootstrap({"t": {"a": (1.5, 10)}}, mean_of("a"))
