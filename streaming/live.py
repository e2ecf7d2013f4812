"""``stream live``: the same pipeline fed from a Redis Stream through a consumer group.

Beam Python has no Redis source, so this is one: ``Ticks`` (a splittable DoFn,
run live by FnApiRunner; see ``streaming.ticks``) ticks every ``poll_ms`` and
keeps each bundle open for ``hold_ms``, and ``PollAndAdmit`` reads what arrived
since the last tick with ``XREADGROUP``,
runs the same ``Admission`` as replay (the stream entry order is the arrival
order), and emits per-shard batches to the same ``SegmentShard`` and sinks.

Recovery (a choice, documented in docs/streaming.md): per-user window state is
**rebuilt from the event log** on start. The Redis Stream is the log; on start the
source re-reads it from the beginning (``XRANGE``), which re-applies every event
in its original order, so the gate, dedup and every shard's state come back
exactly as they were; the re-emitted transitions are identical (same effective
times and revisions), and the sinks are idempotent, so re-delivery changes
nothing. Then the group's cursor is moved to the last entry replayed and new
entries are read with ``XREADGROUP >`` and acknowledged once admitted. Nothing
read is lost on a crash: an entry that was delivered but not acknowledged is
part of the log that the next start replays. Trimming the log (``XTRIM MINID``)
to the window plus allowed lateness bounds restart time; events older than that
could only be too late.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from segments.events import Event, parse_line
from segments.timeutil import wall_clock_ms
from streaming.admission import Admission
from streaming.config import EVENTS_STREAM, FIELD, GROUP, StreamConfig
from streaming.pipeline import DEAD, Flusher, _Counters, transitions_from
from streaming.sinks import sink_all, with_backoff
from streaming.ticks import Ticks

log = logging.getLogger("segshadow.stream")


@dataclass(frozen=True)
class LiveSource:
    """Where the live stream reads: a Redis Stream, a consumer group and a consumer name."""

    redis_url: str
    stream_key: str = EVENTS_STREAM
    group: str = GROUP
    consumer: str = "stream-1"
    poll_ms: int = 5
    hold_ms: int = 25  # how long a bundle stays open, polling (streaming.ticks)
    read_count: int = 5_000
    heartbeat_ms: int = 100  # idle shards learn the watermark (and fire expiries) at least this often


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


_FIELD_BYTES = FIELD.encode()


def _line_of(fields: Any) -> str:
    """The event line in an entry's fields: a dict (redis-py's XRANGE) or the raw flat list [field, value, ...]
    (XREADGROUP here); empty if the entry has none (or was deleted while pending)."""
    if isinstance(fields, dict):
        raw = fields.get(_FIELD_BYTES)
    elif fields and fields[0] == _FIELD_BYTES:
        raw = fields[1]  # the usual entry: the event's one field
    else:
        raw = dict(zip(fields[::2], fields[1::2], strict=False)).get(_FIELD_BYTES) if fields else None
    return "" if raw is None else _text(raw)


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response


class PollAndAdmit(beam.DoFn):
    """On each tick: read new stream entries, admit them in entry order, emit shard batches."""

    def __init__(self, config: StreamConfig, source: LiveSource) -> None:
        self.config = config
        self.source = source

    def setup(self) -> None:
        from segments.redisstore import connect

        self.counters = _Counters()
        self.client: Any = with_backoff(
            "connect to Redis", lambda: connect(self.source.redis_url, decode_responses=False)
        )
        # Entries as Redis sends them: redis-py's reply parsing (a dict per entry) cost ~5% of the live loop.
        self.client.set_response_callback("XREADGROUP", _raw_reply)
        self.admission = Admission(self.config.params)
        self.flusher = Flusher(self.config.shards)
        self.seq = 0
        self.rebuilt = False
        self.unacked: list[Any] = []
        self.last_heartbeat = 0.0

    def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            if self.unacked:
                try:
                    client.xack(self.source.stream_key, self.source.group, *self.unacked)
                except Exception as exc:  # acknowledgement is bookkeeping; the log replay recovers anyway
                    log.warning("could not acknowledge the last entries: %s", exc)
            client.close()

    def _ensure_group(self) -> None:
        import redis

        try:
            self.client.xgroup_create(self.source.stream_key, self.source.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _admit(self, entries: Sequence[Sequence[Any]]) -> Iterator[Any]:
        live = self.config.live
        counts = self.admission.counts
        before = (counts.applied, counts.duplicates, counts.too_late, sum(counts.rejected.values()))
        admission, flusher = self.admission, self.flusher
        for _, fields in entries:
            self.seq += 1
            parsed = parse_line(_line_of(fields), self.seq)
            if not isinstance(parsed, Event):
                yield beam.pvalue.TaggedOutput(DEAD, admission.reject(parsed))
                continue
            result = admission.admit_row(parsed)
            if type(result) is tuple:
                flusher.add(result)
            elif result is not None:
                yield beam.pvalue.TaggedOutput(DEAD, result)
        # Beam counters once per poll, not per event (each increment costs about a microsecond).
        self.counters.lines.inc(len(entries))
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
            yield from self.flusher.flush(self.admission.gate.watermark, clock, heartbeat=heartbeat)

    def _rebuild(self) -> Iterator[Any]:
        """Re-apply the whole log in order (see the module doc), then point the group after it."""
        import redis

        self._ensure_group()
        last = b"-"
        replayed = 0
        while True:
            start = last if last == b"-" else b"(" + last
            entries = self.client.xrange(self.source.stream_key, min=start, max="+", count=self.source.read_count)
            if not entries:
                break
            yield from self._admit(entries)
            replayed += len(entries)
            last = entries[-1][0]
        if last != b"-":
            try:
                self.client.xgroup_setid(self.source.stream_key, self.source.group, id=last)
            except redis.ResponseError:
                log.warning("could not move the consumer group cursor; relying on dedup for re-read entries")
        log.info("live source rebuilt state from %d log entries", replayed)
        self.rebuilt = True

    def process(self, _tick: Any) -> Iterator[Any]:
        if not self.rebuilt:
            yield from with_backoff_iter(self._rebuild)
            return
        import redis

        try:
            # The previous tick's acknowledgements ride along with this tick's read: one round trip.
            pipe = self.client.pipeline(transaction=False)
            if self.unacked:
                pipe.xack(self.source.stream_key, self.source.group, *self.unacked)
            pipe.xreadgroup(
                self.source.group,
                self.source.consumer,
                {self.source.stream_key: ">"},
                count=self.source.read_count,
            )
            reply = pipe.execute()[-1]
            self.unacked = []
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("Redis read failed, will retry on the next tick: %s", exc)
            return
        # RESP3 (redis-py's default protocol may be either) answers with a map of stream -> entries.
        for _, entries in reply.items() if isinstance(reply, dict) else reply or []:
            yield from self._admit(entries)
            self.unacked.extend(entry_id for entry_id, _ in entries)


def with_backoff_iter(produce: Any) -> Iterator[Any]:
    """Materialise ``produce()`` (a generator) so that a retry never emits a partial result twice."""
    items = with_backoff("rebuild state from the event log", lambda: list(produce()))
    yield from items


def build_live(
    pipeline: beam.Pipeline,
    config: StreamConfig,
    source: LiveSource,
    duration_s: float | None,
    database_url: str | None,
    out_path: str | None = None,
) -> None:
    """Attach the live source, segmentation and sinks to ``pipeline``."""
    start = time.time()
    stop = start + duration_s if duration_s else float(2**40)
    ticks = pipeline | "Tick" >> Ticks(start, stop, source.poll_ms / 1000, source.hold_ms / 1000)
    admitted = ticks | "PollAndAdmit" >> beam.ParDo(PollAndAdmit(config, source)).with_outputs(DEAD, main="batches")
    transitions = transitions_from(admitted.batches, config)
    sink_all(transitions, admitted[DEAD], source.redis_url, database_url, config.ruleset.ref)
    if out_path:
        _ = transitions | "ToJSONL" >> beam.ParDo(AppendJsonl(out_path))


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


