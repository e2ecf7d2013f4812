"""``stream live`` against a real Redis server: produce, read back, restart mid-stream, nothing lost or doubled."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import apache_beam as beam
import redis

from segments.events import Event, parse_line
from segments.lateness import GateParams
from segments.outputs import read_transitions
from segments.redisstore import RedisStore
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import generate
from streaming.config import BATCH_FIELD
from streaming.live import EVENTS_STREAM, FIELD, LiveSource, build_live
from streaming.options import LIVE_RUNNER, pipeline_options
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay


def _produce(url: str, lines: list[str], per_entry: int = 1) -> None:
    """One entry a line (field ``e``, as any producer), or ``per_entry`` lines an entry (field ``b``, as the
    dual-writer: ``streaming.eventlog``)."""
    client = redis.Redis.from_url(url)
    pipe = client.pipeline()
    if per_entry == 1:
        for line in lines:
            pipe.xadd(EVENTS_STREAM, {FIELD: line})
    else:
        for start in range(0, len(lines), per_entry):
            pipe.xadd(EVENTS_STREAM, {BATCH_FIELD: "\n".join(lines[start : start + per_entry])})
    pipe.execute()
    client.close()


def _produce_over(url: str, lines: list[str], after_s: float, over_s: float) -> None:
    """After ``after_s``, produce ``lines`` in ten slices spread over ``over_s``."""
    time.sleep(after_s)
    step = max(1, len(lines) // 10)
    for start in range(0, len(lines), step):
        _produce(url, lines[start : start + step])
        time.sleep(over_s / 10)


def _run_live(config: StreamConfig, url: str, database_url: str, seconds: float) -> None:
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    build_live(pipeline, config, LiveSource(url, poll_ms=5), seconds, database_url)
    pipeline.run().wait_until_finish()


def test_live_restart_mid_stream_loses_nothing_and_counts_nothing_twice(redis_url: str, tmp_path: Path):
    """Two live runs with a stop in between write exactly the transitions one replay of all events writes."""
    ruleset = load_ruleset("clickstream")
    config = StreamConfig(ruleset, GateParams(), shards=3, live=True)
    lines = list(generate("clickstream", users=40, minutes=25, seed=11, late_share=0.1, dup_share=0.05))
    half = len(lines) // 2
    database_url = f"sqlite:///{tmp_path / 'live.db'}"

    quarter = half // 2
    _produce(redis_url, lines[:quarter])  # replayed from the log when the first run starts
    # read through the consumer group while the first run is up
    producer = threading.Thread(target=_produce_over, args=(redis_url, lines[quarter:half], 1.0, 1.0))
    producer.start()
    _run_live(config, redis_url, database_url, 3.0)
    producer.join()
    _produce(redis_url, lines[half:], per_entry=37)  # arrives while the stream is down, a batch an entry
    _run_live(config, redis_url, database_url, 2.0)

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    replay = run_replay(events, tmp_path / "replay.jsonl", StreamConfig(ruleset, GateParams(), shards=3))
    expected = read_transitions(replay.out_path)
    last_watermark = max(t.effective_time for t in expected if t.cause != "expiry") - 5_000

    with SqlStore.open(database_url) as store:
        live_rows = store.read_transitions(ruleset.ref)
    key = lambda t: (t.user_id, t.effective_time, t.revision, t.segments, t.cause)  # noqa: E731
    # Live never saw the end of time, so expiries beyond its last watermark are not due there yet.
    settled = {key(t) for t in expected if t.effective_time <= last_watermark}
    assert {key(t) for t in live_rows if t.effective_time <= last_watermark} == settled
    assert len(live_rows) == len({key(t) for t in live_rows}), "a transition was written twice"

    # Redis holds each user's latest transition.
    latest: dict[str, tuple[int, int, tuple[str, ...]]] = {}
    for t in live_rows:
        if t.user_id not in latest or (t.effective_time, t.revision) > latest[t.user_id][:2]:
            latest[t.user_id] = (t.effective_time, t.revision, t.segments)
    with RedisStore.open(redis_url) as store:
        for user_id, (_, _, segments) in latest.items():
            stored = store.get("stream", user_id)
            assert stored is not None and tuple(sorted(stored.segments)) == segments


def test_an_entrys_lines_are_found_in_every_shape_redis_returns():
    from streaming.eventlog import entries_for, entry_lines

    assert entry_lines({b"e": b'{"a":1}'}) == ['{"a":1}']  # redis-py's XRANGE
    assert entry_lines({"e": "two\nlines"}) == ["two\nlines"]  # field e: one line, whatever it holds
    assert entry_lines([b"e", b'{"a":1}']) == ['{"a":1}']  # raw XRANGE
    assert entry_lines([b"b", b'{"a":1}\n\n{"b":2}']) == ['{"a":1}', "", '{"b":2}']  # a dual-writer batch
    assert entry_lines({b"b": b"x"}) == ["x"]
    assert entry_lines([b"source", b"web", b"e", b"x\xffy"]) == ["x\udcffy"]  # other fields first; bad UTF-8 kept
    assert entry_lines([b"source", b"web"]) == [""]  # no event field: parsed as an empty line, dead-lettered
    assert entry_lines(None) == [""]  # an entry deleted while pending
    assert entries_for(5_000, 0, 0) == 1 and entries_for(5_000, 1_000, 2) == 10  # nothing seen; 500 lines an entry
    assert entries_for(5_000, 3, 3) == 5_000  # a line an entry
    assert entries_for(5_000, 40_000, 2) == 1  # an entry larger than a read: one at a time


def test_live_source_recreates_a_vanished_log_and_counts_what_it_had_applied_as_duplicates(
    redis_url: str, tmp_path: Path
):
    """The log and its group vanish mid-run (a flush); the log comes back whole (a re-seed) and grows on: the
    source regroups instead of dying, applies each event once and counts re-read ones as duplicates."""
    import json

    from streaming.live import source_counts_path

    ruleset = load_ruleset("clickstream")
    config = StreamConfig(ruleset, GateParams(), shards=2, live=True)
    generated = generate("clickstream", users=60, minutes=20, seed=12, late_share=0.1, dup_share=0.05)
    lines = [line for n, line in enumerate(generated) if isinstance(parse_line(line, n), Event)]  # as dual-write
    half = len(lines) // 2
    out = tmp_path / "live.jsonl"

    def hurt_and_heal() -> None:
        client = redis.Redis.from_url(redis_url)
        group_made = False
        for _ in range(600):
            group_made = bool(client.exists(EVENTS_STREAM)) and bool(client.xinfo_groups(EVENTS_STREAM))
            if group_made:
                break
            time.sleep(0.05)
        _produce(redis_url, lines[:half], per_entry=50)
        time.sleep(1.0)  # read by the running source
        client.delete(EVENTS_STREAM)  # the log and its group are gone
        time.sleep(0.3)
        _produce(redis_url, lines, per_entry=500)  # re-seeded whole (in other entries), then the rest arrives
        client.close()

    helper = threading.Thread(target=hurt_and_heal)
    helper.start()
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    build_live(pipeline, config, LiveSource(redis_url, poll_ms=5), 7.0, None, str(out))
    pipeline.run().wait_until_finish()
    helper.join()

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    replay = run_replay(events, tmp_path / "replay.jsonl", StreamConfig(ruleset, GateParams(), shards=2))
    counts = json.loads(source_counts_path(out).read_text())
    assert len(counts["regroups"]) == 1 and counts["regroups"][0]["lines_before"] == half
    assert counts["lines"] == half + len(lines)
    assert counts["applied"] == replay.counts["applied"] and counts["too_late"] == replay.counts["too_late"]
    assert counts["duplicates"] == replay.counts["duplicates"] + half
    expected = read_transitions(replay.out_path)
    settled = max(t.effective_time for t in expected if t.cause != "expiry") - 5_000
    key = lambda t: (t.user_id, t.effective_time, t.revision, t.segments, t.cause)  # noqa: E731
    live = {key(t) for t in read_transitions(out) if t.effective_time <= settled}
    assert live == {key(t) for t in expected if t.effective_time <= settled}


def test_live_source_dead_letters_by_the_rule_sets_event_time_range_as_the_replay_does(
    redis_url: str, tmp_path: Path
):
    """``event_times: {max_ahead: 1m}``: an event 5 minutes ahead of its arrival (inside the default range)
    is ``time_out_of_range`` in the live source exactly as in the replay (and legacy's ingest)."""
    import json

    from segments.rules import compile_ruleset
    from streaming.live import source_counts_path

    ruleset = compile_ruleset({**dict(load_ruleset("clickstream").definition), "event_times": {"max_ahead": "1m"}})
    base = 1_704_067_200_000
    rows = [{"event_id": f"v{n}", "user_id": f"u{n % 3}", "event_time": base + n * 20_000, "kind": "view"}
            for n in range(12)]
    rows.insert(6, {"event_id": "odd", "user_id": "odd", "event_time": base + 7 * 60_000,
                    "arrival_time": base + 2 * 60_000, "kind": "purchase", "amount": "500"})
    lines = [json.dumps(row) for row in rows]
    _produce(redis_url, lines)
    out = tmp_path / "live.jsonl"
    config = StreamConfig(ruleset, GateParams(), shards=2, live=True)
    pipeline = beam.Pipeline(options=pipeline_options([], LIVE_RUNNER, streaming=True))
    build_live(pipeline, config, LiveSource(redis_url, poll_ms=5), 3.0, None, str(out))
    pipeline.run().wait_until_finish()

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines) + "\n", encoding="utf-8")
    replay = run_replay(events, tmp_path / "replay.jsonl", StreamConfig(ruleset, GateParams(), shards=2))
    counts = json.loads(source_counts_path(out).read_text())
    assert counts["rejected_by_reason"] == {"time_out_of_range": 1}, counts
    assert replay.counts["rejected"] == 1 and counts["applied"] == replay.counts["applied"] == 12
    assert all(t.user_id != "odd" for t in read_transitions(out))


def test_live_source_sizes_its_dedup_for_the_log_before_the_first_line(redis_url: str) -> None:
    """At its first read the source sizes the dedup for the log's lines and half again (``XLEN`` entries at the
    lines per entry it read), so reading the whole log never grows the table; what it admits is unchanged."""
    from streaming.live import DEDUP_HEADROOM, PollAndAdmit

    ruleset = load_ruleset("clickstream")
    generated = generate("clickstream", users=500, minutes=60, seed=3, dup_share=0.05)
    lines = [line for n, line in enumerate(generated) if isinstance(parse_line(line, n), Event)]
    _produce(redis_url, lines, per_entry=50)
    poll = PollAndAdmit(StreamConfig(ruleset, GateParams(), shards=2, live=True), LiveSource(redis_url))
    poll.setup()
    try:
        seen = poll.admission.gate._dedup.seen
        list(poll.process(0))
        assert poll.seq == 50, "the first read asks for one entry"
        limit = seen._limit
        assert limit >= len(lines) * DEDUP_HEADROOM - 50 and seen._old is None
        while poll.seq < len(lines):
            list(poll.process(0))
        assert seen._limit == limit and seen._old is None, "the table never grew"
        counts = poll.admission.counts
        assert counts.applied + counts.duplicates + counts.too_late == len(lines) and counts.duplicates > 0
    finally:
        poll.teardown()
