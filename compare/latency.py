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

**One figure for every output.** ``summarize`` is the only function that turns
samples into p50/p95/p99/max: up to ``EXACT_LIMIT`` samples it takes the exact
nearest-rank quantiles (the smallest sample with at least ``q`` of the samples at
or below it), so the same samples always give the same figure; beyond it the
samples go into a KLL sketch (``datasketches.kll_doubles_sketch``, k=200, rank
error about 1.3%) and each quantile is read at ``q`` plus the sketch's rank error,
so the figure is not below the exact one (with the sketch's 99% confidence) and
``exact`` says which it is. The console, ``live.json``, ``parity.json``, the
report, ``summary.md``, the dashboard, Prometheus and the freshness gate all show
the figure ``parity.json`` holds; none computes its own.

A replay has no processing clock (``emitted_at`` is stamped on the arrival
clock), so its stream freshness is **not measured**: ``source: replay``, ``count``
0 and every quantile ``null``; what the replay's ordering delays were is not a
freshness figure and is not reported as one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch

from compare.alignment import first_at_or_after
from compare.keys import SortedRows
from segments.errors import InputError

K = 200
CURVE_POINTS = 101
EXACT_LIMIT = 1_000_000
"""Up to this many samples the quantiles are exact (8 MB of float64); beyond it, a sketch's upper rank bound."""
NOT_MEASURED_REPLAY = "not measured (replay)"


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
        """p50/p95/p99/max and count from the sketch alone, each read at its rank plus the sketch's
        rank error (never below the exact quantile, with the sketch's confidence); None when empty."""
        s = self._sketch
        if s.is_empty():
            return LatencySummary(source, 0, None, None, None, None, (), dict(extra))
        error = float(s.normalized_rank_error(False))
        ranks = np.linspace(0.0, 1.0, CURVE_POINTS)
        upper = [float(s.get_quantile(min(1.0, float(r) + error))) for r in ranks]
        curve = tuple((float(r), q) for r, q in zip(ranks, upper, strict=True))
        p50, p95, p99 = (float(s.get_quantile(min(1.0, q + error))) for q in (0.5, 0.95, 0.99))
        return LatencySummary(source, int(s.n), p50, p95, p99, float(s.get_max_value()), curve, dict(extra), False)


def exact_quantile(ordered: np.ndarray, q: float) -> float:
    """The nearest-rank ``q`` quantile of ``ordered`` (sorted, non-empty): the smallest value with at
    least ``q`` of the values at or below it."""
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return float(ordered[rank - 1])


def summarize(values: np.ndarray | list[float] | list[int], source: str, **extra: int) -> LatencySummary:
    """The one freshness figure of ``values`` (ms): exact up to ``EXACT_LIMIT`` samples, else the
    sketch's upper rank bound (see the module doc). Every output that shows a p99 shows this one."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) > EXACT_LIMIT:
        return LatencySketch.of(array).summary(source, **extra)
    if len(array) == 0:
        return LatencySummary(source, 0, None, None, None, None, (), dict(extra))
    ordered = np.sort(array)
    ranks = np.linspace(0.0, 1.0, CURVE_POINTS)
    curve = tuple((float(r), exact_quantile(ordered, float(r))) for r in ranks)
    p50, p95, p99 = (exact_quantile(ordered, q) for q in (0.5, 0.95, 0.99))
    return LatencySummary(source, len(array), p50, p95, p99, float(ordered[-1]), curve, dict(extra), True)


def not_measured(source: str, **extra: int) -> LatencySummary:
    """A side whose freshness was not measured (a replay's stream): no count, no quantile."""
    return LatencySummary(source, 0, None, None, None, None, (), dict(extra), False)


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
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "p99_ms": _round(self.p99_ms),
            "max_ms": _round(self.max_ms),
            "count": self.count,
            "source": self.source,
            "exact": self.exact,
            **self.extra,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def legacy_freshness(
    arrival_time: np.ndarray, schedule: np.ndarray, run_ms: np.ndarray
) -> tuple[np.ndarray, int]:
    """(freshness per visible event in ms, how many events arrived after the last as-of)."""
    idx = first_at_or_after(schedule, arrival_time)
    visible = idx < len(schedule)
    hidden = int(np.count_nonzero(~visible))
    at = idx[visible] if hidden else idx
    values = schedule.take(at).astype(np.float64)
    values -= arrival_time[visible] if hidden else arrival_time
    values += run_ms.take(at)
    return values, hidden


def stream_freshness(
    transitions: SortedRows,
    emitted_at: np.ndarray,
    expiry: np.ndarray,
    events: SortedRows,
    arrival_time: np.ndarray,
    applied: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(processing delay per event-caused transition, delay per expiry, transitions with no trigger), in ms.

    An ``event`` or ``correction`` transition is emitted because an event of its
    user arrived: its trigger is the latest-arriving applied event of that user
    that arrived at or before ``emitted_at`` (for a correction, the late event, not
    the earlier event whose instant it rewrites), and its delay is ``emitted_at``
    minus that arrival. An ``expiry`` is due at its effective time; its delay,
    ``emitted_at - effective_time``, includes the watermark's max out-of-orderness
    by design, so it is reported apart. ``transitions`` are sorted by (user,
    effective time) and ``events`` by (user, event time); the arrays are in input order.
    """
    order = transitions.order
    return freshness_columns(
        transitions.users(),
        emitted_at[order],
        expiry[order],
        transitions.times(),
        events.users(),
        arrival_time.take(events.order),
        applied.take(events.order),
    )


def freshness_columns(
    tr_user: np.ndarray,
    emitted_at: np.ndarray,
    expiry: np.ndarray,
    effective_time: np.ndarray,
    ev_user: np.ndarray,
    arrival_time: np.ndarray,
    applied: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``stream_freshness`` from plain columns in any order: one row per transition (user code, emitted_at,
    expiry, effective time) and one per event (user code, arrival, applied). The figures do not depend on the
    rows' order (only the returned samples' order does), so no column need be gathered into a sorted order."""
    n = len(tr_user)
    if n == 0:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64), 0
    is_expiry = expiry
    emitted = emitted_at.astype(np.int64, copy=False)
    expiry_delay = (emitted[is_expiry] - effective_time[is_expiry]).astype(np.float64)

    ev_user = ev_user[applied].astype(np.int64, copy=False)  # fresh arrays (a mask's selection)
    ev_arrival = arrival_time[applied].astype(np.int64, copy=False)
    caused = ~is_expiry
    if len(ev_user) == 0:
        return np.zeros(0, dtype=np.float64), expiry_delay, int(np.count_nonzero(caused))
    floor = min(int(ev_arrival.min()), int(emitted.min()))
    width = max(int(ev_arrival.max()), int(emitted.max())) - floor + 2
    users = int(max(ev_user.max(), tr_user.max())) + 1
    if users * width < 2**62:
        # one sorted column of packed (user, arrival) keys: the user and the arrival of a match are read
        # back from its key, so neither is gathered in key order (and the sort needs no index array)
        ev_key = ev_user
        del ev_user
        ev_key *= width
        ev_arrival -= floor
        ev_key += ev_arrival
        del ev_arrival
        ev_key.sort()
        # the transitions' (user, emitted_at) packed the same way and sorted too: the searches then walk
        # the events' keys in order (rows in any order would make each a cache-missing binary search),
        # and a transition's user and emission are read back from its key as well
        every = bool(caused.all())  # no expiry: the columns as they are, no selection of them
        probe = (tr_user if every else tr_user[caused]).astype(np.int64)  # the user codes came narrow
        probe *= width
        probe += emitted if every else emitted[caused]
        probe -= floor
        probe.sort()
        at = np.searchsorted(ev_key, probe, side="right")
        at -= 1
        found = at >= 0
        np.maximum(at, 0, out=at)
        matched = ev_key.take(at)  # the latest arrival at or before each emission, of the same user or below
        del at, ev_key
        gap = probe - matched  # emitted - arrival where the users agree (their parts of the keys cancel)
        matched //= width
        probe //= width
        found &= matched == probe
        del matched, probe
        delay = gap[found].astype(np.float64)
        return delay, expiry_delay, int(np.count_nonzero(~found))
    else:  # key space too wide to pack: sort by (user, arrival) and search per transition
        sort = np.lexsort((ev_arrival, ev_user))
        ev_arrival, ev_user = ev_arrival[sort], ev_user[sort]
        at = np.array(
            [
                _last_at_or_before(ev_user, ev_arrival, u, e)
                for u, e in zip(tr_user[caused], emitted[caused], strict=True)
            ],
            dtype=np.int64,
        )
    found = at >= 0
    found[found] = ev_user[at[found]] == tr_user[caused][found]
    delay = (emitted[caused][found] - ev_arrival[at[found]]).astype(np.float64)
    return delay, expiry_delay, int(np.count_nonzero(~found))


def _last_at_or_before(users: np.ndarray, arrivals: np.ndarray, user: int, moment: int) -> int:
    lo = int(np.searchsorted(users, user, side="left"))
    hi = int(np.searchsorted(users, user, side="right"))
    index = lo + int(np.searchsorted(arrivals[lo:hi], moment, side="right")) - 1
    return index if index >= lo else -1


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
