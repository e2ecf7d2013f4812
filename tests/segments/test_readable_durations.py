"""Durations rounded for people: readable at every size, never a raw count of milliseconds."""

from __future__ import annotations

import pytest

from segments.durations import readable_duration_ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"), (4.25, "4.2ms"), (850, "850ms"), (4_200, "4.2s"), (5_000, "5s"), (425_855, "7m 6s"),
        (3_600_000, "1h"), (7_500_000, "2h 5m"), (273_600_000, "3d 4h"),
    ],
)
def test_readable_duration(ms: float, text: str) -> None:
    assert readable_duration_ms(ms) == text
