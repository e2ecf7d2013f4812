"""Freshness on both sides, and the sketches that summarise it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compare.keys import KeySpace, SortedRows
from compare.latency import LatencySketch, legacy_freshness, read_measurements, stream_freshness
from segments.errors import InputError

MIN = 60_000


def test_legacy_freshness_is_the_next_as_of_plus_its_run_time() -> None:
    """An event becomes visible at the first as-of at or after its arrival, once that run finishes."""
    schedule = np.array([10 * MIN, 15 * MIN], dtype=np.int64)
    run_ms = np.array([100.0, 200.0])
    arrivals = np.array([6 * MIN, 10 * MIN, 12 * MIN, 16 * MIN], dtype=np.int64)
    values, never = legacy_freshness(arrivals, schedule, run_ms)
    assert values.tolist() == [4 * MIN + 100, 100, 3 * MIN + 200]
    assert never == 1


def test_stream_freshness_uses_the_latest_arrival_of_the_causing_event() -> None:
    """event/correction: emitted_at minus the latest arrival of an applied event of the user at or before
    emitted_at (its trigger); expiry, apart: emitted_at minus the effective time; no trigger: unattributed."""
    user, effective = np.array([0, 0, 1, 1]), np.array([9_000, 20_000, 9_000, 7_000])
    event_user, event_time = np.array([0, 0, 0, 1, 1]), np.array([9_000] * 5)
    for space in (KeySpace.of(2, [effective, event_time]), None):
        values, expiries, unattributed = stream_freshness(
            SortedRows.of(user, effective, space),
            emitted_at=np.array([12_000, 25_000, 9_500, 8_000]),
            expiry=np.array([False, True, False, False]),
            events=SortedRows.of(event_user, event_time, space),
            arrival_time=np.array([9_000, 11_000, 11_500, 9_100, 9_000]),
            applied=np.array([True, True, False, True, True]),
        )
        assert sorted(values.tolist()) == [400, 1_000]  # 12_000 - 11_000 (11_500 was not applied), 9_500 - 9_100
        assert expiries.tolist() == [5_000]
        assert unattributed == 1  # user 1 at 8_000: nothing of theirs had arrived yet


def test_sketch_summary_and_merge() -> None:
    """Quantiles are exact below k values; merged sketches hold both runs."""
    first = LatencySketch.of(np.arange(1, 101, dtype=np.float64))
    second = LatencySketch.of(np.array([1000.0]))
    first.merge(second)
    summary = LatencySketch.from_bytes(first.to_bytes()).summary("test", unattributed=0)
    assert summary.count == 101
    assert summary.max_ms == 1000.0
    assert summary.p50_ms == pytest.approx(51, abs=1)
    assert summary.to_dict()["unattributed"] == 0
    empty = LatencySketch().summary("none")
    assert (empty.count, empty.p50_ms, empty.to_dict()["p99_ms"]) == (0, None, None)


def test_live_measurements_file(tmp_path: Path) -> None:
    """One ms value per line; anything else is refused with its line number."""
    good = tmp_path / "lat.txt"
    good.write_text("0.4\n\n12\n3.5\n")
    assert read_measurements(good).tolist() == [0.4, 12.0, 3.5]
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nfast\n")
    with pytest.raises(InputError, match="line 2"):
        read_measurements(bad)
    with pytest.raises(InputError, match="cannot read"):
        read_measurements(tmp_path / "missing.txt")
