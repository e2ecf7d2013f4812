"""Segment reach per minute and hour: DataSketches HLL and Redis PF* beside the exact count, within their bounds."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compare.reach import build_reach, legacy_reach, stream_reach
from segments.reachstore import ReachStore, reach_key
from segments.redisstore import connect
from segments.sketches import REDIS_HLL_BOUND, hll_bound, hll_of, hll_to_text, merge_hll, relative_error

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
MIN = 60_000


def seeded_sides(users: int, seed: int) -> tuple[pa.Table, pa.Table, int]:
    """A stream output where each user holds a segment for a few minutes, and legacy as-ofs every 5 minutes."""
    rng = random.Random(seed)
    rows: list[tuple[str, list[str], int, int]] = []
    legacy: list[tuple[int, str, list[str]]] = []
    for n in range(users):
        user = f"u{n}"
        start = T0 + rng.randrange(0, 110 * MIN)
        segs = ["high_value"] if n % 3 == 0 else ["window_shopper"] if n % 3 == 1 else ["high_value", "window_shopper"]
        end = start + rng.randrange(MIN, 12 * MIN)
        rows += [(user, segs, start, 1), (user, [], end, 2)]
        for as_of in range(T0, T0 + 125 * MIN, 5 * MIN):
            if start <= as_of < end:
                legacy.append((as_of, user, segs))
    stream = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "segments": pa.array([r[1] for r in rows], pa.list_(pa.string())),
            "effective_time": [r[2] for r in rows],
            "revision": [r[3] for r in rows],
        }
    )
    legacy_table = pa.table(
        {
            "as_of": [r[0] for r in legacy],
            "user_id": [r[1] for r in legacy],
            "segments": pa.array([r[2] for r in legacy], pa.list_(pa.string())),
        }
    )
    return legacy_table, stream, T0 + 125 * MIN


def test_exact_reach_follows_the_settled_timeline() -> None:
    """A user counts in every minute its settled set holds the segment; a higher revision replaces a lower one."""
    stream = pa.table(
        {
            "user_id": ["a", "a", "a", "b"],
            "segments": pa.array([["x"], [], ["y"], ["x"]], pa.list_(pa.string())),
            "effective_time": [T0 + 30_000, T0 + 2 * MIN + 1, T0 + 2 * MIN + 1, T0 + 5 * MIN],
            "revision": [1, 2, 3, 1],
        }
    )
    reach = stream_reach(stream, T0 + 5 * MIN)
    assert {k[3] - T0: len(v) for k, v in reach.items() if k[1] == "x"} == {0: 1, MIN: 1, 2 * MIN: 1, 5 * MIN: 1}
    assert {k[3] - T0 for k in reach if k[1] == "y"} == {2 * MIN, 3 * MIN, 4 * MIN, 5 * MIN}  # revision 3 wins
    legacy = pa.table({"as_of": [T0 + 5 * MIN], "user_id": ["a"], "segments": pa.array([["x"]], pa.list_(pa.string()))})
    assert legacy_reach(legacy) == {("legacy", "x", "minute", T0 + 5 * MIN): {"a"}}


def test_hll_and_redis_reach_are_within_their_stated_bounds_of_exact(redis_url: str) -> None:
    """On seeded data large enough for HLL mode, every minute and hour bucket of both sides is within
    DataSketches' stated 3-sigma bound, and Redis' PFCOUNT (minutes PFADDed, hours PFMERGEd) within 3 x 0.81%."""
    legacy, stream, horizon = seeded_sides(40_000, seed=11)
    client = connect(redis_url)
    try:
        reach = build_reach(legacy, stream, horizon, ReachStore(client))
        hour = next(r for r in reach.rows if r.grain == "hour" and r.side == "stream")
        assert client.exists(reach_key("stream", hour.segment, "hour", hour.bucket_ms))
    finally:
        client.close()
    rows = reach.rows
    assert {r.side for r in rows} == {"legacy", "stream"} and {r.grain for r in rows} == {"minute", "hour"}
    big = [r for r in rows if r.exact > 1000]
    assert len(big) > 50
    assert any(r.hll != r.exact for r in big)  # the sketch estimates; it is not an exact count in disguise
    outside = [(r.side, r.segment, r.grain, r.exact, r.hll) for r in rows if not r.within]
    assert not outside
    assert all(r.hll_error <= (reach.hour_bound if r.grain == "hour" else reach.minute_bound) for r in rows)
    assert all(r.redis_error is not None and r.redis_error <= REDIS_HLL_BOUND for r in rows)
    assert reach.summary()["outside_bound"] == 0


def test_hll_sketches_merge_across_shards() -> None:
    """Two shards' sketches (and two runs' copies of the same users) merge into one within the union bound."""
    users = [f"user-{n}" for n in range(20_000)]
    merged = merge_hll([hll_of(users[::2]), hll_of(users[1::2]), hll_of(users[:5000])])
    assert merged.get_estimate() != len(users)
    assert relative_error(merged.get_estimate(), len(users)) <= hll_bound(unioned=True)


def _as_sets(side: object) -> dict[tuple[str, str, str, int], set[str]]:
    from compare.reach import SideReach

    assert isinstance(side, SideReach)
    return {key: {side.names[c] for c in codes.tolist()} for key, codes in side.minutes.items()}


def _noisy_stream() -> pa.Table:
    """300 users, random revisions and sets (repeated names too) over 300 minutes, and a tie on revision."""
    rng = random.Random(7)
    names = ["x", "y", "z"]
    rows = []
    for _ in range(4_000):
        user = f"v{rng.randrange(300)}"
        segs = rng.sample(names, rng.randrange(0, 3)) + (["x"] if rng.random() < 0.05 else [])  # repeats too
        rows.append((user, segs, T0 + rng.randrange(0, 300 * MIN), rng.randrange(1, 4)))
    rows.append(("v1", ["x"], T0 + 3 * MIN, 9))
    rows.append(("v1", ["y"], T0 + 3 * MIN, 9))  # a tie on revision: the first in input order wins
    noisy = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "segments": pa.array([r[1] for r in rows], pa.list_(pa.string())),
            "effective_time": [r[2] for r in rows],
            "revision": [r[3] for r in rows],
        }
    )
    return noisy


def test_columnar_reach_equals_the_definition() -> None:
    """``legacy_minutes`` / ``stream_minutes`` (numpy, what ``build_reach`` uses) give exactly the sets of
    ``legacy_reach`` / ``stream_reach`` (one Python set per bucket): revisions, ties, empty sets, spans
    crossing the horizon and the expansion's chunk edges included."""
    from compare.reach import legacy_minutes, stream_minutes

    legacy, stream, horizon = seeded_sides(3_000, seed=5)
    noisy = _noisy_stream()
    assert _as_sets(legacy_minutes(legacy)) == legacy_reach(legacy)
    for table, end in ((stream, horizon), (noisy, T0 + 200 * MIN), (noisy, T0 + 400 * MIN)):
        expected = stream_reach(table, end)
        assert len(expected) > 100
        assert _as_sets(stream_minutes(table, end)) == expected


@pytest.mark.parametrize(
    ("dense", "cells"),
    [(0, 1 << 22), (10**9, 1 << 22), (10**9, 7)],
    ids=["always-sorted", "always-bitmap", "bitmap-one-minute-at-a-time"],
)
def test_each_grouping_gives_the_same_minutes_in_the_same_order(
    monkeypatch: pytest.MonkeyPatch, dense: int, cells: int
) -> None:
    """The minutes' users are grouped by a sort or by a (minute, user) bitmap, whichever is cheaper; forced
    either way (and the bitmap one minute at a time), every bucket, its users and their order (the order the
    HLL is updated in, which its estimate depends on) are those of the definition, in ascending bucket order."""
    import compare.reach as reach

    legacy, stream, horizon = seeded_sides(1_000, seed=3)
    noisy = _noisy_stream()
    monkeypatch.setattr(reach, "_DENSE", dense)
    monkeypatch.setattr(reach, "_BITMAP_CELLS", cells)
    for side, expected in (
        (reach.legacy_minutes(legacy), legacy_reach(legacy)),
        (reach.stream_minutes(stream, horizon), stream_reach(stream, horizon)),
        (reach.stream_minutes(noisy, T0 + 200 * MIN), stream_reach(noisy, T0 + 200 * MIN)),
    ):
        assert _as_sets(side) == expected
        for codes in side.minutes.values():
            assert codes.dtype == np.int32 and bool(np.all(np.diff(codes) > 0))  # ascending, distinct
        keys = list(side.minutes)
        for segment in {key[1] for key in keys}:
            buckets = [key[3] for key in keys if key[1] == segment]
            assert buckets == sorted(buckets)


_SEGMENTS = ("x", "y", "z")


@st.composite
def _sides(draw: st.DrawFn) -> tuple[pa.Table, pa.Table, int]:
    """Small random outputs: stream rows with revisions (ties too), repeated and empty sets, times off the
    minute; legacy rows at a few as-ofs (some in one minute bucket), users named so code order != name order."""
    users = [f"w{n}" for n in draw(st.permutations(range(draw(st.integers(1, 12)))))]
    row = st.tuples(
        st.sampled_from(users),
        st.lists(st.sampled_from(_SEGMENTS), max_size=4),
        st.integers(0, 40 * MIN),
        st.integers(1, 3),
    )
    rows = draw(st.lists(row, max_size=60))
    stream = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "segments": pa.array([r[1] for r in rows], pa.list_(pa.string())),
            "effective_time": pa.array([T0 + r[2] for r in rows], pa.int64()),
            "revision": pa.array([r[3] for r in rows], pa.int64()),
        }
    )
    as_ofs = draw(st.lists(st.integers(0, 40 * MIN // 10_000), min_size=1, max_size=6, unique=True))
    cells = draw(
        st.lists(
            st.tuples(
                st.sampled_from(as_ofs), st.sampled_from(users), st.lists(st.sampled_from(_SEGMENTS), max_size=3)
            ),
            max_size=40,
            unique_by=lambda c: (c[0], c[1]),
        )
    )
    legacy = pa.table(
        {
            "as_of": pa.array([T0 + 10_000 * c[0] for c in cells], pa.int64()),
            "user_id": pa.array([c[1] for c in cells], pa.string()),
            "segments": pa.array([c[2] for c in cells], pa.list_(pa.string())),
        }
    )
    return legacy, stream, T0 + draw(st.integers(0, 45 * MIN))


def _first_seen(table: pa.Table) -> dict[str, int]:
    """A side's user codes: the order users first appear in its table (the order its HLLs are updated in)."""
    order: dict[str, int] = {}
    for user in table.column("user_id").to_pylist():
        order.setdefault(user, len(order))
    return order


@pytest.mark.parametrize("dense", [0, 10**9], ids=["sorted", "sweep"])
@settings(max_examples=150, deadline=None)
@given(sides=_sides())
def test_reach_sweep_equals_the_definition_sketch_for_sketch(dense: int, sides: tuple[pa.Table, pa.Table, int]) -> None:
    """Property: whichever grouping runs (the slot sweep, or the sort for sparse minutes), every minute's users
    are the definition's (``legacy_reach`` / ``stream_reach``, one Python set per bucket) in ascending code
    order, and ``build_reach``'s exact counts and serialized HLLs (minutes, and hours as their unions) are
    those of sketches fed the definition's sets in the side's code order."""
    import compare.reach as reach

    legacy, stream, horizon = sides
    saved = reach._DENSE
    reach._DENSE = dense
    try:
        got_legacy, got_stream = reach.legacy_minutes(legacy), reach.stream_minutes(stream, horizon)
        built = build_reach(legacy, stream, horizon)
    finally:
        reach._DENSE = saved
    expected = {**legacy_reach(legacy), **stream_reach(stream, horizon)}
    assert {**_as_sets(got_legacy), **_as_sets(got_stream)} == expected
    for side in (got_legacy, got_stream):
        for codes in side.minutes.values():
            assert codes.dtype == np.int32 and bool(np.all(np.diff(codes) > 0))
    assert _built(built) == _reference(legacy, stream, expected)


def _built(reach: object) -> dict[tuple[str, str, str, int], tuple[int, str]]:
    from compare.reach import Reach

    assert isinstance(reach, Reach)
    return {(r.side, r.segment, r.grain, r.bucket_ms): (r.exact, r.sketch) for r in reach.rows}


def _reference(
    legacy: pa.Table, stream: pa.Table, expected: dict[tuple[str, str, str, int], set[str]]
) -> dict[tuple[str, str, str, int], tuple[int, str]]:
    """Exact count and serialized HLL per bucket, from the definition's sets: each minute's sketch fed every
    member one by one in the side's code order, each hour the union of its minutes in bucket order."""
    codes = {"legacy": _first_seen(legacy), "stream": _first_seen(stream)}
    sketches = {key: hll_of(sorted(users, key=codes[key[0]].__getitem__)) for key, users in expected.items()}
    hours: dict[tuple[str, str, str, int], list[tuple[int, object]]] = {}
    for (side, seg, _, b), sketch in sketches.items():
        hours.setdefault((side, seg, "hour", b - b % (60 * MIN)), []).append((b, sketch))
    want = {key: (len(expected[key]), hll_to_text(sketch)) for key, sketch in sketches.items()}
    for key, parts in hours.items():
        users = set().union(*(expected[(key[0], key[1], "minute", b)] for b, _ in parts))
        want[key] = (len(users), hll_to_text(merge_hll(s for _, s in sorted(parts, key=lambda p: p[0]))))
    return want


@pytest.mark.parametrize("head", [2048, 300, 8])
def test_big_minutes_sketch_as_if_every_member_was_fed(monkeypatch: pytest.MonkeyPatch, head: int) -> None:
    """Minutes of thousands of users (past the members fed one by one, in register mode) skip the members
    that cannot change their HLL; every minute and hour sketch is still byte for byte the one fed every
    member in code order (the HIP estimate included), however early the skipping may start."""
    import compare.reach as reach

    rng = random.Random(17)
    rows, cells = [], []
    for n in rng.sample(range(9_000), 9_000):  # code order is not name order
        user, segs = f"b{n}", ["x"] if n % 4 else ["x", "y"]
        start = T0 + rng.randrange(0, 20 * MIN)
        rows += [(user, segs, start, 1), (user, segs[:1], start + rng.randrange(1, 30 * MIN), 1)]
        if rng.random() < 0.8:
            cells.append((T0 + 10 * MIN, user, segs))
    stream = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "segments": pa.array([r[1] for r in rows], pa.list_(pa.string())),
            "effective_time": [r[2] for r in rows],
            "revision": [r[3] for r in rows],
        }
    )
    legacy = pa.table(
        {
            "as_of": [c[0] for c in cells],
            "user_id": [c[1] for c in cells],
            "segments": pa.array([c[2] for c in cells], pa.list_(pa.string())),
        }
    )
    horizon = T0 + 40 * MIN
    monkeypatch.setattr(reach, "_FULL_HEAD", head)
    built = _built(build_reach(legacy, stream, horizon))
    expected = {**legacy_reach(legacy), **stream_reach(stream, horizon)}
    assert max(len(users) for users in expected.values()) > 4 * 2048
    assert built == _reference(legacy, stream, expected)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20), st.integers(1, 4)), min_size=1, max_size=50),
    huge=st.booleans(),
)
def test_settled_rows_are_the_timeline_winners(rows: list[tuple[int, int, int]], huge: bool) -> None:
    """Property: per (user, time) the row with the highest revision, the first in input order among equals,
    in (user, time) order, whether the keys are packed or (revisions too far apart to pack) lexsorted."""
    from compare.reach import _settled

    users = np.array([r[0] for r in rows], dtype=np.int32)
    times = np.array([T0 + r[1] for r in rows], dtype=np.int64)
    revisions = np.array([r[2] * (2**60 if huge else 1) for r in rows], dtype=np.int64)
    best: dict[tuple[int, int], int] = {}
    for i, (user, t, rev) in enumerate(rows):
        held = best.get((user, t))
        if held is None or rev > rows[held][2]:
            best[(user, t)] = i
    want = sorted(best.items())
    winners, u, t = _settled(users, times, revisions, 6)
    assert winners.tolist() == [i for _, i in want]
    assert u.tolist() == [k[0] for k, _ in want] and u.dtype == users.dtype
    assert t.tolist() == [T0 + k[1] for k, _ in want]
