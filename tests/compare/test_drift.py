"""Segment drift: PSI and the chi-square test against hand-computed values."""

from __future__ import annotations

import math

import pytest

from compare.drift import chi_square, max_psi, psi, segment_drift


def test_chi_square_of_a_2x2_table_matches_the_hand_computation() -> None:
    """In 30 of 100 vs 50 of 100: expected 40/60 per row, x = 4 * (10^2/40 + 10^2/60) = 8.333, p = erfc(sqrt(x/2))."""
    x, p = chi_square(30, 100, 50, 100)
    assert x == pytest.approx(8.3333333, rel=1e-6)
    assert p == pytest.approx(0.0038924, rel=1e-4)
    assert chi_square(3, 10, 3, 10) == (0.0, 1.0)
    assert chi_square(0, 10, 0, 10) == (0.0, 1.0)


def test_psi_is_zero_for_equal_splits_and_symmetric() -> None:
    """PSI over in/out: 0 when equal, the same either way round, and the textbook value otherwise."""
    assert psi(20, 100, 20, 100) == 0.0
    assert psi(10, 100, 30, 100) == pytest.approx(psi(30, 100, 10, 100))
    assert psi(10, 100, 30, 100) == pytest.approx((0.1 - 0.3) * math.log(0.1 / 0.3) + (0.9 - 0.7) * math.log(0.9 / 0.7))


def test_segment_drift_compares_sides_and_each_side_with_its_earlier_as_ofs() -> None:
    """The first as-of has no baseline; later ones compare with the pooled earlier counts."""
    rows = segment_drift([1, 2], {1: 100, 2: 100}, {1: {"a": 10}, 2: {"a": 10}}, {1: {"a": 10}, 2: {"a": 40}}, ["a"])
    assert rows[0].psi_sides == 0.0 and rows[0].psi_stream_baseline is None
    assert rows[1].psi_legacy_baseline == 0.0 and rows[1].psi_stream_baseline == pytest.approx(psi(40, 100, 10, 100))
    assert max_psi(rows) == pytest.approx(psi(10, 100, 40, 100))
    with pytest.raises(ValueError):
        segment_drift([1], {1: 5}, {1: {"a": 6}}, {}, ["a"])


def test_each_side_is_tested_against_its_pooled_earlier_as_ofs_by_chi_square_too() -> None:
    """Stream 10 of 100 then 40 of 100: against its baseline (10 of 100) the chi-square is that of the 2x2 table
    (40, 60 | 10, 90); legacy, steady at 10 of 100, has chi-square 0 and p 1; the first as-of has none."""
    rows = segment_drift([1, 2], {1: 100, 2: 100}, {1: {"a": 10}, 2: {"a": 10}}, {1: {"a": 10}, 2: {"a": 40}}, ["a"])
    assert (rows[0].chi2_stream_baseline, rows[0].p_stream_baseline) == (None, None)
    x, p = chi_square(40, 100, 10, 100)
    assert x == pytest.approx(200 * (40 * 90 - 60 * 10) ** 2 / (100 * 100 * 50 * 150))  # n(ad-bc)^2 / row x col
    assert (rows[1].chi2_stream_baseline, rows[1].p_stream_baseline) == (x, p) and p < 1e-5
    assert (rows[1].chi2_legacy_baseline, rows[1].p_legacy_baseline) == (0.0, 1.0)
    assert rows[1].to_dict()["chi2_stream_baseline"] == round(x, 4)
