"""What every fault test asserts after a live shadow run, and the row it adds to the fault table.

The accounting, from independent evidence (the files and stores, not the run's own verdicts):

- **legacy side**: every line sent is one of applied (a row of the SQL events table),
  duplicate (a later arrival of a stored id) or dead-lettered (an ingest rejection);
- **stream side** (the child's own counts): every line it read is one of applied,
  duplicate, too late or dead-lettered; applied + too late is exactly the set of distinct
  accepted events (nothing lost, nothing applied twice); the too-late count is what an
  independent gate over ``events.jsonl`` drops; the lines it read beyond the accepted ones
  are exactly the re-sent events it had already read before the log vanished;
- **the two logs**: the SQL events table and the Redis Stream hold the same events, in the
  same (arrival) order; nothing accepted is missing from either (``lost`` = 0).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import redis

from segments.events import load_event_log
from segments.lateness import GateParams, too_late_ids
from segments.sqlstore import SqlStore
from streaming.eventlog import log_lines

STREAM_KEY = "segshadow:shadow:live:clickstream:events"


def log_ids(url: str, key: str = STREAM_KEY) -> list[str]:
    """The event ids in the Redis Stream, in entry order."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries: Any = client.xrange(key)
        return [json.loads(line)["event_id"] for line in log_lines(entries)]
    finally:
        client.close()


def first_arrivals(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]  # type: ignore[func-returns-value]


def check_live_run(out: Path, redis_url: str, database_url: str, params: GateParams | None = None) -> dict[str, Any]:
    """Assert the accounting of a finished live run in ``out``; returns the fault table's counts."""
    params = params or GateParams()
    live = json.loads((out / "live.json").read_text())["counts"]
    ingest, stream, recovery = live["ingest"], live["stream"], live["recovery"]
    log = load_event_log(out / "events.jsonl")
    distinct = [e.event_id for e in log.events]
    accepted = len(log.events) + len(log.duplicates)

    # Legacy side: applied (SQL rows) + duplicates + dead-lettered = every line sent.
    with SqlStore.open(database_url, create=False) as store:
        sql_ids = [e.event_id for e in store.iter_events()]
        ingest_dead = store.read_dead_letters("ingest")
        stream_dead = [d for d in store.read_dead_letters("stream") if d.rejection.reason == "too_late"]
    assert ingest["accepted"] == accepted and ingest["sent"] == accepted + ingest["rejected"]
    assert sql_ids == distinct, "the SQL events table is not the accepted events in arrival order"
    legacy_dups = accepted - len(sql_ids)
    assert len(sql_ids) + legacy_dups + ingest["rejected"] == ingest["sent"]
    assert len(ingest_dead) == ingest["rejected"]

    # Stream side: the child's own accounting of every line it read.
    admission = stream["admission"]
    assert admission is not None, "the stream child left no counts"
    assert admission["lines"] == (
        admission["applied"] + admission["duplicates"] + admission["too_late"] + admission["rejected"]
    )
    too_late = too_late_ids(log.events, params)
    assert admission["applied"] + admission["too_late"] == len(distinct), "an event was lost or applied twice"
    assert admission["too_late"] == len(too_late) == len(stream_dead)
    assert admission["rejected"] == 0
    re_read = sum(r["resent"] - r["lines_before"] for r in recovery["reseeds"])
    re_read += sum(g["lines_before"] for g in recovery["stream_regroups"])
    assert stream["re_read"] == admission["lines"] - accepted == re_read
    assert admission["duplicates"] == accepted - len(distinct) + stream["re_read"]

    # The two logs hold the same events in the same order, after recovery.
    in_log = log_ids(redis_url)
    assert first_arrivals(in_log) == sql_ids, "the Redis Stream and the SQL events table differ"
    lost = len(set(distinct) - set(in_log)) + len(set(distinct) - set(sql_ids))
    assert lost == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["by_cause"]["unexplained"] == 0
    return {
        "sent": ingest["sent"],
        "legacy": f"{len(sql_ids)} applied / {legacy_dups} dup / {ingest['rejected']} dead",
        "stream": (
            f"{admission['applied']} applied / {admission['duplicates']} dup / "
            f"{admission['too_late']} too late / {admission['rejected']} dead"
        ),
        "journaled": ingest["journaled"],
        "resent": recovery["resent"],
        "regroups": len(recovery["stream_regroups"]),
        "lost": lost,
    }


def table_row(fault: str, injected: str, counts: dict[str, Any], exit_code: int) -> None:
    """Print one row of the fault table (``pytest -s`` shows it) and append it to ``$SEGSHADOW_FAULT_TABLE``."""
    cells = [fault, injected, counts.get("legacy", ""), counts.get("stream", ""), str(counts.get("lost", "")),
             str(exit_code)]  # fmt: skip
    row = "| " + " | ".join(cells) + " |"
    print(row, file=sys.stderr)
    target = os.environ.get("SEGSHADOW_FAULT_TABLE")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"fault": fault, "injected": injected, **counts, "exit": exit_code}) + "\n")
