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
from streaming.live import FIELD
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
    client = redis.Redis.from_url(url)
    logged = [fields[FIELD.encode()].decode() for _, fields in client.xrange(key)]
    client.close()
    assert logged == [text for _, text in rows], "the shadow log is not the arrival-ordered input"

    events = tmp_path / "events.jsonl"
    events.write_text("".join(t + "\n" for _, t in rows), encoding="utf-8")
    config = StreamConfig(load_ruleset("clickstream"), GateParams(), shards=2)
    from_log = run_replay(events, tmp_path / "a.jsonl", config, source=RedisLog(url, key, FIELD))
    from_file = run_replay(events, tmp_path / "b.jsonl", config)
    assert from_log.counts == from_file.counts
    assert sorted(read_transitions(from_log.out_path)) == sorted(read_transitions(from_file.out_path))
