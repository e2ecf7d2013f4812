"""``Ticks``: the live source's clock holds bundles open, ticks in order, and stops at its end."""

from __future__ import annotations

import time
from typing import ClassVar

import apache_beam as beam
import pytest

from streaming.options import LIVE_RUNNER, pipeline_options
from streaming.ticks import Ticks


class _Collect(beam.DoFn):
    seen: ClassVar[list[tuple[int, float]]] = []  # FnApiRunner runs the DoFn in this process

    def process(self, tick: int) -> None:
        _Collect.seen.append((tick, time.time()))


def test_ticks_come_in_order_at_their_times_until_the_stop() -> None:
    """Over 4 s, so that a pipeline slow to start on a loaded machine (CI saw load 13) still meets most
    ticks: those whose time passed before the first bundle are skipped, as the module doc says."""
    _Collect.seen = []
    start = time.time() + 0.5
    interval, count = 0.05, 80
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    _ = pipeline | Ticks(start, start + count * interval, interval, hold_s=0.1) | beam.ParDo(_Collect())
    pipeline.run().wait_until_finish()

    ticks = [tick for tick, _ in _Collect.seen]
    assert ticks, "the pipeline started within the 4.5 s and met ticks"
    assert ticks == sorted(set(ticks)), "each tick once, in order"
    assert ticks[-1] < count, "none at or after the stop"
    met = count - ticks[0]
    assert len(ticks) >= met / 2, f"most ticks after the first fire ({len(ticks)} of {met}); none is repeated"
    for tick, at in _Collect.seen:
        assert at >= start + tick * interval - 0.001, "no tick before its time"


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        Ticks(0.0, 1.0, 0.0, 0.1)
