"""Rates, precision/recall and the Wilson score interval against published values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compare.stats import precision, rate, recall, wilson_interval


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # upper bound z^2 / (n + z^2)
        (5, 10, 0.2366, 0.7634),
        (1, 100, 0.0018, 0.0545),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_known_values(successes: int, trials: int, low: float, high: float) -> None:
    """The 95% Wilson interval matches the textbook values to four decimals."""
    lo, hi = wilson_interval(successes, trials)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


@given(st.integers(0, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_contains_the_rate(counts: tuple[int, int]) -> None:
    """The interval lies in [0, 1] and contains the observed rate."""
    successes, trials = counts
    lo, hi = wilson_interval(successes, trials)
    assert 0.0 <= lo <= rate(successes, trials) <= hi <= 1.0


def test_wilson_interval_without_trials_is_everything() -> None:
    """No pairs compared: nothing is known, the interval is [0, 1]."""
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_precision_and_recall_are_none_without_a_denominator() -> None:
    """Stream judged against legacy; undefined (None) rather than a made-up 1.0."""
    assert precision(3, 1) == 0.75
    assert recall(3, 3) == 0.5
    assert precision(0, 0) is None and recall(0, 0) is None
