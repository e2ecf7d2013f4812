"""The Beam pipeline: source -> admission -> per-shard segmentation -> sinks. One definition, two sources.

Shape (see DESIGN.md's measured facts: per-element overhead dominates, so many
events travel in one element, and nothing relies on runner timer semantics):

- **replay source** (``ReadAndAdmitFile``): reads the recorded file, parses and
  validates every line, orders valid events by arrival (ties in file order) and
  runs admission inline, because arrival order is only known there;
- **live source** (``streaming.live``): ``Ticks`` drives ``PollAndAdmit``, which
  reads a Redis Stream through a consumer group and runs the same ``Admission``
  (one instance: the ticks are one element); other unbounded sources of lines
  can use ``AdmitLines``, a stateful DoFn on one key;
- both emit ``ShardBatch`` elements keyed by shard (a stable hash of the user):
  the shard's events in arrival order, each with its watermark, and the
  watermark after the batch. Every flush reaches every shard, so expiry advances
  everywhere (the watermark travels in the data);
- ``SegmentShard`` is a stateful DoFn per shard holding a ``ShardSegmenter``; a
  per-shard sequence number and a reorder buffer make the result independent of
  the order in which the runner delivers batches;
- sinks are DoFns (Beam Python has no Redis IO, and its JDBC IO needs Java):
  JSONL (WriteToText, one file), Redis ``stream`` namespace, SQL transitions log,
  dead letters to a file and SQL. All writes are idempotent, so retried bundles
  change nothing.
"""

from __future__ import annotations

import marshal
import os
import pickle
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple, Tuple  # noqa: UP035 -- Beam reads typing.Tuple hints

import apache_beam as beam
from apache_beam.coders import BytesCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec

from segments.arrival_runs import ArrivalRuns
from segments.bulkparse import parse_many
from segments.events import DEFAULT_TIME_BOUNDS, Event, Rejection, TimeBounds, iter_lines
from segments.lateness import END_OF_TIME
from segments.outputs import Transition
from segments.timeutil import wall_clock_ms
from streaming.admission import Admission, shard_of
from streaming.approx import segmenter_class
from streaming.config import StreamConfig
from streaming.eventlog import entries_for, log_lines
from streaming.health import HealthPublisher
from streaming.segmenter import PRUNE_EVERY_MS, Row, ShardSegmenter

DEAD = "dead_letter"
METRICS_NAMESPACE = "segshadow.stream"
READ_LINES = 4_096  # lines a replay parses between two checks of its arrival runs' size (segments.arrival_runs)


class ShardBatch(NamedTuple):
    """One flush of admission for one shard: its events in arrival order and the watermark after them."""

    seq: int
    events: list[Row]  # ``Applied``'s fields as plain tuples
    watermark: int
    clock: int  # the arrival (replay) or wall (live) time of the flush
    final: bool


class Flusher:
    """Buffers admitted events per shard and cuts ``ShardBatch`` elements, numbered per shard.

    A flush reaches every shard that has events; with ``heartbeat`` (and always
    when ``final``) it reaches every shard, so that idle shards learn the new
    watermark and fire their expiries.
    """

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.buffers: list[list[Row]] = [[] for _ in range(shards)]
        self.seqs = [0] * shards
        self.buffered = 0

    def add(self, event: Row) -> None:
        # A plain tuple (not the NamedTuple ``Applied``) travels through the shuffle about 4x cheaper.
        self.buffers[shard_of(event[0], self.shards)].append(event)
        self.buffered += 1

    def flush(
        self, watermark: int, clock: int, final: bool = False, heartbeat: bool = True
    ) -> Iterator[tuple[int, ShardBatch]]:
        for shard in range(self.shards):
            events = self.buffers[shard]
            if not events and not heartbeat and not final:
                continue
            self.buffers[shard] = []
            seq = self.seqs[shard]
            self.seqs[shard] = seq + 1
            yield shard, ShardBatch(seq, events, watermark, clock, final)
        self.buffered = 0


class _Counters:
    def __init__(self) -> None:
        self.lines = Metrics.counter(METRICS_NAMESPACE, "lines")
        self.applied = Metrics.counter(METRICS_NAMESPACE, "applied")
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicates")
        self.too_late = Metrics.counter(METRICS_NAMESPACE, "too_late")
        self.rejected = Metrics.counter(METRICS_NAMESPACE, "rejected")


def admit_events(
    admission: Admission, events: Iterable[Event], flusher: Flusher, batch_events: int, counters: _Counters
) -> Iterator[Any]:
    """Run admission over arrival-ordered events; yield shard batches and tagged dead letters."""
    applied = 0
    admit = admission.admit_row
    for event in events:
        result = admit(event)
        if type(result) is tuple:
            flusher.add(result)
            applied += 1
            if flusher.buffered >= batch_events:
                yield from flusher.flush(admission.gate.watermark, event.arrival_time)
        elif result is not None:
            counters.too_late.inc()
            yield beam.pvalue.TaggedOutput(DEAD, result)
    counters.applied.inc(applied)


def parse_into(
    valid: list[Event],
    numbered: Iterable[tuple[int, str]],
    admission: Admission,
    counters: _Counters,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> Iterator[Any]:
    """Parse numbered lines, appending events to ``valid``; yield each bad line (and each event whose
    times are outside ``bounds``, the rule set's) as a counted dead letter. The lines are parsed together
    (``segments.bulkparse``: the same results as ``parse_line`` line by line)."""
    lines = numbered if isinstance(numbered, list) else list(numbered)
    rejected = parse_many(lines, valid, bounds)
    counters.lines.inc(len(lines))
    if rejected:
        counters.rejected.inc(len(rejected))
    for rejection in rejected:
        yield beam.pvalue.TaggedOutput(DEAD, admission.reject(rejection))


class ReadAndAdmitFile(beam.DoFn):
    """Replay source: one element (a path) -> the whole recorded file, admitted in arrival order."""

    def __init__(self, config: StreamConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.counters = _Counters()

    def process(self, path: str) -> Iterator[Any]:
        admission = Admission(self.config.params)
        valid = ArrivalRuns()  # at most a run of parsed events in memory, the rest spilled (segments.arrival_runs)
        bounds = self.config.ruleset.time_bounds
        lines = iter_lines(path)
        while chunk := list(islice(lines, READ_LINES)):
            yield from parse_into(valid.buffer, chunk, admission, self.counters, bounds)
            valid.settle()
        flusher = Flusher(self.config.shards)
        admission.gate.reserve(len(valid) + len(valid.buffer))  # every valid event is known now
        yield from admit_events(admission, valid.ordered(), flusher, self.config.batch_events, self.counters)
        self.counters.duplicates.inc(admission.counts.duplicates)
        yield from flusher.flush(END_OF_TIME, valid.last_arrival, final=True)


class AdmitLines(beam.DoFn):
    """Admission for any unbounded source of raw lines (TestStream, Pub/Sub, Kafka): stateful on one key.

    Input: ``(key, line)`` or ``(key, [lines])`` in arrival order (one key, so one
    sequence). Each element is admitted and flushed to every shard.
    """

    STATE = ReadModifyWriteStateSpec("admission", PickleCoder())

    def __init__(self, config: StreamConfig) -> None:
        self.config = config

    def setup(self) -> None:
        self.counters = _Counters()

    def process(self, element: tuple[Any, Any], state: Any = beam.DoFn.StateParam(STATE)) -> Iterator[Any]:
        _, payload = element
        lines = [payload] if isinstance(payload, str) else list(payload)
        held = state.read()
        admission, flusher, seq = held if held is not None else (Admission(self.config.params), None, 0)
        flusher = flusher or Flusher(self.config.shards)
        valid: list[Event] = []
        bounds = self.config.ruleset.time_bounds
        yield from parse_into(valid, enumerate(lines, start=seq + 1), admission, self.counters, bounds)
        seq += len(lines)
        yield from admit_events(admission, valid, flusher, self.config.batch_events, self.counters)
        clock = wall_clock_ms() if self.config.live else (valid[-1].arrival_time if valid else 0)
        yield from flusher.flush(admission.gate.watermark, clock)
        state.write((admission, flusher, seq))


class ReadAndAdmitRedisLog(beam.DoFn):
    """Bounded replay of a Redis Stream (the dual-write log): entries up to the last one at start, in order.

    The stream's entry order is the arrival order, so no sort is needed; admission
    is the same as for a file. Entries hold one line or a batch of lines
    (``streaming.eventlog``; both of the log's fields are read); ``chunk`` is the
    lines a read asks for.
    """

    def __init__(self, config: StreamConfig, redis_url: str, stream_key: str, chunk: int = 20_000):
        self.config = config
        self.redis_url = redis_url
        self.stream_key = stream_key
        self.chunk = chunk

    def setup(self) -> None:
        self.counters = _Counters()

    def process(self, _: Any) -> Iterator[Any]:
        from segments.redisstore import connect

        client: Any = connect(self.redis_url, decode_responses=False)
        try:
            info = client.xinfo_stream(self.stream_key) if client.exists(self.stream_key) else None
            end = info["last-generated-id"] if info else None
            admission = Admission(self.config.params)
            flusher = Flusher(self.config.shards)
            start: bytes = b"-"
            seq = 0
            last_arrival = 0
            last_read = (0, 0)  # (lines, entries) of the last chunk: an entry may hold a batch of lines
            while end is not None:
                count = entries_for(self.chunk, *last_read)
                entries = client.xrange(self.stream_key, min=start, max=end, count=count)
                if not entries:
                    break
                valid: list[Event] = []
                texts = list(log_lines(entries))
                bounds = self.config.ruleset.time_bounds
                yield from parse_into(valid, enumerate(texts, start=seq + 1), admission, self.counters, bounds)
                seq += len(texts)
                last_read = (len(texts), len(entries))
                if valid:
                    last_arrival = valid[-1].arrival_time
                yield from admit_events(admission, valid, flusher, self.config.batch_events, self.counters)
                start = b"(" + entries[-1][0]
            self.counters.duplicates.inc(admission.counts.duplicates)
            yield from flusher.flush(END_OF_TIME, last_arrival, final=True)
        finally:
            client.close()


class ShardState:
    """What a shard holds: the segmenter, the reorder buffer of batches that came early, and where its
    log stands (see ``SegmentShard``)."""

    def __init__(self, segmenter: ShardSegmenter) -> None:
        self.segmenter = segmenter
        self.next_seq = 0
        self.parked: dict[int, ShardBatch] = {}
        self.received = 0  # batches logged so far: the position of the last one
        self.epoch = 0  # logged in bag ``SegmentShard.bag_of(epoch)``; at its end part ``epoch % parts`` is taken
        self.epoch_events = 0
        self.epoch_batches = 0

    def ready(self, batch: ShardBatch) -> Iterator[ShardBatch]:
        """Batches in sequence order, holding back any that arrive before their predecessors."""
        if batch.seq < self.next_seq:
            return  # a redelivered batch that was already applied
        self.parked[batch.seq] = batch
        while self.next_seq in self.parked:
            yield self.parked.pop(self.next_seq)
            self.next_seq += 1


def segment_batch(segmenter: ShardSegmenter, batch: ShardBatch, live: bool) -> list[Transition]:
    """Apply one batch to a shard: each event after the watermark that held before it, then the batch's."""
    out = segmenter.apply_batch(batch.events, wall_clock_ms if live else None)
    if batch.final and batch.watermark >= END_OF_TIME:
        out.extend(segmenter.finish(batch.clock))
    else:
        out.extend(segmenter.advance(batch.watermark, wall_clock_ms() if live else batch.clock))
    return out


_POSITION = struct.Struct(">Q")
_MARSHALLED = b"M"  # a logged batch in ``marshal``'s format follows; a pickled one starts with pickle's b"\\x80"


def logged_batch(batch: ShardBatch) -> bytes:
    """A batch as the shard log holds it: ``marshal`` of its fields (plain tuples, lists, strings, integers and
    None), about a third of what pickling the ``ShardBatch`` cost (184 against 609 ns an event)."""
    return _MARSHALLED + marshal.dumps(tuple(batch))


def batch_from_log(data: bytes) -> ShardBatch:
    """The batch ``logged_batch`` wrote, or one pickled whole (how the log held batches before)."""
    if data[:1] == _MARSHALLED:
        return ShardBatch._make(marshal.loads(memoryview(data)[1:]))
    loaded: ShardBatch = pickle.loads(data)
    return loaded


class SegmentShard(beam.DoFn):
    """Stateful per shard: applies batches in sequence, emits each batch's transitions as one element.

    The shard's state is a log plus snapshots taken a part at a time, so that no
    commit costs the whole shard: pickling a shard of 12,000 users at every
    commit was most of the live path's time, and pickling it even every few
    seconds stalled the live stream for ~120 ms each time.

    - Its users are split into ``PARTS`` parts (``part_of``). The parts are
      snapshotted in turn, one at the end of each *epoch* (``EPOCH_EVENTS``
      events or ``EPOCH_BATCHES`` batches, times 1 to 2 by shard so that shards
      do not all snapshot at once), each after some batch (its *position*,
      counted in batches received) with the reorder buffer as of then.
    - ``parts0`` and ``parts1`` (``SNAPSHOTS``): each epoch appends its part's
      snapshot, behind the epoch's number, to the bag of its *turn* (``PARTS``
      epochs), the even turns to one and the odd to the other. A turn's first
      snapshot clears its bag first: what it held, the turn before last, has
      been superseded part by part by the last turn. So an epoch writes one
      part, never the whole shard, and the latest snapshot of every part is in
      one bag or the other. (One value holding every part's blob, rewritten
      each epoch, cost 10-18 MB a shard per epoch with three minutes of history.)
    - ``log0`` ... ``log32``: a ring of ``BAGS`` bags, each holding
      ``EPOCHS_PER_BAG`` consecutive epochs: every batch received (``logged_batch``)
      behind a random token and its position (a bag starts with a token alone).
      The oldest part snapshot is always ``PARTS`` epochs back, so when a new
      bag is started, the bag after it in the ring holds only batches at or
      before every part's snapshot: it is the one cleared and reused. A plain
      commit appends to one bag: Beam's state cache re-weighs each state it
      commits by walking it (a fixed ~0.4 ms plus ~1 us an entry), and bytes
      are the cheapest thing to walk (local runs weigh a bag of bytes in C:
      ``streaming.options.state_cache_weighed_cheaply``).
    - Rebuilding (``_rebuild``) loads the latest snapshot of every part, takes
      the shard-wide fields and the reorder buffer from the oldest, and replays
      the logged batches after it in order; a part's users are left alone
      (frozen) until the replay passes the batch that part was snapshotted
      after. The segmenter is deterministic, so this reproduces the shard
      exactly; the transitions the replay emits were emitted before and are
      dropped.

    The DoFn keeps each shard's ``ShardState`` in memory beside the token of the
    last entry it logged, and uses it only while the current bag still ends with
    that token (checked at the shard's first batch in a bundle: within a bundle
    no one else writes the key); after a retried bundle, a restart, another
    worker's bundle or a key that moved between workers, it rebuilds. Nothing is
    lost by the cache, since Beam's state is written first; only the work is saved.
    """

    # The state's layout (changing it needs a fresh state). The bag a new one clears must be older than the
    # oldest part, PARTS epochs back: (BAGS - 1) * EPOCHS_PER_BAG >= PARTS.
    PARTS = 256
    EPOCHS_PER_BAG = 8
    BAGS = 33
    SNAPSHOTS = (BagStateSpec("parts0", BytesCoder()), BagStateSpec("parts1", BytesCoder()))
    LOGS = tuple(BagStateSpec(f"log{i}", BytesCoder()) for i in range(BAGS))
    # A whole turn of the parts every ~200,000 events or ~16,000 batches (80 s of live polls) per shard. What a
    # snapshot stalls the stream for is a part's size: with ten minutes of history (120 facts a user, 12,500
    # users a shard) a part of 64 took ~36 ms at the median in bench/stream_live.py and the p99 was 68-97 ms
    # per 10-s window; 256 parts (a quarter of the events an epoch, eight epochs a bag, the same 33 bags and
    # the same turn) take ~9 ms each for the same total, and the windows' p99 fell to 31-60 ms.
    EPOCH_EVENTS = 800
    EPOCH_BATCHES = 64
    TOKEN_BYTES = 16
    HEADER_BYTES = TOKEN_BYTES + _POSITION.size

    def __init__(self, config: StreamConfig, health_url: str | None = None, health_ms: int = 1000) -> None:
        self.config = config
        self.health_url = health_url
        self.health_ms = health_ms

    def setup(self) -> None:
        self.transitions = Metrics.counter(METRICS_NAMESPACE, "transitions")
        self.users = Metrics.gauge(METRICS_NAMESPACE, "users_in_state")
        self.users_per_shard: dict[int, Any] = {}  # shard -> its Beam gauge ``users_in_state_shard<N>``
        self.health: HealthPublisher | None = None
        self.health_client: Any = None
        if self.health_url and self.health_ms:
            from segments.redisstore import connect

            self.health = HealthPublisher("shard", self.health_ms / 1000)
            self.health_client = connect(self.health_url)
        self.rebuilds = Metrics.counter(METRICS_NAMESPACE, "shard_rebuilds")
        self.held: dict[int, tuple[bytes, ShardState]] = {}  # shard -> (its last log token, its state)
        self.checked: set[int] = set()  # shards whose held state was found current in this bundle

    def start_bundle(self) -> None:
        self.checked = set()

    def process(
        self,
        element: tuple[int, ShardBatch],
        parts0: Any = beam.DoFn.StateParam(SNAPSHOTS[0]),
        parts1: Any = beam.DoFn.StateParam(SNAPSHOTS[1]),
        log0: Any = beam.DoFn.StateParam(LOGS[0]),
        log1: Any = beam.DoFn.StateParam(LOGS[1]),
        log2: Any = beam.DoFn.StateParam(LOGS[2]),
        log3: Any = beam.DoFn.StateParam(LOGS[3]),
        log4: Any = beam.DoFn.StateParam(LOGS[4]),
        log5: Any = beam.DoFn.StateParam(LOGS[5]),
        log6: Any = beam.DoFn.StateParam(LOGS[6]),
        log7: Any = beam.DoFn.StateParam(LOGS[7]),
        log8: Any = beam.DoFn.StateParam(LOGS[8]),
        log9: Any = beam.DoFn.StateParam(LOGS[9]),
        log10: Any = beam.DoFn.StateParam(LOGS[10]),
        log11: Any = beam.DoFn.StateParam(LOGS[11]),
        log12: Any = beam.DoFn.StateParam(LOGS[12]),
        log13: Any = beam.DoFn.StateParam(LOGS[13]),
        log14: Any = beam.DoFn.StateParam(LOGS[14]),
        log15: Any = beam.DoFn.StateParam(LOGS[15]),
        log16: Any = beam.DoFn.StateParam(LOGS[16]),
        log17: Any = beam.DoFn.StateParam(LOGS[17]),
        log18: Any = beam.DoFn.StateParam(LOGS[18]),
        log19: Any = beam.DoFn.StateParam(LOGS[19]),
        log20: Any = beam.DoFn.StateParam(LOGS[20]),
        log21: Any = beam.DoFn.StateParam(LOGS[21]),
        log22: Any = beam.DoFn.StateParam(LOGS[22]),
        log23: Any = beam.DoFn.StateParam(LOGS[23]),
        log24: Any = beam.DoFn.StateParam(LOGS[24]),
        log25: Any = beam.DoFn.StateParam(LOGS[25]),
        log26: Any = beam.DoFn.StateParam(LOGS[26]),
        log27: Any = beam.DoFn.StateParam(LOGS[27]),
        log28: Any = beam.DoFn.StateParam(LOGS[28]),
        log29: Any = beam.DoFn.StateParam(LOGS[29]),
        log30: Any = beam.DoFn.StateParam(LOGS[30]),
        log31: Any = beam.DoFn.StateParam(LOGS[31]),
        log32: Any = beam.DoFn.StateParam(LOGS[32]),
    ) -> Iterator[list[Transition]]:
        shard, batch = element
        logs = (
            log0, log1, log2, log3, log4, log5, log6, log7, log8, log9, log10,
            log11, log12, log13, log14, log15, log16, log17, log18, log19, log20, log21,
            log22, log23, log24, log25, log26, log27, log28, log29, log30, log31, log32,
        )  # fmt: skip
        # Taken out while it changes: if applying fails half-way, it is not reused.
        held = self.held.pop(shard, None)
        if held is not None and shard not in self.checked:
            current = logs[self.bag_of(held[1].epoch)]
            if _last(current.read())[: self.TOKEN_BYTES] != held[0]:
                held = None  # someone else committed this key since: the held copy is stale
        snapshot_bags = (parts0, parts1)
        state = held[1] if held is not None else self._rebuild(shard, snapshot_bags, logs)
        self.checked.add(shard)
        out: list[Transition] = []
        for ready in state.ready(batch):
            out.extend(segment_batch(state.segmenter, ready, self.config.live))
        state.received += 1
        state.epoch_events += len(batch.events)
        state.epoch_batches += 1
        token = os.urandom(self.TOKEN_BYTES)
        logs[self.bag_of(state.epoch)].add(
            token + _POSITION.pack(state.received) + logged_batch(batch)
        )
        if out:
            self.transitions.inc(len(out))
            yield out  # on a fused stage the sinks write it now, before any snapshot below
        # Shards receive batches in step; a shard-dependent cadence keeps them from all snapshotting at once.
        stagger = 1 + shard % self.config.shards / self.config.shards
        if state.epoch_events >= self.EPOCH_EVENTS * stagger or state.epoch_batches >= self.EPOCH_BATCHES * stagger:
            token = self._end_epoch(state, snapshot_bags, logs) or token
        self.held[shard] = (token, state)
        self.users.set(len(state.segmenter.users))
        if self.health is not None and self.health.due():
            self._publish_health()

    def _publish_health(self) -> None:
        """Every held shard's state size (``streaming.health``) to the serving store and per-shard Beam gauges."""
        assert self.health is not None
        fields: dict[str, int] = {}
        for shard, (_, state) in self.held.items():
            segmenter = state.segmenter
            users = len(segmenter.users)
            fields[f"state_users_shard{shard}"] = users
            fields[f"state_edges_shard{shard}"] = segmenter.pending_edges
            gauge = self.users_per_shard.get(shard)
            if gauge is None:
                gauge = self.users_per_shard[shard] = Metrics.gauge(METRICS_NAMESPACE, f"users_in_state_shard{shard}")
            gauge.set(users)
        self.health.publish(self.health_client, fields)

    def teardown(self) -> None:
        client = getattr(self, "health_client", None)
        if client is not None:
            client.close()

    @classmethod
    def bag_of(cls, epoch: int) -> int:
        return epoch // cls.EPOCHS_PER_BAG % cls.BAGS

    def _end_epoch(self, state: ShardState, snapshot_bags: tuple[Any, Any], logs: tuple[Any, ...]) -> bytes | None:
        """Snapshot the epoch's part; if the next epoch starts a bag, clear it and mark it (the mark's token)."""
        turn, part = divmod(state.epoch, self.PARTS)
        taken = (state.received, state.next_seq, state.parked, state.segmenter.snapshot_part(part, self.PARTS))
        snapshots = snapshot_bags[turn % 2]  # a turn's snapshots go to one bag, the next turn's to the other
        if part == 0:
            snapshots.clear()  # the turn before last: the last turn snapshotted every part since
        snapshots.add(_POSITION.pack(state.epoch) + pickle.dumps(taken, pickle.HIGHEST_PROTOCOL))
        state.epoch += 1
        state.epoch_events = state.epoch_batches = 0
        if state.epoch % self.EPOCHS_PER_BAG:
            return None  # the next epoch logs on in the same bag
        token = os.urandom(self.TOKEN_BYTES)
        following = logs[self.bag_of(state.epoch)]
        following.clear()  # its batches are all at or before the oldest part's snapshot now
        following.add(token + _POSITION.pack(state.received))
        return token

    def _rebuild(self, shard: int, snapshot_bags: tuple[Any, Any], logs: tuple[Any, ...]) -> ShardState:
        """The shard's state from its part snapshots and the batches logged since (their output dropped)."""
        self.rebuilds.inc()
        parts = self.PARTS
        latest: dict[int, tuple[int, bytes]] = {}  # part -> (the epoch it ended, its snapshot entry)
        for bag in snapshot_bags:
            for entry in bag.read():
                ended = _POSITION.unpack_from(entry)[0]
                part = ended % parts
                if part not in latest or latest[part][0] < ended:
                    latest[part] = (ended, entry)
        epoch = max(ended for ended, _ in latest.values()) + 1 if latest else 0
        taken = [
            pickle.loads(latest[part][1][_POSITION.size :]) if part in latest else None  # our own bytes
            for part in range(parts)
        ]
        positions = [t[0] if t is not None else 0 for t in taken]
        oldest = min(positions)
        base = positions.index(oldest)
        segmenter = segmenter_class(self.config.ruleset).from_parts(
            [t[3] if t is not None else None for t in taken],
            base,
            self.config.ruleset,
            self.config.params,
            prune_phase_ms=PRUNE_EVERY_MS * shard // self.config.shards,  # shards sweep their users in turn
        )
        state = ShardState(segmenter)
        state.epoch, state.received = epoch, oldest
        first = taken[base]
        if first is not None:
            state.next_seq, state.parked = first[1], dict(first[2])
        pending = {part for part, at in enumerate(positions) if at > oldest}
        for part in set(range(parts)) - pending:
            segmenter.thaw(part)
        # The current epoch began where the previous one's part was snapshotted.
        current_start = positions[(epoch - 1) % parts] if epoch else 0
        header, size = self.HEADER_BYTES, self.TOKEN_BYTES
        logged = sorted(
            (_POSITION.unpack_from(entry, size)[0], entry)
            for log in logs
            for entry in log.read()
            if len(entry) > header
        )
        for position, entry in logged:
            if position <= oldest:
                continue
            batch = batch_from_log(entry[header:])  # our own bytes, from Beam state
            for ready in state.ready(batch):
                segment_batch(segmenter, ready, self.config.live)
            state.received = position
            if position > current_start:
                state.epoch_events += len(batch.events)
                state.epoch_batches += 1
            for part in [p for p in pending if positions[p] <= position]:
                segmenter.thaw(part)
                pending.discard(part)
        return state


def _last(entries: Iterable[bytes]) -> bytes:
    """The last of ``entries`` (empty if none): one C-level pass, no copy."""
    tail = deque(entries, maxlen=1)
    return tail[0] if tail else b""


def transitions_from(
    batches: beam.PCollection, config: StreamConfig, health_url: str | None = None, health_ms: int = 1000
) -> beam.PCollection:
    """Keyed shard batches -> lists of transitions (with ``health_url``, the shards publish their health there)."""
    keyed = batches | "ShardKeys" >> beam.Map(_identity).with_output_types(Tuple[int, Any])  # noqa: UP006
    return keyed | "Segment" >> beam.ParDo(SegmentShard(config, health_url, health_ms))


def _identity(element: Any) -> Any:
    """Declares the shard key's type (int), so Beam uses a deterministic key coder for the state."""
    return element


def rejection_json(rejection: Rejection) -> str:
    return rejection.to_json()


def transitions_json(batch: list[Transition]) -> str:
    return "\n".join(t.to_json() for t in batch)
