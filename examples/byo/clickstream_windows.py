"""A team's own Beam transform for the clickstream segments, written with Beam's windowing.

Run it in place of segshadow's segmenter (``stream live`` takes it too)::

    segshadow stream replay --events EVENTS --rules clickstream \
        --transform examples.byo.clickstream_windows:ClickstreamWindows --out stream.jsonl

It reads ``streaming.byo.AdmittedEvent`` values (timestamped with their event time)
and returns ``(user_id, segments, effective_time)`` values:

1. ``FixedWindows`` of one minute and a ``CombineFn`` per user: net spend
   (purchases minus refunds, exact micro-units), views and purchases of the
   user's events in each minute ``(T - 1m, T]`` (windows offset by 1 ms end just
   after a whole minute). A user's events of one minute become one element: most
   of the cost below is per element and window;
2. ``SlidingWindows`` of 10 minutes every minute over those minute totals, added
   up: the window ending just after the minute ``t`` holds exactly the event times
   in ``(t - 10m, t]`` (the rule set's trailing window, in millisecond time);
3. the segments at ``t`` from those totals (``high_value``: net spend > 100;
   ``window_shopper``: >= 3 views and no purchase), said at ``t``;
4. the empty set where the user's last events leave the trailing window (windows
   without events do not exist, so nothing else says it): ``Sessions`` of the
   minutes that had events, with a gap of just over ten minutes, so a session
   ends where no minute with events follows within ten minutes; the set is empty
   ten minutes after its latest minute.

The harness keeps only the changes among these values (``streaming.byo``). No step
needs the whole input, so the same transform runs live.

So the set is evaluated on the minute grid: at every whole minute (and so at every
as-of of a legacy job that runs every few minutes) it equals the rule set over the
events it was given. Between minutes it holds the last minute's value, and Beam's
windows give it no idea of arrival time: a late event simply lands in its
event-time windows. That is where it differs from segshadow's own stream, which
evaluates at every event and expiry instant.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms import window

MINUTE_MS = 60_000
WINDOW_MINUTES = 10  # the rule set's trailing window
HIGH_VALUE_MICROS = 100_000_000  # 100.00 in micro-units


class ClickTotals(beam.CombineFn):
    """(net spend in micro-units, views, purchases) over one user's events in one window."""

    def create_accumulator(self) -> tuple[int, int, int]:
        return 0, 0, 0

    def add_input(self, totals: tuple[int, int, int], event: Any) -> tuple[int, int, int]:
        spend, views, purchases = totals
        if event.kind == "purchase":
            return spend + event.amount_micros, views, purchases + 1
        if event.kind == "refund":
            return spend - event.amount_micros, views, purchases
        if event.kind == "view":
            return spend, views + 1, purchases
        return totals

    def merge_accumulators(self, accumulators: Iterable[tuple[int, int, int]]) -> tuple[int, int, int]:
        spend = views = purchases = 0
        for s, v, p in accumulators:
            spend, views, purchases = spend + s, views + v, purchases + p
        return spend, views, purchases

    def extract_output(self, totals: tuple[int, int, int]) -> tuple[int, int, int]:
        return totals


def segments_of(totals: tuple[int, int, int]) -> tuple[str, ...]:
    spend, views, purchases = totals
    names = []
    if spend > HIGH_VALUE_MICROS:
        names.append("high_value")
    if views >= 3 and purchases == 0:
        names.append("window_shopper")
    return tuple(names)


def last_minute(win: Any) -> int:
    """The whole minute (epoch ms) a window ends on: its end is 1 ms after it (the windows' offset)."""
    return int(win.end.micros // 1000 - 1)


class AddTotals(beam.CombineFn):
    """Minute totals added up over a sliding window."""

    def create_accumulator(self) -> tuple[int, int, int]:
        return 0, 0, 0

    def add_input(self, totals: tuple[int, int, int], minute: tuple[int, int, int]) -> tuple[int, int, int]:
        return totals[0] + minute[0], totals[1] + minute[1], totals[2] + minute[2]

    def merge_accumulators(self, accumulators: Iterable[tuple[int, int, int]]) -> tuple[int, int, int]:
        return ClickTotals().merge_accumulators(accumulators)

    def extract_output(self, totals: tuple[int, int, int]) -> tuple[int, int, int]:
        return totals


class SegmentsAtWindowEnd(beam.DoFn):
    """(user, totals) of a 10-minute window -> (user, segments, t), ``t`` the minute it ends on."""

    def process(self, element: tuple[str, tuple[int, int, int]], win: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        user, totals = element
        yield user, segments_of(totals), last_minute(win)


class MinuteOf(beam.DoFn):
    """(user, totals) of a one-minute window -> (user, the minute it ends on)."""

    def process(self, element: tuple[str, Any], win: Any = beam.DoFn.WindowParam) -> Iterator[tuple[str, int]]:
        yield element[0], last_minute(win)


class EmptyAfterSession(beam.DoFn):
    """(user, the latest minute of a session of minutes with events) -> the empty set ten minutes after it, where
    that minute's events leave the trailing window and no later minute's have entered it."""

    def process(self, element: tuple[str, int]) -> Iterator[Any]:
        user, latest = element
        yield user, (), latest + WINDOW_MINUTES * MINUTE_MS


def sliding(minutes: int) -> window.SlidingWindows:
    """Windows of ``minutes`` every minute, offset by 1 ms: the one ending just after the minute ``t`` holds
    exactly the event times in ``(t - minutes, t]``."""
    return window.SlidingWindows(size=minutes * 60, period=60, offset=0.001)


class ClickstreamWindows(beam.PTransform):
    """The clickstream rule set as sliding windows and a combiner."""

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        minutes = (  # a minute's totals carry its window's end, so they land in the windows that hold the minute
            events
            | "ByUser" >> beam.Map(lambda e: (e.user_id, e))
            | "Minute" >> beam.WindowInto(window.FixedWindows(60, offset=0.001))
            | "MinuteTotals" >> beam.CombinePerKey(ClickTotals())
        )
        values = (
            minutes
            | "Slide" >> beam.WindowInto(sliding(WINDOW_MINUTES))
            | "Totals" >> beam.CombinePerKey(AddTotals())
            | "Segments" >> beam.ParDo(SegmentsAtWindowEnd())
            | "ValuesWhole" >> beam.WindowInto(window.GlobalWindows())
        )
        empties = (
            minutes
            | "MinuteOf" >> beam.ParDo(MinuteOf())
            # minutes T1 < T2 share a session when T2 - T1 <= 10m: then the window at T1 + 10m holds T2's events
            | "Sessions" >> beam.WindowInto(window.Sessions(WINDOW_MINUTES * 60 + 0.001))
            | "Latest" >> beam.CombinePerKey(max)
            | "Empty" >> beam.ParDo(EmptyAfterSession())
            | "EmptiesWhole" >> beam.WindowInto(window.GlobalWindows())
        )
        return (values, empties) | "Both" >> beam.Flatten()
