"""``stream live``: the same pipeline fed from a Redis Stream, the dual-writer's event log.

Beam Python has no Redis source, so this is one: ``Ticks`` (a splittable DoFn,
run live by FnApiRunner; see ``streaming.ticks``) ticks every ``poll_ms`` and
keeps each bundle open for ``hold_ms``, and ``PollAndAdmit`` reads what arrived
since the last tick, runs the same ``Admission`` as replay (the log's entry order
is the arrival order), and emits per-shard batches to the same ``SegmentShard``
and sinks.

**Reading.** The source keeps its own cursor, the id of the last entry it
admitted, and reads the entries after it with ``XRANGE``. An entry holds one
event line or, as the dual-writer writes them, a whole batch of lines
(``streaming.eventlog``); the source admits an entry's lines in order, and asks
for as many entries as make about ``read_count`` lines at the lines per entry it
last read. A read is a pure
query, so a timed-out or retried read loses nothing and never delivers an entry
out of order (``XREADGROUP >`` would: a reply lost to a timeout leaves its entries
delivered to nobody, and a frozen server answers the old read after the new one).
The consumer group is the cursor made visible: every read runs in one
``MULTI`` with ``XGROUP SETID`` to the cursor (``ENTRIESREAD`` counted), so the
group's last-delivered id says how far the stream has read (``shadow.live``
waits on it) and no entry is ever pending.

**Recovery** (a choice, documented in docs/streaming.md): per-user window state is
**rebuilt from the event log** on start. The cursor starts before the first entry,
so a start re-reads the whole log in its original order, which re-applies every
event, so the gate, dedup and every shard's state come back exactly as they were;
the re-emitted transitions are identical (same effective times and revisions), and
the sinks are idempotent, so re-delivery changes nothing. Trimming the log (``XTRIM
MINID``) to the window plus allowed lateness bounds restart time; events older
than that could only be too late.

**The log vanishing.** A Redis restarted without persistence, a ``FLUSHALL`` or a
failover to an empty replica takes the stream key and its consumer group with it.
The ``SETID`` in every read notices (``NOGROUP``, or no key) in the same atomic
step as the read, so nothing read after the loss is admitted with the old cursor:
the source recreates the group (``MKSTREAM``), moves its cursor back before the
first entry and reads the log again from its start. The dual-writer re-seeds the
log from the SQL primary in arrival order (``shadow.dualwrite``); events this
process already admitted come back as duplicates (the gate's dedup lives in this
process, not in Redis), events it never saw are applied, in order. Each such
regroup is recorded with the wall clock and the lines read before it; the serving
store's ``stream`` values went with the flush, so the latest transition of every
user in the SQL transitions log is written back to Redis (idempotent: a newer
transition already there wins).

**Health** (``streaming.health``): once a second the source publishes its
watermark and lag, its totals and rates, and the consumer lag (entries after its
cursor, read by ``XINFO GROUPS`` in the same ``MULTI`` as that second's read; entries, not lines) to
the serving store, and sets the matching Beam gauges; the shards and the Redis
sink publish their own fields the same way.

With ``counts_path`` the source writes its admission counts (``lines``,
``applied``, ``duplicates``, ``too_late``, ``rejected``) and its regroups there as
JSON whenever they change, at most every ``heartbeat_ms``, and when it stops.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from segments.bulkparse import parse_many
from segments.events import Event
from segments.lateness import NO_WATERMARK
from segments.timeutil import wall_clock_ms
from streaming.admission import Admission
from streaming.byo import TransformRef, live_transform_transitions
from streaming.config import EVENTS_STREAM, FIELD, GROUP, StreamConfig
from streaming.eventlog import entries_for, entry_lines
from streaming.health import HealthPublisher
from streaming.pipeline import DEAD, METRICS_NAMESPACE, Flusher, _Counters, transitions_from
from streaming.sinks import sink_all, with_backoff
from streaming.ticks import Ticks

log = logging.getLogger("segshadow.stream")

# What other modules import from here; FIELD (the one-line entry field) is kept for them, the source itself
# reads entries through streaming.eventlog.
__all__ = ["EVENTS_STREAM", "FIELD", "LiveSource", "PollAndAdmit", "build_live", "source_counts_path"]


DEDUP_HEADROOM = 1.5  # the dedup is sized for this many times the log's lines at start (``_reserve_dedup``)


@dataclass(frozen=True)
class LiveSource:
    """Where the live stream reads: a Redis Stream and the consumer group that shows its progress.

    ``consumer`` is kept for the command line; reading is by cursor (module doc), so no
    consumer is created in the group.
    """

    redis_url: str
    stream_key: str = EVENTS_STREAM
    group: str = GROUP
    consumer: str = "stream-1"
    poll_ms: int = 5
    hold_ms: int = 25  # how long a bundle stays open, polling (streaming.ticks)
    read_count: int = 5_000  # lines a read asks for (as entries, at the lines per entry of the last read)
    heartbeat_ms: int = 100  # idle shards learn the watermark (and fire expiries) at least this often
    counts_path: str | None = None  # where the admission counts and regroups are written (module doc)
    health_ms: int = 1000  # how often each stage publishes its health (module doc); 0: never


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response


def _group_lag(groups: list[Any], group: str) -> dict[str, int]:
    """``consumer_lag`` and ``pending`` of ``group`` in an ``XINFO GROUPS`` reply (lag absent when Redis cannot
    count it)."""
    for info in groups:
        if isinstance(info, dict) and _text(info.get("name")) == group:
            out = {"pending": int(info.get("pending") or 0)}
            if info.get("lag") is not None:
                out["consumer_lag"] = int(info["lag"])
            return out
    return {}


class GroupLost(Exception):
    """The log's consumer group (and with it, usually, the log) is gone: Redis restarted empty or was flushed."""


def _group_lost(error: BaseException) -> bool:
    text = str(error)
    return "NOGROUP" in text or "requires the key to exist" in text or "no such key" in text


class PollAndAdmit(beam.DoFn):
    """On each tick: read the entries after the cursor, admit them in entry order, emit shard batches."""

    def __init__(self, config: StreamConfig, source: LiveSource, database_url: str | None = None) -> None:
        self.config = config
        self.source = source
        self.database_url = database_url

    def setup(self) -> None:
        from segments.redisstore import connect

        self.counters = _Counters()
        self.client: Any = with_backoff(
            "connect to Redis", lambda: connect(self.source.redis_url, decode_responses=False)
        )
        # Entries as Redis sends them: redis-py's reply parsing (a dict per entry) cost ~5% of the live loop.
        self.client.set_response_callback("XRANGE", _raw_reply)
        self.admission = Admission(self.config.params)
        self.flusher = Flusher(self.config.shards)
        self.seq = 0
        self.grouped = False
        self.cursor: bytes | None = None  # the last entry admitted since the group was (re)made; None: none yet
        self.read_since_group = 0
        self.last_read = (0, 0)  # (lines, entries) of the last read that found any: the lines per entry
        self.regroups: list[dict[str, int]] = []
        self.last_heartbeat = 0.0
        self.failing_since: float | None = None
        self.counts_written: tuple[Any, ...] | None = None
        self.health = HealthPublisher("source", self.source.health_ms / 1000) if self.source.health_ms else None
        self.health_base = (0, 0)  # (lines, applied) at the last publish
        self.lag: dict[str, int] = {}  # the group's lag and pending, from the last read that asked
        self.gauges = {
            name: Metrics.gauge(METRICS_NAMESPACE, name)
            for name in ("watermark_ms", "watermark_lag_ms", "consumer_lag", "pending")
        }

    def teardown(self) -> None:
        if getattr(self, "admission", None) is not None:
            self._write_counts(force=True)
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    # ---- the group and the cursor ------------------------------------------------------------------

    def _ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.source.stream_key, self.source.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self) -> list[Any]:
        """The entries after the cursor (up to ``read_count``), with the group moved to the cursor in the same
        ``MULTI``; ``GroupLost`` when the group is gone (nothing read then is admitted)."""
        import redis

        key, cursor = self.source.stream_key, self.cursor
        pipe = self.client.pipeline(transaction=True)
        pipe.xgroup_setid(key, self.source.group, cursor or b"0", entries_read=self.read_since_group)
        count = entries_for(self.source.read_count, *self.last_read)
        pipe.xrange(key, min=b"(" + cursor if cursor else b"-", max=b"+", count=count)
        asked = self.health is not None and self.health.due()
        if asked:  # once a second: the lag as of this read, in the same atomic step (module doc: health)
            pipe.xinfo_groups(key)
        moved, entries, *info = pipe.execute(raise_on_error=False)
        if asked and info and isinstance(info[0], list):
            self.lag = _group_lag(info[0], self.source.group)
        if isinstance(moved, redis.ResponseError):
            if _group_lost(moved):
                raise GroupLost(str(moved))
            raise moved
        if isinstance(entries, Exception):
            raise entries
        return entries or []

    def _regroup(self, why: str) -> None:
        """Recreate the group and read the log again from its start (module doc: the log vanishing)."""
        log.warning(
            "the event log's consumer group vanished (%s; Redis restarted empty or was flushed): recreated it, "
            "reading the log again from its start after %d lines; events already applied count as duplicates",
            why,
            self.seq,
        )
        self._ensure_group()
        self.regroups.append({"at_ms": wall_clock_ms(), "lines_before": self.seq})
        self.cursor = None
        self.read_since_group = 0
        self._republish()
        self._write_counts(force=True)

    def _republish(self) -> None:
        """Write every user's latest transition from the SQL transitions log back to the serving store."""
        if not self.database_url:
            return
        from segments.redisstore import RedisStore
        from segments.sqlstore import SqlStore

        try:
            with SqlStore.open(self.database_url, create=False) as store:
                transitions = store.read_transitions(self.config.ruleset.ref)
            latest: dict[str, Any] = {}
            for transition in transitions:  # sorted by user, time, revision: the last one per user wins
                latest[transition.user_id] = transition
            with RedisStore.open(self.source.redis_url) as serving:
                serving.write_stream(list(latest.values()))
            log.info("republished %d users' latest stream segments to the serving store", len(latest))
        except Exception as exc:  # the serving store is a cache: new transitions still reach it
            log.warning("could not republish the stream's segments after the log vanished: %s", exc)

    # ---- admission ------------------------------------------------------------------------------------

    def _admit(self, entries: Sequence[Sequence[Any]]) -> Iterator[Any]:
        live = self.config.live
        counts = self.admission.counts
        before = (counts.applied, counts.duplicates, counts.too_late, sum(counts.rejected.values()))
        admission, flusher = self.admission, self.flusher
        bounds = self.config.ruleset.time_bounds  # the range legacy and the replay read with
        first = self.seq
        numbered = list(enumerate((line for _, fields in entries for line in entry_lines(fields)), start=first + 1))
        if first == 0 and numbered:
            self._reserve_dedup(len(numbered), len(entries))
        self.seq += len(numbered)
        valid: list[Event] = []
        for rejection in parse_many(numbered, valid, bounds):  # the poll's lines parsed together, as parse_line
            yield beam.pvalue.TaggedOutput(DEAD, admission.reject(rejection))
        for event in valid:
            result = admission.admit_row(event)
            if type(result) is tuple:
                flusher.add(result)
            elif result is not None:
                yield beam.pvalue.TaggedOutput(DEAD, result)
        self.last_read = (self.seq - first, len(entries)) if entries else self.last_read
        # Beam counters once per poll, not per event (each increment costs about a microsecond).
        self.counters.lines.inc(self.seq - first)
        self.counters.applied.inc(counts.applied - before[0])
        self.counters.duplicates.inc(counts.duplicates - before[1])
        self.counters.too_late.inc(counts.too_late - before[2])
        self.counters.rejected.inc(sum(counts.rejected.values()) - before[3])
        if entries:
            clock = wall_clock_ms() if live else 0
            now = time.monotonic()
            heartbeat = now - self.last_heartbeat >= self.source.heartbeat_ms / 1000
            if heartbeat:
                self.last_heartbeat = now
                self._write_counts()
            yield from self.flusher.flush(self.admission.gate.watermark, clock, heartbeat=heartbeat)

    def _reserve_dedup(self, lines: int, entries: int) -> None:
        """Before the first line is admitted: size the dedup for the log as it stands (``XLEN`` entries, at the
        lines per entry of this first read) and half as much again (``DEDUP_HEADROOM``).

        Its table grows by moving a few slots per add (``segments.seen``): with twelve million ids that move
        took ~50 s at 20,000 events/s, about 5% of the live loop's time, and it came right after start-up
        (the table reaching 70% of its size with the history). Sized up front it is the size it would have
        grown to, without the move; a Redis that does not answer leaves it to grow as before.
        """
        import redis

        try:
            logged = int(self.client.xlen(self.source.stream_key))
        except (redis.RedisError, ValueError):
            return
        self.admission.gate.reserve(int(logged * lines / max(1, entries) * DEDUP_HEADROOM))

    def process(self, _tick: Any) -> Iterator[Any]:
        import redis

        try:
            if not self.grouped:
                self._ensure_group()
                self.grouped = True
            entries = self._read()
        except GroupLost as lost:
            try:
                self._regroup(str(lost))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._failed(exc)
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._failed(exc)
            return
        if self.failing_since is not None:
            log.warning("Redis answers again after %.1f s", time.monotonic() - self.failing_since)
            self.failing_since = None
        if entries:
            yield from self._admit(entries)
            self.cursor = entries[-1][0]
            self.read_since_group += len(entries)
        if self.health is not None and self.health.due():
            self._publish_health()

    def _publish_health(self) -> None:
        """The source's health fields (``streaming.health``) to the serving store and the Beam gauges."""
        assert self.health is not None
        counts = self.admission.counts
        elapsed = max(1e-3, time.monotonic() - self.health.last)
        lines, applied = self.seq, counts.applied
        rejected = sum(counts.rejected.values())
        fields: dict[str, float | int] = {
            "lines": lines,
            "applied": applied,
            "duplicates": counts.duplicates,
            "too_late": counts.too_late,
            "rejected": rejected,
            "dead_letters": counts.too_late + rejected,
            "events_in_per_s": round((lines - self.health_base[0]) / elapsed, 1),
            "applied_per_s": round((applied - self.health_base[1]) / elapsed, 1),
            "regroups": len(self.regroups),
            **self.lag,
        }
        watermark = self.admission.gate.watermark
        if watermark != NO_WATERMARK:
            fields["watermark_ms"] = watermark
            fields["watermark_lag_ms"] = wall_clock_ms() - watermark
        for name, gauge in self.gauges.items():
            if name in fields:
                gauge.set(int(fields[name]))
        self.health_base = (lines, applied)
        self.health.publish(self.client, fields)

    def _failed(self, exc: BaseException) -> None:
        """A read that failed on the connection: nothing was admitted, the next tick reads from the same cursor."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning("Redis read failed, retrying on every tick: %s", exc)

    def _write_counts(self, force: bool = False) -> None:
        path = self.source.counts_path
        if not path:
            return
        counts = self.admission.counts
        state = (self.seq, counts.applied, counts.duplicates, counts.too_late, len(self.regroups))
        if state == self.counts_written and not force:
            return
        body = {"lines": self.seq, **counts.as_dict(), "regroups": self.regroups}
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
        os.replace(temporary, path)
        self.counts_written = state


def source_counts_path(out_path: str | Path) -> Path:
    """Where a live run that appends transitions to ``out_path`` keeps its source's counts (module doc)."""
    return Path(f"{out_path}.source.json")


def build_live(
    pipeline: beam.Pipeline,
    config: StreamConfig,
    source: LiveSource,
    duration_s: float | None,
    database_url: str | None,
    out_path: str | None = None,
    sink_delay_ms: int = 0,
    transform: TransformRef | None = None,
) -> None:
    """Attach the live source, segmentation and sinks to ``pipeline``.

    ``sink_delay_ms`` is the planted slow-sink fault (``streaming.sinks.RedisTransitionsSink``).
    With ``transform`` the team's ``PTransform`` segments the admitted events (``streaming.byo``).

    With ``out_path`` the transitions are also appended there, and the source's
    counts go to ``source_counts_path(out_path)`` unless ``source.counts_path`` names a file.
    """
    if out_path and source.counts_path is None:
        source = replace(source, counts_path=str(source_counts_path(out_path)))
    start = time.time()
    stop = start + duration_s if duration_s else float(2**40)
    ticks = pipeline | "Tick" >> Ticks(start, stop, source.poll_ms / 1000, source.hold_ms / 1000)
    poll = PollAndAdmit(config, source, database_url)
    admitted = ticks | "PollAndAdmit" >> beam.ParDo(poll).with_outputs(DEAD, main="batches")
    transitions = segmentation(admitted.batches, config, source, transform)
    sink_all(
        transitions, admitted[DEAD], source.redis_url, database_url, config.ruleset.ref,
        sink_delay_ms=sink_delay_ms, health_ms=source.health_ms, per_second=False,
    )
    if out_path:
        _ = transitions | "ToJSONL" >> beam.ParDo(AppendJsonl(out_path))


def segmentation(
    batches: beam.PCollection, config: StreamConfig, source: LiveSource, transform: TransformRef | None
) -> beam.PCollection:
    """What turns the live shard batches into transitions: segshadow's segmenter, or the team's transform."""
    if transform is None:
        return transitions_from(batches, config, source.redis_url, source.health_ms)
    return live_transform_transitions(batches, transform.transform)


class AppendJsonl(beam.DoFn):
    """Appends transition lines to a local file (local runners; on a cluster use the Redis/SQL sinks)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self) -> None:
        self.handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def process(self, batch: list[Any]) -> None:
        self.handle.write("".join(t.to_json() + "\n" for t in batch))
        self.handle.flush()

    def teardown(self) -> None:
        handle = getattr(self, "handle", None)
        if handle is not None:
            handle.close()
