"""Processes killed mid-run: ``stream live`` SIGKILLed and started again, ``shadow run --live`` SIGKILLed and run again.

Servers are the test's own (``tests.faults.servers``); SQLite holds the SQL side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from segments.events import Event, load_event_log, write_jsonl
from segments.lateness import GateParams, too_late_ids
from segments.outputs import read_transitions
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from shadow.dualwrite import DualWriter
from shadow.journal import Journal
from shadow.live import Frontier, produce, workload_items
from shadow.targets import RedisStreamShadow, SqlEventsPrimary
from streaming.live import source_counts_path
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay
from tests.faults.accounting import check_live_run, first_arrivals, log_ids, table_row
from tests.faults.servers import RedisServer
from tests.faults.test_redis_faults import INTO_PRODUCING_S, Finished, live_command, wait_for_log

pytestmark = pytest.mark.slow

KEY = "segshadow:test:faults:events"
GROUP = "segshadow-test-faults"


def _stream_live(redis_url: str, database_url: str, out: Path, duration: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "segshadow.cli", "stream", "live", "--rules", "clickstream",
        "--stream-key", KEY, "--group", GROUP, "--shards", "2", "--duration", duration,
        "--out", str(out), "--database-url", database_url, "--redis-url", redis_url,
    ]  # fmt: skip
    log = open(out.with_suffix(".log"), "ab")  # noqa: SIM115 -- the child holds it; closed with the test's tmp dir
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def _group_exists(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=1.0)
    try:
        return bool(client.exists(KEY)) and bool(client.xinfo_groups(KEY))
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_stream_live_sigkilled_and_started_again_applies_every_event_once(tmp_path: Path):
    """``stream live`` SIGKILLed while events flow, then started again: it rebuilds from the log and its
    transitions are exactly a replay's; every line of the log is applied, duplicate or too late once."""
    server = RedisServer(tmp_path / "redis").start()
    database_url = f"sqlite:///{tmp_path / 'live.db'}"
    out = tmp_path / "stream.jsonl"
    items = workload_items("clickstream", 2_400, seed=5)
    try:
        first = _stream_live(server.url, database_url, out, "60s")
        _wait(lambda: _group_exists(server.url), 120, "the first stream to read")
        shadow = RedisStreamShadow(server.url, KEY)
        with SqlStore.open(database_url) as store:
            writer = DualWriter(SqlEventsPrimary(store), shadow, Journal(tmp_path / "journal.jsonl"))
            got: dict[str, object] = {}
            producer = threading.Thread(
                target=lambda: got.update(sent=produce(writer, items, 400, 6.0, Frontier()))
            )
            producer.start()
            time.sleep(INTO_PRODUCING_S)
            first.send_signal(signal.SIGKILL)
            assert first.wait() == -signal.SIGKILL
            second = _stream_live(server.url, database_url, out, "14s")
            producer.join()
            writer.close()
        shadow.close()
        assert second.wait(timeout=120) == 0
        ingested = got["sent"]
        lines: list[str] = ingested.lines  # type: ignore[attr-defined]
        rejected = len(ingested.rejected)  # type: ignore[attr-defined]
        events_path = tmp_path / "events.jsonl"
        write_jsonl(events_path, lines)
        log = load_event_log(events_path)
        distinct = [e.event_id for e in log.events]
        assert first_arrivals(log_ids(server.url, KEY)) == distinct
    finally:
        server.stop()

    # The second process read the whole log from its start: its accounting covers every line.
    counts = json.loads(source_counts_path(out).read_text())
    assert counts["lines"] == len(lines) == counts["applied"] + counts["duplicates"] + counts["too_late"]
    assert counts["applied"] + counts["too_late"] == len(distinct)
    assert counts["too_late"] == len(too_late_ids(log.events, GateParams()))
    assert counts["duplicates"] == len(log.duplicates) and counts["regroups"] == []

    # Its transitions (SQL, both processes) are a replay's, up to the last watermark it reached.
    ruleset = load_ruleset("clickstream")
    replay = run_replay(events_path, tmp_path / "replay.jsonl", StreamConfig(ruleset, GateParams(), shards=2))
    expected = read_transitions(replay.out_path)
    watermark = max(e.event_time for e in log.events if isinstance(e, Event)) - 5_000
    with SqlStore.open(database_url) as store:
        stored = store.read_transitions(ruleset.ref)
    key = lambda t: (t.user_id, t.effective_time, t.revision, t.segments, t.cause)  # noqa: E731
    assert {key(t) for t in stored if t.effective_time <= watermark} == {
        key(t) for t in expected if t.effective_time <= watermark
    }
    table_row(
        "stream live sigkill",
        "SIGKILL of `stream live` 2 s into producing, started again at once",
        {
            "legacy": f"{len(distinct)} applied / {len(log.duplicates)} dup / {rejected} dead",
            "stream": f"{counts['applied']} applied / {counts['duplicates']} dup / {counts['too_late']} too late / "
            f"{counts['rejected']} dead",
            "lost": 0,
        },
        0,
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_shadow_run_sigkilled_then_run_again_leaves_no_stream_behind_and_loses_nothing(tmp_path: Path):
    """``shadow run --live`` SIGKILLed mid-run: its stream child dies with it; the same run again succeeds."""
    server = RedisServer(tmp_path / "redis").start()
    out = tmp_path / "run"
    database_url = f"sqlite:///{tmp_path / 'live.db'}"
    try:
        killed = Finished(live_command(out, server.url, database_url))
        wait_for_log(server.url)
        time.sleep(INTO_PRODUCING_S)
        children = _children(killed.process.pid)
        assert children, "the run has no stream child"
        killed.process.send_signal(signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
        _wait(lambda: not any(_alive(c) for c in children), 5, "the orphaned stream child to die")

        again = Finished(live_command(out, server.url, database_url))
        code = again.wait()
        again.assert_clean(0)
        counts = check_live_run(out, server.url, database_url)
    finally:
        server.stop()
    assert counts["resent"] == 0 and counts["regroups"] == 0
    table_row("shadow run sigkill", "SIGKILL of `shadow run --live` 2 s into producing, run again", counts, code)
