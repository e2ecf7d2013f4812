"""``shadow run``, replay mode: dual-write the events, run legacy and the stream on them, compare, report.

Steps, each writing into the run directory ``out``:

1. **ingest**: read the input (a generated workload or a file), validate every
   line (bad ones to ``ingest.deadletter.jsonl`` and the SQL dead letters, counted),
   order valid events by arrival (ties in file order) and dual-write them in
   batches: the SQL events table (primary) and a Redis Stream (shadow, journaled
   on failure). ``events.jsonl`` is the accepted log in arrival order: the one
   file both outputs and the comparison name as their provenance;
2. **legacy**: the SQL as-of job over the events table, assignments to SQL,
   Redis (``legacy``) and ``legacy.jsonl``; with ``legacy_sql`` the team's query
   (``legacy_batch.sqlfile``) runs in place of the rule set's, copied to ``legacy.sql``
   and sealed in the manifest (role ``legacy_sql``, its SHA-256);
3. **stream**: the Beam pipeline replaying the Redis Stream that dual-write
   filled, transitions to ``stream.jsonl``, Redis (``stream``) and SQL;
4. **compare**: ``parity.json``, ``mismatches.jsonl``, ``report.html``,
   ``summary.md``; ``shadow.json`` adds the dual-write counters and timings;
5. **seal**: ``manifest.json`` last (``compare.manifest``). From the start until
   then the directory holds an ``INCOMPLETE`` marker, so a run that stopped
   part-way is never read as evidence.

A run owns its stores: it empties the events table, the rule set's earlier
assignments and transitions are replaced when this run's are published (each in
one switch, so a run that fails part-way leaves the previous complete run
published for the router's SQL fallback), and the Redis namespaces ``legacy``
and ``stream`` are cleared, so results never mix with an earlier run's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compare.comparison import run_comparison
from compare.manifest import begin, comparison_artifacts, seal
from compare.parity import ParityResult
from legacy_batch.job import LegacyReport, run_as_ofs, serving_sink
from legacy_batch.schedule import schedule
from legacy_batch.sqlfile import LegacySql
from segments.errors import InputError
from segments.events import (
    DEFAULT_TIME_BOUNDS,
    Event,
    Rejection,
    TimeBounds,
    arrival_order,
    iter_lines,
    load_event_log,
    parse_line,
    write_jsonl,
)
from segments.lateness import GateParams
from segments.outputs import Assignment, file_sha256, write_meta
from segments.reachstore import ReachStore
from segments.redisstore import RedisStore
from segments.rules import RuleSet, check_reads
from segments.sqlstore import SqlStore
from shadow.dualwrite import BULK_LINGER_S, DualWriter
from shadow.journal import Journal
from shadow.targets import RedisStreamShadow, SqlEventsPrimary
from streaming.byo import TransformRef
from streaming.pipeline import StreamConfig
from streaming.replay import RedisLog, run_replay

Progress = Callable[[str, int, int], None]
INGEST_BATCH = 5_000


@dataclass(frozen=True)
class ShadowPlan:
    """What a shadow run does; validated by the command line."""

    ruleset: RuleSet
    out: Path
    every_ms: int = 300_000
    params: GateParams = field(default_factory=GateParams)
    shards: int = 8
    noise: bool = False
    noise_seed: int = 1
    beam_args: tuple[str, ...] = ()
    legacy_sql: LegacySql | None = None  # the team's query in place of the rule set's (``legacy_batch.sqlfile``)
    transform: TransformRef | None = None  # the team's Beam transform as the stream (``streaming.byo``)


@dataclass(frozen=True)
class ShadowReport:
    parity: ParityResult
    counts: dict[str, Any]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "seconds": self.seconds, "verdict": self.parity.verdict}


def _read_input(
    path: Path, bounds: TimeBounds = DEFAULT_TIME_BOUNDS
) -> tuple[list[tuple[Event, str]], list[Rejection], int]:
    """Valid events (times within ``bounds``) with their original line, in arrival order; rejections;
    line count."""
    valid: list[tuple[Event, str]] = []
    rejected: list[Rejection] = []
    lines = 0
    for number, text in iter_lines(path):
        lines += 1
        parsed = parse_line(text, number, bounds)
        if type(parsed) is Event:
            valid.append((parsed, text))
        else:
            rejected.append(parsed)  # type: ignore[arg-type]
    order = {id(event): line for event, line in valid}
    ordered = arrival_order(event for event, _ in valid)
    return [(event, order[id(event)]) for event in ordered], rejected, lines


def ingest(
    input_path: Path,
    out: Path,
    store: SqlStore,
    shadow: RedisStreamShadow,
    progress: Progress | None = None,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> dict[str, int]:
    """Validate (times within ``bounds``, the rule set's), order and dual-write the input; write
    ``events.jsonl`` and the ingest dead letters. The journal starts empty: one left in ``out`` by an
    earlier run that stopped part-way is deleted, never replayed into this run's log."""
    rows, rejected, lines = _read_input(input_path, bounds)
    if not rows:
        raise InputError(f"no valid events ({lines} lines, {len(rejected)} rejected)", str(input_path))
    write_jsonl(out / "ingest.deadletter.jsonl", (r.to_json() for r in rejected))
    store.insert_dead_letters("ingest", rejected)
    write_jsonl(out / "events.jsonl", (line for _, line in rows))
    # A killed earlier run's journal holds lines of that run's log, which this run has reset: replaying
    # them would put events that are not in this run's input into its shadow log.
    (out / "journal.jsonl").unlink(missing_ok=True)
    journal = Journal(out / "journal.jsonl")
    writer = DualWriter(SqlEventsPrimary(store), shadow, journal, linger_s=BULK_LINGER_S)  # throughput first
    writer.reject(len(rejected))
    total = len(rows)
    try:
        for start in range(0, total, INGEST_BATCH):
            chunk = rows[start : start + INGEST_BATCH]
            writer.write([event for event, _ in chunk], [line for _, line in chunk])
            if progress is not None:
                progress("ingest", min(start + INGEST_BATCH, total), total)
    finally:
        writer.close()
    counts = {"lines": lines, "accepted": total, **writer.counts.as_dict(), "journal_pending": journal.pending}
    if journal.pending:
        raise InputError(
            f"the shadow side stayed down: {journal.pending} events are journaled in {journal.path}; "
            "run again when Redis is back"
        )
    return counts


def run_legacy_side(
    plan: ShadowPlan,
    events_path: Path,
    events: list[Event],
    counts: dict[str, int],
    store: SqlStore,
    redis_store: RedisStore,
    progress: Progress | None = None,
) -> LegacyReport:
    """The legacy as-of job over the events table that dual-write filled."""
    as_ofs = schedule(events, plan.every_ms)
    # No clearing first: ``run_as_ofs`` stages and publishes the run in one switch, so a run
    # that fails part-way leaves the previous complete run published (the router's SQL fallback).
    query_ms: list[float] = []
    run_ms: list[float] = []
    assignments: list[Assignment] = []
    sink = serving_sink(redis_store)
    runs = run_as_ofs(store, plan.ruleset, as_ofs, sink, sql=plan.legacy_sql)
    for done, result in enumerate(runs, start=1):
        query_ms.append(result.query_ms)
        run_ms.append(result.duration_ms)
        assignments.extend(result.assignments)
        if progress is not None:
            progress("legacy", done, len(as_ofs))
    out = plan.out / "legacy.jsonl"
    written = write_jsonl(out, (a.to_json() for a in assignments))
    report = LegacyReport(
        plan.ruleset,
        str(events_path),
        file_sha256(events_path),
        plan.every_ms,
        store.backend,
        tuple(as_ofs),
        written,
        counts,
        0.0,
        0.0,
        tuple(query_ms),
        tuple(run_ms),
        plan.legacy_sql,
    )
    write_meta(out, report.meta())
    return report


def jittered_copy(source: Path, target: Path, max_jitter_ms: int, seed: int) -> None:
    """The same events with each arrival moved later by up to ``max_jitter_ms`` (the noise-floor run)."""
    rng = random.Random(seed)
    rows = []
    for number, text in iter_lines(source):
        obj = json.loads(text)
        arrival = obj.get("arrival_time", obj["event_time"])
        if isinstance(arrival, int):
            obj["arrival_time"] = arrival + rng.randint(0, max_jitter_ms)
        rows.append((obj.get("arrival_time", 0), number, json.dumps(obj, ensure_ascii=False)))
    rows.sort(key=lambda r: (r[0] if isinstance(r[0], int) else 0, r[1]))
    write_jsonl(target, (text for _, _, text in rows))


def run_shadow(
    plan: ShadowPlan,
    input_path: Path,
    database_url: str,
    redis_url: str,
    progress: Progress | None = None,
) -> ShadowReport:
    """The whole replay-mode shadow run (see the module doc)."""
    out = plan.out
    begin(out)  # sealed at the end: until then the directory says it holds an incomplete run
    if plan.legacy_sql is not None:
        (out / "legacy.sql").write_bytes(Path(plan.legacy_sql.path).read_bytes())
    seconds: dict[str, float] = {}
    clock = time.perf_counter
    with SqlStore.open(database_url) as store, RedisStore.open(redis_url) as redis_store:
        store.register_ruleset(plan.ruleset)
        store.clear_events()
        redis_store.clear_side("legacy")
        redis_store.clear_side("stream")
        stream_key = f"segshadow:shadow:{plan.ruleset.name}:events"
        shadow = RedisStreamShadow(redis_url, stream_key)
        shadow.reset()
        try:
            start = clock()
            bounds = plan.ruleset.time_bounds  # both sides read events within the rule set's range
            counts = ingest(input_path, out, store, shadow, progress, bounds)
            seconds["ingest"] = clock() - start
            events_path = out / "events.jsonl"
            log = load_event_log(events_path, bounds)
            details = (json.loads(text).get("detail", "") for _, text in iter_lines(out / "ingest.deadletter.jsonl"))
            check_reads(plan.ruleset, log.events, details, str(input_path))

            start = clock()
            legacy = run_legacy_side(plan, events_path, log.events, log.counts, store, redis_store, progress)
            seconds["legacy"] = clock() - start

            start = clock()
            config = StreamConfig(plan.ruleset, plan.params, plan.shards)
            stream = run_replay(
                events_path,
                out / "stream.jsonl",
                config,
                redis_url=redis_url,
                database_url=database_url,
                beam_args=plan.beam_args,
                source=RedisLog(redis_url, stream_key),
                transform=plan.transform,
            )
            seconds["stream"] = clock() - start
            if progress is not None:
                progress("stream", 1, 1)
        finally:
            shadow.close()

    noise_stream = None
    if plan.noise:
        start = clock()
        jittered = out / "noise" / "events.jsonl"
        jittered_copy(events_path, jittered, plan.params.max_out_of_orderness_ms // 2, plan.noise_seed)
        noise_config = StreamConfig(plan.ruleset, plan.params, plan.shards)
        run_replay(
            jittered, out / "noise" / "stream.jsonl", noise_config, beam_args=plan.beam_args, transform=plan.transform
        )
        noise_stream = out / "noise" / "stream.jsonl"
        seconds["noise"] = clock() - start

    start = clock()
    with RedisStore.open(redis_url) as reach_redis:  # each side's segment reach, kept in the serving store too
        parity = run_comparison(
            events_path,
            out / "legacy.jsonl",
            out / "stream.jsonl",
            plan.ruleset,
            plan.every_ms,
            plan.params,
            out,
            noise_stream=noise_stream,
            event_log=log,
            seal_outputs=False,
            reach_store=ReachStore(reach_redis.client),
        )
    seconds["compare"] = clock() - start
    if progress is not None:
        progress("compare", 1, 1)
    all_counts = {
        "ingest": counts,
        "legacy": {"as_ofs": len(legacy.as_ofs), "assignments": legacy.assignments},
        "stream": stream.counts,
    }
    report = ShadowReport(parity, all_counts, {k: round(v, 3) for k, v in seconds.items()})
    (out / "shadow.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    artifacts = comparison_artifacts(
        out, events_path, out / "legacy.jsonl", out / "stream.jsonl", noise_stream=noise_stream
    )
    extra = {"shadow": out / "shadow.json"}
    if plan.legacy_sql is not None:
        # The manifest states the legacy logic: the team's SQL, sealed with its SHA-256 beside the outputs.
        extra["legacy_sql"] = out / "legacy.sql"
    seal(out, parity, {**artifacts, **extra})
    return report
