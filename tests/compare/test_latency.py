"""Freshness on both sides, and the sketches that summarise it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compare.keys import KeySpace, SortedRows
from compare.latency import (
    LatencySketch,
    freshness_columns,
    legacy_freshness,
    read_measurements,
    stream_freshness,
)
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


def _brute_freshness(
    transitions: list[tuple[int, int, int, bool]], events: list[tuple[int, int, int, bool]]
) -> tuple[list[float], list[float], int]:
    """The definition, one transition at a time: (sorted delays, sorted expiry delays, unattributed)."""
    delays, expiries, unattributed = [], [], 0
    for user, effective, emitted, expiry in transitions:
        if expiry:
            expiries.append(float(emitted - effective))
            continue
        arrivals = [a for u, _, a, applied in events if u == user and applied and a <= emitted]
        if arrivals:
            delays.append(float(emitted - max(arrivals)))
        else:
            unattributed += 1
    return sorted(delays), sorted(expiries), unattributed


@settings(max_examples=200, deadline=None)
@given(
    transitions=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 50), st.integers(0, 80), st.booleans()), max_size=30
    ),
    events=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50), st.integers(0, 80), st.booleans()), max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_freshness_from_columns_in_any_order_is_the_sorted_one(
    transitions: list[tuple[int, int, int, bool]], events: list[tuple[int, int, int, bool]], seed: int
) -> None:
    """Property: ``freshness_columns`` over the rows in input order (what the comparison calls) gives the
    figures ``stream_freshness`` gives over the rows sorted by (user, time), and both the definition's:
    each event-caused transition's delay after the latest applied arrival of its user at or before its
    emission, expiries apart, the rest unattributed."""
    rng = np.random.default_rng(seed)
    tr = np.array([t[:3] for t in transitions], dtype=np.int64).reshape(-1, 3)
    expiry = np.array([t[3] for t in transitions], dtype=np.bool_)
    ev = np.array([e[:3] for e in events], dtype=np.int64).reshape(-1, 3)
    applied = np.array([e[3] for e in events], dtype=np.bool_)
    want = _brute_freshness(transitions, events)
    for space in (KeySpace.of(5, [tr[:, 1], ev[:, 1]]), None):
        got = stream_freshness(
            SortedRows.of(tr[:, 0], tr[:, 1], space),
            tr[:, 2],
            expiry,
            SortedRows.of(ev[:, 0], ev[:, 1], space),
            ev[:, 2],
            applied,
        )
        assert (sorted(got[0].tolist()), sorted(got[1].tolist()), got[2]) == want
    t_perm, e_perm = rng.permutation(len(tr)), rng.permutation(len(ev))
    got = freshness_columns(
        tr[t_perm, 0].astype(np.int32),
        tr[t_perm, 2],
        expiry[t_perm],
        tr[t_perm, 1],
        ev[e_perm, 0].astype(np.int32),
        ev[e_perm, 2],
        applied[e_perm],
    )
    assert (sorted(got[0].tolist()), sorted(got[1].tolist()), got[2]) == want
