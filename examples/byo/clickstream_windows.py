"""A team's own Beam transform for the clickstream segments, written with Beam's windowing.

Run it in place of segshadow's segmenter::

    segshadow stream replay --events EVENTS --rules clickstream \
        --transform examples.byo.clickstream_windows:ClickstreamWindows --out stream.jsonl

It reads ``streaming.byo.AdmittedEvent`` values (timestamped with their event time)
and returns ``(user_id, segments, effective_time)`` changes:

1. ``SlidingWindows`` of 10 minutes every minute, offset by 1 ms, so that the window
   ending just after the minute ``t`` holds exactly the event times in ``(t - 10m, t]``
   (the rule set's trailing window, in millisecond time);
2. a ``CombineFn`` per user and window: net spend (purchases minus refunds, exact
   micro-units), views and purchases;
3. the segments at ``t`` from those totals (``high_value``: net spend > 100;
   ``window_shopper``: >= 3 views and no purchase);
4. per user, the minute-by-minute values as changes, with an empty set one minute
   after the last window that held an event (windows without events do not exist).

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
    """(user, totals) of a window -> (user, (t, segments)) where ``t`` is the window's last millisecond."""

    def process(
        self, element: tuple[str, tuple[int, int, int]], win: Any = beam.DoFn.WindowParam
    ) -> Iterator[tuple[str, tuple[int, tuple[str, ...]]]]:
        user, totals = element
        yield user, (win.end.micros // 1000 - 1, segments_of(totals))


def changes(element: tuple[str, Iterable[tuple[int, tuple[str, ...]]]]) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """One user's per-minute values as changes, closing each run of windows with an empty set."""
    user, values = element
    current: tuple[str, ...] = ()
    last: int | None = None
    for t, names in sorted(values):
        if last is not None and t - last > MINUTE_MS and current:
            yield user, (), last + MINUTE_MS
            current = ()
        if names != current:
            yield user, names, t
            current = names
        last = t
    if last is not None and current:
        yield user, (), last + MINUTE_MS


class ClickstreamWindows(beam.PTransform):
    """The clickstream rule set as sliding windows and a combiner."""

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return (
            events
            | "ByUser" >> beam.Map(lambda e: (e.user_id, e))
            | "Slide" >> beam.WindowInto(window.SlidingWindows(size=600, period=60, offset=0.001))
            | "Totals" >> beam.CombinePerKey(ClickTotals())
            | "AtWindowEnd" >> beam.ParDo(AtWindowEnd())
            | "Whole" >> beam.WindowInto(window.GlobalWindows())
            | "PerUser" >> beam.GroupByKey()
            | "Changes" >> beam.FlatMap(changes)
        )
