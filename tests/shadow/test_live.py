"""``shadow run --live``: a real-time producer into dual-write, legacy on its schedule, the Beam stream live."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segments.events import Event, load_event_log, parse_line
from segments.lateness import GateParams
from segments.outputs import Transition, read_assignments, read_meta
from segments.reachstore import ReachStore
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.timeutil import wall_clock_ms
from segshadow.cli import main
from shadow.dualwrite import Batch, DualWriter
from shadow.journal import Journal
from shadow.live import (
    Frontier,
    LivePlan,
    ServingSink,
    live_freshness,
    produce,
    retime,
    run_live,
    settled,
    workload_items,
)
from shadow.targets import RedisStreamShadow, SqlEventsPrimary
from streaming.eventlog import entry_lines
from streaming.live import FIELD
from tests.segments.test_reachstore import assert_legacy_reach_in_redis, legacy_reach_exact


def _event(user: str, event_time: int, arrival: int, event_id: str = "e") -> Event:
    return Event(event_id, user, event_time, "view", 0, arrival, None, 1)


def _transition(user: str, effective: int, emitted: int, cause: str = "event") -> Transition:
    return Transition(user, ("window_shopper",), effective, 1, emitted, cause)


def test_live_run_compares_settled_as_ofs_with_no_unexplained_mismatch(redis_url: str, tmp_path: Path):
    """Ten seconds at 200 events/s, legacy every 2 s: every difference is explained, latencies are measured."""
    out = tmp_path / "run"
    plan = LivePlan(load_ruleset("clickstream"), out, "clickstream", 2_000, GateParams(), 2, 200, 10.0, 7, 4.0)
    started = wall_clock_ms()
    report = run_live(plan, f"sqlite:///{tmp_path / 'live.db'}", redis_url)

    parity = json.loads((out / "parity.json").read_text())
    assert parity["pairs"] > 0 and parity["agree"] + parity["mismatch"] == parity["pairs"]
    assert parity["by_cause"]["unexplained"] == 0, parity["by_cause"]
    stream_latency = parity["latency"]["stream"]
    assert stream_latency["source"] == "live" and stream_latency["p99_ms"] is not None
    assert stream_latency["count"] == len((out / "stream_latency.txt").read_text().split())

    # Arrivals are the wall clock of this run, in order; the comparison read exactly that log.
    log = load_event_log(out / "events.jsonl")
    arrivals = [e.arrival_time for e in log.events]
    assert arrivals == sorted(arrivals) and started <= arrivals[0] and arrivals[-1] <= wall_clock_ms()
    assert len(log.events) + len(log.duplicates) == report.counts["ingest"]["accepted"] > 1_500

    # Only as-ofs the stream had settled (at or before its final watermark) are compared.
    legacy_meta = read_meta(out / "legacy.jsonl")
    watermark = read_meta(out / "stream.jsonl")["final_watermark"]
    assert legacy_meta["as_of_times"] and max(legacy_meta["as_of_times"]) <= watermark
    assert all(t > watermark for t in legacy_meta["live"]["unsettled_as_ofs"])
    assert parity["as_of_rounds"] == len(legacy_meta["as_of_times"]) >= 2

    ingest = report.counts["ingest"]
    assert ingest["shadowed"] == ingest["accepted"] and ingest["journaled"] == 0
    assert report.latency["primary_write_ms"]["count"] == ingest["batches"] > 0
    assert json.loads((out / "live.json").read_text())["verdict"] == report.parity.verdict

    # The legacy schedule kept its reach in the serving store as it wrote (the comparison adds none here):
    # each minute before the first unsettled as-of is within Redis' bound of the exact count from legacy.jsonl.
    unsettled = legacy_meta["live"]["unsettled_as_ofs"]
    cut = min(unsettled) - min(unsettled) % 60_000 if unsettled else None
    exact = {
        key: users
        for key, users in legacy_reach_exact(read_assignments(out / "legacy.jsonl")).items()
        if key[1] == "minute" and (cut is None or key[2] < cut)
    }
    if exact:
        assert_legacy_reach_in_redis(redis_url, exact)
    else:  # the run fell in one minute: its reach is there all the same
        assert ReachStore(redis.Redis.from_url(redis_url)).segments("legacy")


def test_producer_stamps_the_wall_clock_keeps_lateness_and_moves_the_frontier(redis_url: str, tmp_path: Path):
    """Each batch is stamped when taken, late events stay as late, and the frontier never runs ahead of SQL."""
    items = workload_items("clickstream", 300, seed=2)
    shadow = RedisStreamShadow(redis_url, "segshadow:test:live")
    frontier = Frontier()
    seen: list[tuple[int, set[str]]] = []  # (frontier, ids in SQL) observed while producing
    with SqlStore.open(f"sqlite:///{tmp_path / 'p.db'}") as store:
        writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "j.jsonl"))

        def watch() -> None:
            seen.append((frontier.through, {e.event_id for e in store.iter_events()}))

        got = produce(writer, items, rate=250, duration_s=1.2, frontier=frontier, watch=watch, watch_every_s=0.2)
        writer.close()
    shadow.close()

    assert 250 <= len(got.events) + len(got.rejected) <= 300 and len(seen) >= 2
    sent = [i for i in items if isinstance(i, Event)][: len(got.events)]
    for event, original in zip(got.events, sent, strict=True):
        assert event.event_id == original.event_id
        assert event.arrival_time - event.event_time == original.arrival_time - original.event_time
    arrivals = [e.arrival_time for e in got.events]
    assert arrivals == sorted(arrivals) and frontier.first == arrivals[0]
    assert [e.seq for e in got.events] == list(range(1, len(got.events) + 1))
    assert [parse_line(line, 1) for line in got.lines] == [e._replace(seq=1) for e in got.events]
    for through, stored in seen:  # everything that arrived by the frontier was already committed
        assert {e.event_id for e in got.events if e.arrival_time <= through} <= stored
        assert any(e.arrival_time <= through for e in got.events)


def test_producer_rejects_re_timed_events_outside_the_rule_sets_time_range(redis_url: str, tmp_path: Path):
    """With the rule set's range (here at most 2 s between event and arrival), a re-timed event outside
    it is dead-lettered ``time_out_of_range`` by the producer and never reaches SQL or the shadow log."""
    from segments.events import TimeBounds

    items = workload_items("clickstream", 200, seed=4)
    bounds = TimeBounds(max_skew_ms=2_000)
    shadow = RedisStreamShadow(redis_url, "segshadow:test:live-bounds")
    with SqlStore.open(f"sqlite:///{tmp_path / 'p.db'}") as store:
        writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "j.jsonl"))
        got = produce(writer, items, rate=1_000, duration_s=2.0, frontier=Frontier(), bounds=bounds)
        writer.close()
        stored = {e.event_id for e in store.iter_events()}
    shadow.close()
    logged = len(_log(redis_url, "segshadow:test:live-bounds"))

    late = {i.event_id for i in items if isinstance(i, Event) and i.arrival_time - i.event_time > 2_000}
    out_of_range = [r for r in got.rejected if r.reason == "time_out_of_range"]
    assert late and {r.event_id for r in out_of_range} == late
    assert len(got.events) + len(got.rejected) == len(items)
    assert all(e.arrival_time - e.event_time <= 2_000 for e in got.events)
    assert stored == {e.event_id for e in got.events} and logged == len(got.events)


def test_retime_keeps_the_workload_lateness():
    """A line 90 s late in the workload arrives now and is still 90 s late."""
    late = _event("u", 1_000, 91_000)
    moved = retime(late, 5_000_000, 7)
    assert (moved.arrival_time, moved.event_time, moved.seq) == (5_000_000, 4_910_000, 7)


def test_live_freshness_attributes_each_transition_to_the_event_that_caused_it():
    """The cause is the user's latest event arrived by the emission with an event time not after the effective time."""
    applied = [
        _event("a", 100, 1_000, "a1"),
        _event("a", 500, 1_010, "a2"),  # arrived before the first transition was emitted, but later in event time
        _event("b", 200, 1_020, "b1"),
        _event("a", 50, 1_040, "a3"),  # late: its corrections are emitted after it arrived
    ]
    transitions = [
        _transition("a", 100, 1_015),  # caused by a1 (a2's event time is after 100)
        _transition("a", 500, 1_016),  # a2
        _transition("b", 200, 1_030),  # b1
        _transition("a", 100, 1_060, "correction"),  # a3 arrived at 1_040
        _transition("a", 600_100, 1_070, "expiry"),  # no event: left out
        _transition("c", 10, 1_080),  # no applied event of c: unattributed
    ]
    values, unattributed = live_freshness(transitions, applied)
    assert values == [15, 6, 10, 20] and unattributed == 1


def test_settled_splits_as_ofs_at_the_watermark():
    """An as-of exactly at the watermark is settled; one after it is not."""
    assert settled([1_000, 2_000, 3_000], 2_000) == ([1_000, 2_000], [3_000])


def test_frontier_lets_an_as_of_run_only_once_ingest_committed_through_it():
    """wait_for blocks until the frontier reaches t; after close, only as-ofs up to the limit run."""
    frontier = Frontier()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(frontier.wait_for(2_000)))
    waiter.start()
    frontier.advance(1_999)
    waiter.join(0.1)
    assert waiter.is_alive(), "ran before ingest committed everything that arrived by 2000"
    frontier.advance(2_000)
    waiter.join(5)
    assert results == [True]
    frontier.close(limit=4_000)
    assert frontier.wait_for(4_000) and not frontier.wait_for(6_000)


def test_live_refuses_a_duration_that_settles_no_as_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """--duration 5s with --every 5m cannot compare anything: exit 2 with one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(["shadow", "run", "--live", "--workload", "clickstream", "--duration", "5s", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("segshadow: error:") and "--every" in err[-1]


# ---- the dual-write batch path the live producer relies on (shadow.dualwrite / shadow.targets) ----------

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=12)
_LINES = st.lists(_TEXT, min_size=1, max_size=25)


def _log(url: str, key: str) -> list[tuple[str, str]]:
    """Every line of the log with the id of the entry holding it."""
    return [(entry_id, line) for entry_id, lines in _entries(url, key) for line in lines]


def _entries(url: str, key: str) -> list[tuple[str, list[str]]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        found: Any = client.xrange(key)
        return [(entry_id, entry_lines(fields)) for entry_id, fields in found]
    finally:
        client.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    after=st.tuples(st.integers(0, 2**45), st.integers(0, 10**9)),
    arrivals=st.lists(st.integers(0, 2**45), min_size=25, max_size=25),
    lines=_LINES,
    held=st.integers(0, 25),
)
def test_one_server_call_appends_the_batch_as_one_entry_and_skips_the_lines_the_log_holds(
    redis_url: str, after: tuple[int, int], arrivals: list[int], lines: list[str], held: int
):
    """The Lua append writes the batch as one entry whose id is ``Batch.end``, holding its lines in order; when
    the log already holds the first ``held`` lines (a write that got through before a timeout, here cut at any
    line), only the rest is appended, and a second write adds nothing."""
    shadow = RedisStreamShadow(redis_url, "segshadow:test:batch")
    shadow.reset()
    shadow.reseed([], after)  # a log that already ends at ``after``
    batch = Batch(after[0], after[1], arrivals[: len(lines)], lines)
    held = min(held, len(lines) - 1)
    if held:  # the first ``held`` lines got through earlier, as an entry of their own
        shadow.write(Batch(after[0], after[1], arrivals[:held], lines[:held]))
    shadow.write(batch)
    assert [line for _, line in _log(redis_url, shadow.stream_key)] == lines
    assert _entries(redis_url, shadow.stream_key)[-1] == ("{}-{}".format(*batch.end), lines[held:])
    assert shadow.last_id() == "{}-{}".format(*batch.end) == batch.entries()[-1][0]
    shadow.write(batch)  # a replay of what already got through (an ambiguous timeout)
    assert [line for _, line in _log(redis_url, shadow.stream_key)] == lines
    assert len(_entries(redis_url, shadow.stream_key)) == (2 if held else 1)
    shadow.close()


def test_a_line_with_a_newline_gets_an_entry_of_its_own_with_its_own_position(redis_url: str):
    """Lines are joined by newlines in one entry; a line holding one is an entry of its own (field ``e``), and
    every entry's id is its last line's position."""
    shadow = RedisStreamShadow(redis_url, "segshadow:test:newline")
    shadow.reseed([], (5, 2))  # a log that already ends at 5-2
    batch = Batch(5, 2, [3, 9, 7, 8, 10], ['{"a":1}', "two\nlines", "", "x", "y"])
    shadow.write(batch)
    assert _entries(redis_url, shadow.stream_key) == [
        ("5-3", ['{"a":1}']), ("9-4", ["two\nlines"]), ("10-7", ["", "x", "y"])
    ]
    raw: Any = shadow.client.xrange(shadow.stream_key)
    assert [list(fields) for _, fields in raw] == [[b"b"], [FIELD.encode()], [b"b"]]
    assert [i for i, _ in batch.entries()] == ["5-3", "9-4", "9-5", "9-6", "10-7"]
    shadow.close()


@given(after_ms=st.integers(0, 2**40), after_seq=st.integers(0, 10**6), arrivals=st.lists(st.integers(0, 2**40)))
def test_journaled_entries_give_back_batches_with_the_same_ids(after_ms: int, after_seq: int, arrivals: list[int]):
    """What the journal holds (id, line) turns back into one batch per consecutive run, ids unchanged."""
    batch = Batch(after_ms, after_seq, arrivals, [f"l{k}" for k in range(len(arrivals))])
    runs = Batch.runs_of(batch.entries())
    assert len(runs) == (1 if arrivals else 0)
    assert [entry for run in runs for entry in run.entries()] == batch.entries()
    gapped = [("5-1", "a"), ("6-2", "b"), ("6-4", "c"), ("3-5", "d")]
    assert [run.entries() for run in Batch.runs_of(gapped)] == [gapped[:2], gapped[2:3], gapped[3:]]


def test_a_shadow_frozen_across_many_batches_keeps_the_log_in_arrival_order(private_valkey, tmp_path: Path):
    """Hundreds of batches while the shadow hangs: the primary never waits, and after the thaw the log holds
    every line once, in order (the journal and direct writes never overtake each other)."""
    url = f"redis://127.0.0.1:{private_valkey.port}/0"
    rows = [(e, e.to_json()) for e in (i for i in workload_items("clickstream", 3_000, seed=4) if isinstance(i, Event))]
    shadow = RedisStreamShadow(url, "segshadow:test:frozen", timeout_s=1.0)
    with SqlStore.open(f"sqlite:///{tmp_path / 'f.db'}") as store:
        writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "j.jsonl"), retry_every_s=0.05)
        chunks = [rows[k : k + 10] for k in range(0, len(rows), 10)]
        os.kill(private_valkey._process.pid, signal.SIGSTOP)
        slowest = 0.0
        for chunk in chunks[: len(chunks) // 2]:
            began = time.perf_counter()
            writer.write([e for e, _ in chunk], [t for _, t in chunk])
            slowest = max(slowest, time.perf_counter() - began)
        time.sleep(1.1)  # longer than the client's timeout
        os.kill(private_valkey._process.pid, signal.SIGCONT)
        for chunk in chunks[len(chunks) // 2 :]:
            writer.write([e for e, _ in chunk], [t for _, t in chunk])
        writer.close()
    assert slowest < 0.5, "a primary write waited on the frozen shadow (its timeout is 1 s)"
    assert writer.counts.journaled > 0 and writer.counts.replayed == writer.counts.journaled
    assert [line for _, line in _log(url, shadow.stream_key)] == [t for _, t in rows]
    shadow.close()


def test_the_live_legacy_schedules_serving_writes_keep_its_reach(redis_url: str):
    """``ServingSink`` (the schedule's serving-store writes) also PFADDs each as-of's members into the legacy reach."""
    from segments.outputs import Assignment
    from segments.redisstore import RedisStore

    t0 = 1_700_000_040_000
    assignments = [
        Assignment(t0 + k * 20_000, f"u{n}", ("high_value",) if n % 3 else ("high_value", "window_shopper"))
        for k in range(6)
        for n in range(k * 150, k * 150 + 900)
    ]
    with RedisStore.open(redis_url) as serving:
        sink = ServingSink(serving)
        for as_of in sorted({a.as_of for a in assignments}):
            rows = [(a.user_id, frozenset(a.segments)) for a in assignments if a.as_of == as_of]
            sink.write_assignments(as_of, rows)
        assert sink.failures == 0
    assert_legacy_reach_in_redis(redis_url, legacy_reach_exact(assignments))
