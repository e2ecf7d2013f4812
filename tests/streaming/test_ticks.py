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
    _Collect.seen = []
    start = time.time() + 0.2
    interval = 0.02
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    _ = pipeline | Ticks(start, start + 0.5, interval, hold_s=0.1) | beam.ParDo(_Collect())
    pipeline.run().wait_until_finish()

    ticks = [tick for tick, _ in _Collect.seen]
    assert ticks == sorted(set(ticks)), "each tick once, in order"
    assert ticks and ticks[-1] < 25, "none at or after the stop"
    assert len(ticks) >= 10, "most ticks fire (a slow machine may skip a few, never repeat one)"
    for tick, at in _Collect.seen:
        assert at >= start + tick * interval - 0.001, "no tick before its time"


def test_a_bad_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        Ticks(0.0, 1.0, 0.0, 0.1)
