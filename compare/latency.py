"""Freshness: how long after an event its effect is visible, on each side, as mergeable quantile sketches.

- **legacy**, per event the rules read: the first as-of ``t >= arrival_time`` plus
  that as-of's run duration (from the legacy sidecar, else 0) minus the arrival
  time. An event that arrived after the last as-of is never visible and counted
  apart (``never_visible``).
- **stream**, per transition: ``emitted_at`` minus the arrival time of the event
  that caused it. For ``event`` and ``correction`` transitions that is the
  latest-arriving applied event of the user whose event time equals the
  effective time; for ``expiry`` it is the effective time itself (the instant the
  old event left the window). A transition with no such event is counted apart
  (``unattributed``). A live measurement (one value per line) replaces this when given.

Values go into KLL sketches (``datasketches.kll_doubles_sketch``, k=200: rank error
about 1.3%, exact while fewer than k values), which merge across runs and shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch

from segments.errors import InputError

K = 200
CURVE_POINTS = 101
_PACK_LIMIT = 1 << 62


class LatencySketch:
    """A KLL quantile sketch of latencies in ms; mergeable."""

    __slots__ = ("_sketch",)

    def __init__(self, sketch: kll_doubles_sketch | None = None) -> None:
        self._sketch = sketch if sketch is not None else kll_doubles_sketch(K)

    @classmethod
    def of(cls, values: np.ndarray) -> LatencySketch:
        sketch = cls()
        sketch.update(values)
        return sketch

    def update(self, values: np.ndarray) -> None:
        if len(values):
            self._sketch.update(np.ascontiguousarray(values, dtype=np.float64))

    def merge(self, other: LatencySketch) -> None:
        self._sketch.merge(other._sketch)

    def to_bytes(self) -> bytes:
        return bytes(self._sketch.serialize())

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencySketch:
        return cls(kll_doubles_sketch.deserialize(data))

    @property
    def count(self) -> int:
        return int(self._sketch.n)

    def summary(self, source: str, **extra: int) -> LatencySummary:
        """p50/p95/p99/max and count; quantiles are None when there is no value."""
        s = self._sketch
        if s.is_empty():
            return LatencySummary(source, 0, None, None, None, None, (), dict(extra))
        ranks = np.linspace(0.0, 1.0, CURVE_POINTS)
        curve = tuple((float(r), float(q)) for r, q in zip(ranks, s.get_quantiles(ranks), strict=True))
        return LatencySummary(
            source,
            int(s.n),
            float(s.get_quantile(0.5)),
            float(s.get_quantile(0.95)),
            float(s.get_quantile(0.99)),
            float(s.get_max_value()),
            curve,
            dict(extra),
        )


@dataclass(frozen=True)
class LatencySummary:
    """One side's freshness. ``curve`` is (rank, ms) pairs for the report's plot."""

    source: str
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    curve: tuple[tuple[float, float], ...] = field(repr=False)
    extra: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "p99_ms": _round(self.p99_ms),
            "max_ms": _round(self.max_ms),
            "count": self.count,
            "source": self.source,
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def legacy_freshness(
    arrival_time: np.ndarray, schedule: np.ndarray, run_ms: np.ndarray
) -> tuple[np.ndarray, int]:
    """(freshness per visible event in ms, how many events arrived after the last as-of)."""
    idx = np.searchsorted(schedule, arrival_time, side="left")
    visible = idx < len(schedule)
    at = idx[visible]
    values = (schedule[at] - arrival_time[visible]).astype(np.float64) + run_ms[at]
    return values, int(np.count_nonzero(~visible))


def stream_freshness(
    user: np.ndarray,
    effective_time: np.ndarray,
    emitted_at: np.ndarray,
    expiry: np.ndarray,
    event_user: np.ndarray,
    event_time: np.ndarray,
    arrival_time: np.ndarray,
    applied: np.ndarray,
) -> tuple[np.ndarray, int]:
    """(freshness per attributed transition in ms, how many transitions had no causing event)."""
    out = np.empty(len(user), dtype=np.float64)
    out[expiry] = (emitted_at[expiry] - effective_time[expiry]).astype(np.float64)
    caused = np.flatnonzero(~expiry)
    arrival = _latest_arrival(
        user[caused], effective_time[caused], event_user[applied], event_time[applied], arrival_time[applied]
    )
    found = arrival >= 0
    out[caused[found]] = (emitted_at[caused[found]] - arrival[found]).astype(np.float64)
    keep = np.ones(len(user), dtype=np.bool_)
    keep[caused[~found]] = False
    return out[keep], int(np.count_nonzero(~found))


def _latest_arrival(
    user: np.ndarray, at: np.ndarray, event_user: np.ndarray, event_time: np.ndarray, arrival: np.ndarray
) -> np.ndarray:
    """For each (user, time), the latest arrival of an event of that user at exactly that time; -1 if none."""
    result = np.full(len(user), -1, dtype=np.int64)
    if len(user) == 0 or len(event_user) == 0:
        return result
    eu = event_user.astype(np.int64)
    floor = int(min(event_time.min(), at.min()))
    width = int(max(event_time.max(), at.max())) - floor + 1
    if (int(max(eu.max(), user.max())) + 1) * width >= _PACK_LIMIT:
        latest: dict[tuple[int, int], int] = {}
        for u, t, a in zip(eu.tolist(), event_time.tolist(), arrival.tolist(), strict=True):
            if a > latest.get((u, t), -1):
                latest[(u, t)] = a
        return np.array([latest.get((u, t), -1) for u, t in zip(user.tolist(), at.tolist(), strict=True)])
    keys = eu * width + (event_time - floor)
    order = np.argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    best = np.maximum.reduceat(arrival[order], starts)
    keys = keys[starts]
    wanted = user.astype(np.int64) * width + (at - floor)
    pos = np.searchsorted(keys, wanted)
    clipped = np.minimum(pos, len(keys) - 1)
    hit = (pos < len(keys)) & (keys[clipped] == wanted)
    result[hit] = best[clipped[hit]]
    return result


def read_measurements(path: str | Path) -> np.ndarray:
    """A live latency file: one number of ms per line (blank lines skipped); ``InputError`` otherwise."""
    values: list[float] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    value = float(text)
                except ValueError:
                    raise InputError(f"line {number} is not a number of ms", str(path)) from None
                if not np.isfinite(value) or value < 0:
                    raise InputError(f"line {number} is not a finite, non-negative number of ms", str(path))
                values.append(value)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    return np.array(values, dtype=np.float64)
