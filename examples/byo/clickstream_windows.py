"""A team's own Beam transform for the clickstream segments, written with Beam's windowing.

Run it in place of segshadow's segmenter::

    segshadow stream replay --events EVENTS --rules clickstream \
        --transform examples.byo.clickstream_windows:ClickstreamWindows --out stream.jsonl

It reads ``streaming.byo.AdmittedEvent`` values (timestamped with their event time)
and returns ``(user_id, segments, effective_time)`` values:

1. ``SlidingWindows`` of 10 minutes every minute, offset by 1 ms, so that the window
   ending just after the minute ``t`` holds exactly the event times in ``(t - 10m, t]``
   (the rule set's trailing window, in millisecond time);
2. a ``CombineFn`` per user and window: net spend (purchases minus refunds, exact
   micro-units), views and purchases;
3. the segments at ``t`` from those totals (``high_value``: net spend > 100;
   ``window_shopper``: >= 3 views and no purchase), said at ``t``;
4. the empty set one minute after the last window of a run (windows without
   events do not exist), found by a second, two-minute sliding window over those
   values: one that holds a value at its first minute and none at its second.

The harness keeps only the changes among these values (``streaming.byo``). No step
needs the whole input, so the same transform runs under ``stream live`` too.

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


class AtWindowEnd(beam.DoFn):
    """(user, totals) of a window -> (user, (t, segments)) timestamped at ``t``, the window's last millisecond."""

    def process(
        self, element: tuple[str, tuple[int, int, int]], win: Any = beam.DoFn.WindowParam
    ) -> Iterator[window.TimestampedValue]:
        user, totals = element
        t = win.end.micros // 1000 - 1
        yield window.TimestampedValue((user, (t, segments_of(totals))), t / 1000)


class MinutesPresent(beam.CombineFn):
    """The minutes ``t`` (epoch ms) at which a user's sliding windows exist, within one short window."""

    def create_accumulator(self) -> frozenset[int]:
        return frozenset()

    def add_input(self, minutes: frozenset[int], value: tuple[int, tuple[str, ...]]) -> frozenset[int]:
        return minutes | {value[0]}

    def merge_accumulators(self, accumulators: Iterable[frozenset[int]]) -> frozenset[int]:
        return frozenset().union(*accumulators)

    def extract_output(self, minutes: frozenset[int]) -> frozenset[int]:
        return minutes


class EmptyAfterLast(beam.DoFn):
    """In a two-minute window [m, m + 2 min): a value at ``m`` and none a minute later means the user's events
    have all left the trailing window there, so the set is empty from ``m + 1 min`` (no window exists to say so).
    """

    def process(self, element: tuple[str, frozenset[int]], win: Any = beam.DoFn.WindowParam) -> Iterator[Any]:
        user, minutes = element
        first = win.start.micros // 1000
        if minutes == {first}:
            yield user, (first + MINUTE_MS, ())


class ClickstreamWindows(beam.PTransform):
    """The clickstream rule set as sliding windows and a combiner.

    It says the set at every minute where a window exists, and the empty set a minute after the last one of a
    run; the harness keeps only the changes. Every step is windowed, so it runs in replay and live alike.
    """

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        minutes = (
            events
            | "ByUser" >> beam.Map(lambda e: (e.user_id, e))
            | "Slide" >> beam.WindowInto(window.SlidingWindows(size=600, period=60, offset=0.001))
            | "Totals" >> beam.CombinePerKey(ClickTotals())
            | "AtWindowEnd" >> beam.ParDo(AtWindowEnd())
        )
        empties = (
            minutes
            | "Pairs" >> beam.WindowInto(window.SlidingWindows(size=120, period=60))
            | "Present" >> beam.CombinePerKey(MinutesPresent())
            | "EmptyAfterLast" >> beam.ParDo(EmptyAfterLast())
            | "EmptiesWhole" >> beam.WindowInto(window.GlobalWindows())
        )
        values = minutes | "MinutesWhole" >> beam.WindowInto(window.GlobalWindows())
        return (values, empties) | "Both" >> beam.Flatten() | "Triples" >> beam.Map(as_triple)


def as_triple(element: tuple[str, tuple[int, tuple[str, ...]]]) -> tuple[str, tuple[str, ...], int]:
    """(user, (t, segments)) -> (user_id, segments, effective_time), what the harness reads."""
    user, (t, names) = element
    return user, names, t
