"""Wilson intervals and the exact McNemar test against hand-computed values."""

from __future__ import annotations

import math

import pytest

from taskvec.eval.stats import binom_cdf_half, mcnemar, wilson, wilson_of_rate


def test_wilson_matches_hand_computed_values():
    lo, hi = wilson(8, 10)  # p = 0.8, n = 10: (0.4902, 0.9433) in standard tables
    assert math.isclose(lo, 0.4902, abs_tol=1e-4) and math.isclose(hi, 0.9433, abs_tol=1e-4)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and math.isclose(hi, 0.1611, abs_tol=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_binomial_half_cdf_exact():
    assert binom_cdf_half(0, 3) == pytest.approx(1 / 8)
    assert binom_cdf_half(1, 4) == pytest.approx(5 / 16)
    assert binom_cdf_half(50, 100) == pytest.approx(0.5 + math.comb(100, 50) / 2**101)


def test_mcnemar_counts_discordant_pairs_only():
    a = [True] * 50 + [True] * 10 + [False] * 2 + [False] * 38
    b = [True] * 50 + [False] * 10 + [True] * 2 + [False] * 38
    t = mcnemar(a, b)
    assert (t.only_a, t.only_b, t.a_correct, t.b_correct) == (10, 2, 60, 52)
    assert t.p_value == pytest.approx(2 * sum(math.comb(12, i) for i in range(3)) / 2**12)  # 0.0386
    assert t.significant
    assert mcnemar(a, a).p_value == 1.0 and not mcnemar(a, a).significant
    with pytest.raises(ValueError, match="same examples"):
        mcnemar(a, b[:-1])


def test_eval_result_reports_its_wilson_interval():
    from taskvec.eval.harness import EvalResult

    r = EvalResult(task="t", split="s", n=10, shots=0, seed=0, metric="accuracy", accuracy=0.8,
                   correct=[True] * 8 + [False] * 2)
    lo, hi = r.ci95
    assert (lo, hi) == wilson(8, 10) and r.to_dict()["ci95"] == [lo, hi] and "correct" not in r.to_dict()
    assert EvalResult(task="t", split="s", n=3, shots=0, seed=0, metric="accuracy", accuracy=1.0).ci95 is None


def test_wilson_of_a_stored_rate():
    assert wilson_of_rate(0.8, 10) == wilson(8, 10)
    assert wilson_of_rate(0.077, 39) == wilson(3, 39)  # 3 / 39 = 0.0769... stored as 0.077
    assert wilson_of_rate(0.8727, 872) == wilson(761, 872)
    with pytest.raises(ValueError, match="not k / 10"):
        wilson_of_rate(0.333, 10)
