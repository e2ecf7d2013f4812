"""``Ticks``: a clock for polling sources that keeps each bundle open for a while.

Beam's ``PeriodicImpulse`` emits every tick that is due and then checkpoints, so
on FnApiRunner each runner pass is one bundle whose ticks all fire at its start,
followed by the bundle's commit and the runner's bookkeeping; a poll waits for
all of that. ``Ticks`` instead sleeps between ticks inside the bundle for up to
``hold_s`` seconds and only then checkpoints, so the polls downstream are spread
evenly in time and the per-bundle costs (state commits, runner passes) are paid
once per ``hold_s`` rather than once per poll. Ticks missed because a poll ran
long are skipped, not emitted back to back (a poll reads everything that
arrived meanwhile). It is an ordinary splittable DoFn with an offset
restriction, so any runner that runs ``PeriodicImpulse`` runs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp


class _TickRange(RestrictionProvider):
    """The restriction is the range of tick numbers, ``[0, ceil((stop - start) / interval))``."""

    def initial_restriction(self, element: tuple[float, float, float, float]) -> OffsetRange:
        start, stop, interval, _ = element
        return OffsetRange(0, max(0, math.ceil((stop - start) / interval)))

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: tuple[float, float, float, float], restriction: OffsetRange) -> int:
        start, _, interval, _ = element
        due = math.floor((time.time() - start) / interval)
        return 8 * max(0, min(restriction.stop, due) - restriction.start)

    def truncate(self, element: Any, restriction: OffsetRange) -> None:
        return None  # on drain, stop ticking


class _EmitTicks(beam.DoFn):
    """(start, stop, interval, hold) -> the tick numbers, each at its time, ``hold`` seconds per bundle."""

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: tuple[float, float, float, float],
        tracker: Any = beam.DoFn.RestrictionParam(_TickRange()),
        watermark: Any = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ) -> Iterator[TimestampedValue]:
        start, _, interval, hold = element
        index = tracker.current_restriction().start
        until = time.time() + hold
        while True:
            now = time.time()
            index = max(index, math.floor((now - start) / interval))  # skip ticks a long poll overran
            due = start + interval * index
            if max(due, now) > until:  # the hold is over, whether or not the polls kept up
                _advance(watermark, due)
                tracker.defer_remainder(Timestamp.of(due))
                return
            if due > now:
                time.sleep(due - now)
            if not tracker.try_claim(index):
                return
            _advance(watermark, due)
            yield TimestampedValue(index, due)
            index += 1


def _advance(watermark: Any, seconds: float) -> None:
    """Move the manual watermark estimator forward (never back)."""
    current = watermark.current_watermark()
    at = Timestamp.of(seconds)
    if current is None or at > current:
        watermark.set_watermark(at)


class Ticks(beam.PTransform):
    """An unbounded PCollection of tick numbers every ``interval_s`` from ``start`` to ``stop`` (unix seconds)."""

    def __init__(self, start: float, stop: float, interval_s: float, hold_s: float) -> None:
        super().__init__()
        if interval_s <= 0 or hold_s < 0:
            raise ValueError("a tick interval must be positive and a hold not negative")
        self.element = (start, stop, interval_s, hold_s)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | beam.Impulse() | beam.Map(lambda _, e: e, self.element) | beam.ParDo(_EmitTicks())
