"""Dual-write against real servers: the primary never waits on the shadow; an outage is journaled and replayed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from segments.events import Event, arrival_order, parse_line
from segments.lateness import GateParams
from segments.outputs import read_transitions
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import generate
from shadow.dualwrite import DualWriter
from shadow.journal import Journal
from shadow.targets import RedisStreamShadow, SqlEventsPrimary
from streaming.eventlog import log_lines, position
from streaming.pipeline import StreamConfig
from streaming.replay import RedisLog, run_replay


def _rows(lines: list[str]) -> list[tuple[Event, str]]:
    parsed = [(parse_line(text, n), text) for n, text in enumerate(lines, start=1)]
    valid = {id(e): text for e, text in parsed if isinstance(e, Event)}
    return [(e, valid[id(e)]) for e in arrival_order(e for e, _ in parsed if isinstance(e, Event))]


def test_journal_survives_a_new_process_and_drains_in_order(tmp_path: Path):
    """What was appended is there for the next process, in order, until committed."""
    journal = Journal(tmp_path / "j.jsonl")
    journal.append(["a", "b"])
    journal.append(["c"])
    again = Journal(tmp_path / "j.jsonl")
    assert again.pending == 3
    assert [line for chunk in again.drain(batch=2) for line in chunk] == ["a", "b", "c"]
    assert again.pending == 3, "draining alone does not forget"
    again.commit()
    assert Journal(tmp_path / "j.jsonl").pending == 0


def test_shadow_freeze_mid_ingest_is_journaled_then_replayed_in_arrival_order(
    private_valkey, database_url: str, tmp_path: Path
):
    """The shadow Redis stops answering mid-run: the primary keeps writing, nothing is lost, order is kept,
    and the stream's result over the shadow log equals a run without the outage."""
    url = f"redis://127.0.0.1:{private_valkey.port}/0"
    lines = list(generate("clickstream", users=60, minutes=20, seed=5, malformed=0.0))
    rows = _rows(lines)
    third = len(rows) // 3
    key = "segshadow:test:events"
    shadow = RedisStreamShadow(url, key, timeout_s=0.3)
    with SqlStore.open(database_url) as store:
        store.clear_events()
        writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "journal.jsonl"), retry_every_s=0.05)

        def write(part):
            for start in range(0, len(part), 200):
                chunk = part[start : start + 200]
                writer.write([e for e, _ in chunk], [t for _, t in chunk])

        write(rows[:third])
        writer.flush()
        os.kill(private_valkey._process.pid, signal.SIGSTOP)
        started = time.perf_counter()
        write(rows[third : 2 * third])
        primary_seconds = time.perf_counter() - started
        writer.flush()
        os.kill(private_valkey._process.pid, signal.SIGCONT)
        write(rows[2 * third :])
        writer.close()
        counts = writer.counts
        stored = store.count_events()

    assert primary_seconds < 5, "the primary path waited on the frozen shadow"
    assert counts.journaled > 0 and counts.replayed == counts.journaled
    assert counts.shadowed + counts.replayed == len(rows)
    assert stored == len({e.event_id for e, _ in rows})
    logged = _log_lines(url, key)
    assert logged == [text for _, text in rows], "the shadow log is not the arrival-ordered input"

    events = tmp_path / "events.jsonl"
    events.write_text("".join(t + "\n" for _, t in rows), encoding="utf-8")
    config = StreamConfig(load_ruleset("clickstream"), GateParams(), shards=2)
    from_log = run_replay(events, tmp_path / "a.jsonl", config, source=RedisLog(url, key))
    from_file = run_replay(events, tmp_path / "b.jsonl", config)
    assert from_log.counts == from_file.counts
    assert sorted(read_transitions(from_log.out_path)) == sorted(read_transitions(from_file.out_path))


# ---- a log that lost entries is re-seeded from the primary (shadow.dualwrite: "A log that lost entries") ---------


def _log_lines(url: str, key: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return list(log_lines(client.xrange(key)))  # type: ignore[arg-type]
    finally:
        client.close()


def _first_arrivals(lines: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        event = parse_line(line, 1)
        assert isinstance(event, Event)
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event.event_id)
    return out


def _write_in_batches(writer: DualWriter, rows: list[tuple[Event, str]], size: int = 50) -> None:
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        writer.write([e for e, _ in chunk], [e.to_json() for e, _ in chunk])
    writer.flush()


def test_a_flushed_log_is_reseeded_from_the_primary_before_the_next_write(private_valkey, tmp_path: Path):
    """FLUSHALL between two writes (a restart without persistence): the next write notices, the log is re-seeded
    with the primary's events in arrival order, and ends holding every event once, in the primary's order."""
    url = f"redis://127.0.0.1:{private_valkey.port}/0"
    rows = _rows(list(generate("clickstream", users=30, minutes=20, seed=8, dup_share=0.05)))
    half = len(rows) // 2
    shadow = RedisStreamShadow(url, "segshadow:test:reseed")
    with SqlStore.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "j.jsonl"))
        _write_in_batches(writer, rows[:half])
        lines_before = len(_log_lines(url, shadow.stream_key))
        redis.Redis.from_url(url).flushall()
        _write_in_batches(writer, rows[half:])
        writer.close()
        primary = [e.event_id for e in store.iter_events()]
    shadow.close()

    logged = _log_lines(url, shadow.stream_key)
    assert _first_arrivals(logged) == primary and len(primary) == len({e.event_id for e, _ in rows})
    assert writer.counts.reseeds == 1 and len(writer.reseeds) == 1
    reseed = writer.reseeds[0]
    first_half = {e.event_id for e, _ in rows[:half]}
    assert reseed.resent == writer.counts.resent == len(first_half) < lines_before == reseed.lines_before
    assert reseed.log_ended_at == "0-0" and reseed.down_since_ms is None  # no write failed: the flush was silent
    assert len(logged) == len(first_half) + len(rows) - half  # the re-seeded part holds no duplicate lines


def test_a_log_that_lost_its_tail_is_rebuilt_and_a_loss_after_the_last_write_is_repaired_on_close(
    private_valkey, tmp_path: Path
):
    """A failover to a lagging replica (the log keeps its head, loses its tail) and a flush after the last write:
    both end with the log holding the primary's events in order."""
    url = f"redis://127.0.0.1:{private_valkey.port}/0"
    rows = _rows(list(generate("clickstream", users=20, minutes=15, seed=9)))
    third = len(rows) // 3
    shadow = RedisStreamShadow(url, "segshadow:test:lagging")
    client = redis.Redis.from_url(url)
    with SqlStore.open(f"sqlite:///{tmp_path / 'l.db'}") as store:
        writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "j.jsonl"))
        _write_in_batches(writer, rows[:third])  # flushed: the log's entries end at line ``third``
        _write_in_batches(writer, rows[third : 2 * third])
        entries: list = client.xrange(shadow.stream_key)  # type: ignore[assignment]
        head = [(i, fields) for i, fields in entries if position(i)[1] <= third]
        assert 0 < len(head) < len(entries)
        client.delete(shadow.stream_key)  # the replica had only about the first third
        for entry_id, fields in head:
            client.xadd(shadow.stream_key, fields, id=entry_id)
        _write_in_batches(writer, rows[2 * third :])
        client.flushall()  # after the last write
        writer.close()
        primary = [e.event_id for e in store.iter_events()]
    shadow.close()
    client.close()
    assert _first_arrivals(_log_lines(url, shadow.stream_key)) == primary
    assert writer.counts.reseeds == 2 and writer.counts.resent == len(primary) + 2 * third
    assert [r.log_ended_at == "0-0" for r in writer.reseeds] == [False, True]


def _write(writer: DualWriter, rows: list[tuple[Event, str]]) -> None:
    writer.write([e for e, _ in rows], [t for _, t in rows])


def _lingering(store: SqlStore, shadow: RedisStreamShadow, tmp_path: Path, linger_s: float, batches: int = 64):
    return DualWriter(
        SqlEventsPrimary(store), shadow, Journal(tmp_path / "j.jsonl"), queue_batches=batches, linger_s=linger_s
    )


def test_a_lingering_writer_sends_what_queued_meanwhile_in_one_call_in_order(redis_url: str, tmp_path: Path):
    """Bulk ingest's set-up: batches written within ``linger_s`` of each other reach the shadow together, one
    server call (one log entry) for all, in the primary's order; a writer woken per batch makes one call each."""
    rows = _rows(list(generate("clickstream", users=30, minutes=20, seed=9)))[:200]
    parts = [rows[start : start + 10] for start in range(0, len(rows), 10)]
    entries = {}
    for linger in (0.0, 1.5):
        shadow = RedisStreamShadow(redis_url, f"segshadow:test:linger{linger}")
        shadow.reset()
        with SqlStore.open(f"sqlite:///{tmp_path / f'l{linger}.db'}") as store:
            writer = _lingering(store, shadow, tmp_path, linger)
            for part in parts:
                _write(writer, part)
                time.sleep(0.02)  # 0.4 s in all: a lingering thread wakes once, an eager one per batch
            writer.close()
        assert _log_lines(redis_url, shadow.stream_key) == [t for _, t in rows]
        assert writer.counts.shadowed == len(rows)
        entries[linger] = shadow.length()
        shadow.close()
    assert entries[1.5] <= 2 < len(parts) // 2 <= entries[0.0], entries


def test_a_lingering_writer_waits_for_its_timer_unless_a_whole_call_is_queued_or_a_flush_asks(
    redis_url: str, tmp_path: Path
):
    """Below a whole call's worth nothing is sent before the timer; the batch that completes one wakes the thread,
    and so does ``flush`` (and ``close``), both long before a 60-s linger ends."""
    rows = _rows(list(generate("clickstream", users=30, minutes=20, seed=10)))[:50]
    parts = [rows[start : start + 10] for start in range(0, len(rows), 10)]
    shadow = RedisStreamShadow(redis_url, "segshadow:test:linger-wake")
    shadow.reset()
    with SqlStore.open(f"sqlite:///{tmp_path / 'w.db'}") as store:
        writer = _lingering(store, shadow, tmp_path, 60.0, batches=3)
        started = time.monotonic()
        for part in parts[:2]:
            _write(writer, part)
        time.sleep(0.5)
        assert shadow.length() == 0 and writer.counts.shadowed == 0, "sent before the linger or a whole call"
        _write(writer, parts[2])  # the third of three: a whole call
        while writer.counts.shadowed < 30 and time.monotonic() - started < 30:
            time.sleep(0.01)
        assert writer.counts.shadowed == 30 and shadow.length() == 1
        _write(writer, parts[3])
        writer.flush()
        assert writer.counts.shadowed == 40
        _write(writer, parts[4])
        writer.close()
        assert time.monotonic() - started < 30, "flush and close waited for the linger"
    assert _log_lines(redis_url, shadow.stream_key) == [t for _, t in rows]
    shadow.close()
