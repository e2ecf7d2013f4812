"""The few statistics the parity report states: rates, the Wilson score interval, precision and recall."""

from __future__ import annotations

import math

Z95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal distribution."""


def rate(part: int, whole: int) -> float:
    """``part / whole``, and 0.0 when ``whole`` is 0 (nothing was observed, so nothing went wrong)."""
    return part / whole if whole else 0.0


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is informative at
    0 successes (the usual case for unexplained mismatches). With no trials the
    interval is the whole of [0, 1]. Raises ``ValueError`` for impossible counts.
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"impossible counts: {successes} of {trials}")
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # at 0 (or all) successes the bound is exactly 0 (or 1); rounding would put it a hair off
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


def precision(both: int, stream_only: int) -> float | None:
    """Of the pairs the stream put in a segment, the share legacy put there too; None if the stream put none."""
    assigned = both + stream_only
    return both / assigned if assigned else None


def recall(both: int, legacy_only: int) -> float | None:
    """Of the pairs legacy put in a segment, the share the stream put there too; None if legacy put none."""
    expected = both + legacy_only
    return both / expected if expected else None
