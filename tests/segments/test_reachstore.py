"""Reach in the serving store's write path: PFADD as a side publishes, PFCOUNT/PFMERGE to read."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import redis

from segments.reachstore import MINUTE_MS, ReachingSink, ReachStore
from segments.rules import load_ruleset
from segments.sketches import REDIS_HLL_BOUND, relative_error
from segments.timeutil import parse_rfc3339_ms
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000


def test_record_and_carry_count_each_bucket_within_the_bound_and_hours_hold_their_minutes(redis_url: str) -> None:
    """5,000 seeded users over three minutes: transitions recorded, holders carried at each minute's start.
    Each minute's PFCOUNT is within Redis' stated bound of the exact distinct users; the hour's is the union."""
    client = redis.Redis.from_url(redis_url)
    store = ReachStore(client, prefix="t")
    exact: dict[int, set[str]] = defaultdict(set)
    for minute in range(3):
        start = T0 + minute * MINUTE_MS
        held = {f"u{n}" for n in range(minute * 1000, minute * 1000 + 2500)}  # holders at the minute's start
        store.carry("stream", {"x": held, "y": set()}, start)
        exact[start] |= held
        first = 20_000 + minute * 800
        entered = [(f"u{n}", ("x",), start + 1000 + n) for n in range(first, first + 900)]
        store.record("stream", [*entered, ("v", (), start + 5)])  # an empty set reaches nothing
        exact[start] |= {user for user, _, _ in entered}
    series = store.series("stream", "x", "minute", T0, T0 + 2 * MINUTE_MS)
    assert [b for b, _ in series] == [T0, T0 + MINUTE_MS, T0 + 2 * MINUTE_MS]
    for bucket, count in series:
        assert relative_error(count, len(exact[bucket])) <= REDIS_HLL_BOUND, (bucket, count, len(exact[bucket]))
    everyone = set().union(*exact.values())
    (_, hour), = store.series("stream", "x", "hour", T0, T0)
    assert relative_error(hour, len(everyone)) <= REDIS_HLL_BOUND
    assert store.series("stream", "y", "minute", T0, T0) == [(T0, 0)]
    assert store.segments("stream") == ["x"]
    assert store.latest_bucket("stream") == T0 + 2 * MINUTE_MS
    client.close()


class _Taken:
    def __init__(self) -> None:
        self.as_ofs: list[int] = []

    def write_assignments(self, as_of: int, rows: object) -> object:
        self.as_ofs.append(as_of)
        return "inner"


def test_a_legacy_sink_wrapped_for_reach_records_each_as_of_and_still_writes(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    inner = _Taken()
    sink = ReachingSink(inner, ReachStore(client, prefix="t"))
    rows = [(f"u{n}", frozenset({"x"} if n % 2 else {"x", "y"})) for n in range(100)]
    assert sink.write_assignments(T0 + 5, rows) == "inner"
    assert inner.as_ofs == [T0 + 5]
    store = ReachStore(client, prefix="t")
    for segment, exact in (("x", 100), ("y", 50)):
        ((bucket, count),) = store.series("legacy", segment, "minute", T0, T0)
        assert bucket == T0 and relative_error(count, exact) <= REDIS_HLL_BOUND, (segment, count)
    assert store.series("stream", "x", "minute", T0, T0) == [(T0, 0)]
    client.close()


def test_the_stream_sink_keeps_reach_as_it_publishes(tmp_path: Path, redis_url: str) -> None:
    """A replay into Redis leaves, per segment and minute, the distinct users it published into the segment."""
    events = tmp_path / "events.jsonl"
    write_workload("clickstream", events, users=150, minutes=12, seed=5)
    out = tmp_path / "stream.jsonl"
    run_replay(events, out, StreamConfig(load_ruleset("clickstream"), shards=2), redis_url=redis_url)
    exact: dict[tuple[str, int], set[str]] = defaultdict(set)
    for line in out.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        t = parse_rfc3339_ms(row["effective_time"])
        for segment in row["segments"]:
            exact[(segment, t - t % MINUTE_MS)].add(row["user_id"])
    assert exact, "the workload publishes into some segment"
    store = ReachStore(redis.Redis.from_url(redis_url))
    for (segment, bucket), users in exact.items():
        (_, count), = store.series("stream", segment, "minute", bucket, bucket)
        assert relative_error(count, len(users)) <= REDIS_HLL_BOUND, (segment, bucket)
    store.client.close()


def legacy_reach_exact(assignments: object) -> dict[tuple[str, str, int], set[str]]:
    """(segment, grain, bucket) -> the users some as-of in the bucket assigned the segment (the legacy reach)."""
    exact: dict[tuple[str, str, int], set[str]] = defaultdict(set)
    for a in assignments:  # type: ignore[attr-defined]
        for segment in a.segments:
            exact[(segment, "minute", a.as_of - a.as_of % MINUTE_MS)].add(a.user_id)
            exact[(segment, "hour", a.as_of - a.as_of % 3_600_000)].add(a.user_id)
    return exact


def assert_legacy_reach_in_redis(redis_url: str, exact: dict[tuple[str, str, int], set[str]]) -> None:
    """Every bucket's PFCOUNT in the serving store is within Redis' stated bound of its exact distinct users."""
    assert exact, "the workload assigns some segment"
    store = ReachStore(redis.Redis.from_url(redis_url))
    try:
        for (segment, grain, bucket), users in exact.items():
            ((_, count),) = store.series("legacy", segment, grain, bucket, bucket)
            assert relative_error(count, len(users)) <= REDIS_HLL_BOUND, (segment, grain, bucket, count, len(users))
        assert set(store.segments("legacy")) == {segment for segment, _, _ in exact}
    finally:
        store.client.close()
