"""The trailing event-time window ``(t - width, t]`` and the instants where a window's content changes.

This is the one place that decides whether an event is in a window; every part
(legacy SQL, the stream, the comparator, the tests' oracle) follows it.
"""

from __future__ import annotations

from collections.abc import Iterable


def in_window(event_time: int, t: int, width: int) -> bool:
    """True when ``event_time`` lies in ``(t - width, t]``: at exactly t - width it is out, at t it is in."""
    return t - width < event_time <= t


def window_start_exclusive(t: int, width: int) -> int:
    """The excluded lower edge of the window that ends at ``t``."""
    return t - width


def change_points(event_times: Iterable[int], widths: Iterable[int]) -> list[int]:
    """Sorted instants at which the contents of some window can change.

    An event at ``e`` enters every window at ``e`` and leaves a window of width
    ``w`` at exactly ``e + w`` (that instant's window no longer holds it).
    Between two consecutive change points every window's content is constant.
    """
    spans = sorted(set(widths))
    points: set[int] = set()
    for e in event_times:
        points.add(e)
        for w in spans:
            points.add(e + w)
    return sorted(points)
