"""Why a pair differs (SPEC §5), from the event log alone.

For a mismatch of user ``u`` at as-of ``t`` the comparator looks at ``u``'s events
in the window ``(t - span, t]`` (``segments.windows.in_window``; ``span`` is the
rule set's longest window) whose kind some aggregate reads (other kinds cannot
change a set):

- ``late_arrival``: the stream applied some of them that arrived after ``t`` (the
  legacy run at ``t`` could not see them), and none below;
- ``dropped_too_late``: some that legacy saw (arrival ``<= t``) were dropped by
  the stream as too late, and none above;
- ``mixed``: both;
- ``unexplained``: neither. These are defects.
- ``approximate``: for a rule set with ``approx: cms`` aggregates, a mismatch
  that would be unexplained but that the sketches' declared bound explains
  (``compare.approximate``); it is not a defect and gates treat it apart.

``cause_for`` is the one-pair definition; ``classify`` computes the same for
many mismatches at once with numpy and keeps, for each, the window's events.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np

from compare.keys import SortedRows
from segments.events import Event
from segments.windows import in_window

CAUSES = ("late_arrival", "dropped_too_late", "mixed", "unexplained", "approximate")
LATE, DROPPED, MIXED, UNEXPLAINED, APPROXIMATE = range(5)


def cause_of(late: bool, dropped: bool) -> str:
    """The cause name for the two findings."""
    return CAUSES[_code(late, dropped)]


def _code(late: bool, dropped: bool) -> int:
    if late and dropped:
        return MIXED
    if late:
        return LATE
    return DROPPED if dropped else UNEXPLAINED


def cause_for(
    events: Iterable[Event], t: int, span_ms: int, too_late: Collection[str], kinds: Collection[str]
) -> str:
    """The cause of a mismatch at as-of ``t``, given the user's events (any order, deduplicated).

    ``too_late`` holds the ids the stream dropped; ``kinds`` the kinds the rule set reads.
    """
    late = dropped = False
    for event in events:
        if event.kind not in kinds or not in_window(event.event_time, t, span_ms):
            continue
        if event.event_id in too_late:
            dropped = dropped or event.arrival_time <= t
        else:
            late = late or event.arrival_time > t
    return cause_of(late, dropped)


@dataclass(frozen=True)
class WindowEvents:
    """For each mismatch ``i``, its window's events are ``events[start[i]:start[i] + count[i]]``.

    ``events`` holds event positions (into the ``EventFrame``), ordered by event time
    within each mismatch.
    """

    events: np.ndarray
    start: np.ndarray
    count: np.ndarray

    def of(self, i: int) -> np.ndarray:
        s = int(self.start[i])
        return self.events[s : s + int(self.count[i])]


@dataclass(frozen=True)
class Causes:
    """One cause code (an index into ``CAUSES``) per mismatch, and the events behind each."""

    code: np.ndarray
    windows: WindowEvents

    def counts(self) -> dict[str, int]:
        tally = np.bincount(self.code, minlength=len(CAUSES))
        return {name: int(tally[i]) for i, name in enumerate(CAUSES)}


def window_events(
    users: np.ndarray, times: np.ndarray, events: SortedRows, eligible: np.ndarray, span_ms: int
) -> WindowEvents:
    """For each (user, t), the eligible events of that user with event time in ``(t - span_ms, t]``.

    ``events`` is the event log sorted by (user, event time); ``eligible`` is in log order.
    """
    m = len(users)
    if m == 0 or len(events) == 0:
        empty = np.zeros(m, dtype=np.int64)
        return WindowEvents(np.zeros(0, dtype=np.int64), empty, empty)
    lo = events.after(users, times - span_ms)
    hi = events.after(users, times)
    count = (hi - lo).astype(np.int64)
    rows = np.repeat(np.arange(m), count)
    start = np.zeros(m, dtype=np.int64)
    np.cumsum(count[:-1], out=start[1:])
    positions = events.order[lo[rows] + (np.arange(int(count.sum()), dtype=np.int64) - start[rows])]
    keep = eligible[positions]
    count = np.bincount(rows[keep], minlength=m).astype(np.int64)
    start = np.zeros(m, dtype=np.int64)
    np.cumsum(count[:-1], out=start[1:])
    return WindowEvents(positions[keep], start, count)


def classify(
    users: np.ndarray,
    times: np.ndarray,
    events: SortedRows,
    arrival_time: np.ndarray,
    too_late: np.ndarray,
    relevant: np.ndarray,
    span_ms: int,
) -> Causes:
    """``cause_for`` for every mismatch (``users[i]`` at ``times[i]``) at once.

    ``events`` is the event log sorted by (user, event time); the other event
    columns are in log order.
    """
    windows = window_events(users, times, events, relevant, span_ms)
    m = len(users)
    rows = np.repeat(np.arange(m), windows.count)
    ev = windows.events
    t = times[rows]
    late = ~too_late[ev] & (arrival_time[ev] > t)
    dropped = too_late[ev] & (arrival_time[ev] <= t)
    any_late = np.bincount(rows[late], minlength=m) > 0
    any_dropped = np.bincount(rows[dropped], minlength=m) > 0
    code = np.full(m, UNEXPLAINED, dtype=np.int8)
    code[any_dropped] = DROPPED
    code[any_late] = LATE
    code[any_late & any_dropped] = MIXED
    return Causes(code, windows)
