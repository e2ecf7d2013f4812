"""The agreement series and its time axis, drawn the same way by the report and the dashboard.

- An as-of with no pairs has no agreement: ``agreement_shares`` gives ``None`` for it,
  the line is broken there (``line_runs``) and the as-of is marked as empty, never
  drawn at 100%.
- ``time_ticks`` labels at most ``most`` as-ofs, always the first and the last;
  the first label is anchored at its start and the last at its end so neither is
  cut off by the chart's edge. Labels carry seconds when the as-ofs are not all on
  whole minutes (``--every 5s``), and the date when they span more than one day.
- ``thousands`` is the one way a count is written for people: ``12,345``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from segments.timeutil import format_ms

_MINUTE_MS = 60_000
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class TimeTick:
    """One x-axis label: its position, text and SVG ``text-anchor``."""

    at: float
    label: str
    anchor: str


def thousands(n: float | int | None) -> str:
    """``12,345`` for a count; an em dash for no value."""
    if n is None:
        return "—"
    return f"{int(n):,}"


def agreement_shares(pairs: Sequence[int], agree: Sequence[int]) -> list[float | None]:
    """Agreement (0..1) per as-of; ``None`` where there are no pairs to agree."""
    return [a / p if p else None for p, a in zip(pairs, agree, strict=True)]


def line_runs(coords: Sequence[tuple[float, float] | None]) -> tuple[str, ...]:
    """SVG polyline ``points`` strings, one per run of drawn points; a ``None`` breaks the line."""
    runs: list[str] = []
    current: list[str] = []
    for point in coords:
        if point is None:
            if current:
                runs.append(" ".join(current))
            current = []
        else:
            current.append(f"{point[0]:.1f},{point[1]:.1f}")
    if current:
        runs.append(" ".join(current))
    return tuple(runs)


def time_label(ms: int, times_ms: Sequence[int]) -> str:
    """``ms`` as ``HH:MM``, ``HH:MM:SS`` or ``MM-DD HH:MM[:SS]``, detailed enough to tell ``times_ms`` apart."""
    text = format_ms(ms)  # YYYY-MM-DDTHH:MM:SS[.mmm]Z
    seconds = any(t % _MINUTE_MS for t in times_ms)
    clock = text[11:19] if seconds else text[11:16]
    spans_days = bool(times_ms) and (max(times_ms) // _DAY_MS != min(times_ms) // _DAY_MS)
    return f"{text[5:10]} {clock}" if spans_days else clock


def time_ticks(times_ms: Sequence[int], xs: Sequence[float], most: int = 6) -> tuple[TimeTick, ...]:
    """Labels for up to ``most`` of the as-ofs ``times_ms`` drawn at ``xs``: evenly spread, first and last."""
    n = len(times_ms)
    if n == 0:
        return ()
    if n == 1:
        return (TimeTick(xs[0], time_label(times_ms[0], times_ms), "middle"),)
    every = max(1, math.ceil((n - 1) / max(most - 1, 1)))
    picks = list(range(0, n, every))
    if picks[-1] != n - 1:
        if n - 1 - picks[-1] < every / 2 and len(picks) > 1:
            picks[-1] = n - 1  # too close to the last one: its label would overlap
        else:
            picks.append(n - 1)
    ticks = []
    for i in picks:
        anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
        ticks.append(TimeTick(xs[i], time_label(times_ms[i], times_ms), anchor))
    return tuple(ticks)
