"""Sink DoFns: Redis ``stream`` namespace, SQL transitions log, SQL dead letters.

Each opens its client in ``setup``, writes each element (already a batch) in one
round trip or transaction, and is idempotent: the Redis value only moves to a
greater (effective_time, revision), SQL rows are keyed so a retried bundle
inserts nothing new. A server that fails is retried with backoff for a bounded
time and reported; if it stays down the bundle fails, so the runner retries it
and nothing read is lost.

A replay's SQL transitions are staged under the replay's run id and published at
once when the pipeline has finished (``segments.sqlstore``: ``begin_transitions``,
``publish_transitions``, called by ``streaming.replay``): a replay that fails
part-way leaves the published transitions of the rule set as they were. The live
stream, which never finishes, appends straight to the published log.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics

from segments.errors import StoreUnavailable
from segments.events import Rejection
from segments.outputs import Transition
from segments.reachstore import ReachStore
from streaming.health import HealthPublisher, quantiles
from streaming.sinkstats import COUNT_AT, SUM_AT, bucket_name

log = logging.getLogger("segshadow.stream")
T = TypeVar("T")
NAMESPACE = "segshadow.stream"


def with_backoff(
    what: str,
    work: Callable[[], T],
    attempts: int = 8,
    base_s: float = 0.1,
    cap_s: float = 5.0,
    retried: Callable[[], None] | None = None,
) -> T:
    """Run ``work``; on ``StoreUnavailable`` wait (doubling up to ``cap_s``) and try again, then give up.

    Every failed attempt is logged with what failed (and reported to ``retried``); the last error is raised.
    """
    delay = base_s
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except StoreUnavailable as exc:
            if attempt == attempts:
                raise
            log.warning("%s failed (attempt %d/%d), retrying in %.1fs: %s", what, attempt, attempts, delay, exc)
            if retried is not None:
                retried()
            time.sleep(delay)
            delay = min(cap_s, delay * 2)
    raise AssertionError("unreachable")


class RedisTransitionsSink(beam.DoFn):
    """Writes each user's latest transition to the Redis ``stream`` namespace.

    Each batch is sent as it comes, without waiting for Redis to answer (it is
    visible as soon as Redis has run it); the answers are collected at the end
    of the bundle, so a bundle succeeds only once all its writes have. A write
    that failed is sent again then, with backoff; the writes are idempotent.

    Measured (for ``segshadow doctor``): ``redis_bundle_ms``, a distribution of
    the time each bundle spent in Redis calls (sends and the drain);
    ``redis_retries``, the failed attempts that were retried; ``redis_failures``,
    the bundles whose writes failed after every retry; and the latency per write
    (``streaming.sinkstats``: a histogram and per-second totals, as counters). ``delay_ms`` (the
    Beam option ``--sink_delay_ms``, a planted fault) holds every bundle that
    wrote something that long before its drain, as a slow Redis would.
    With ``health_ms`` it publishes its health that often (``streaming.health``:
    the bundles' Redis time quantiles and the per-write ones over the interval,
    writes, retries and failures).

    With ``reach`` (the default; ``SEGSHADOW_STREAM_REACH=0`` turns it off) it also
    keeps the stream's segment reach in the
    serving store (``segments.reachstore``: ``PFADD`` of each published user into
    the minute and hour of its transition, per segment of the new set), once per
    bundle in one pipelined round trip after the transitions have drained
    (``reach_adds`` counts the additions). A correction's superseded set stays
    counted: ``PFADD`` cannot take a user out.
    """

    def __init__(
        self, redis_url: str, delay_ms: int = 0, health_ms: int = 0, reach: bool | None = None, per_second: bool = True
    ) -> None:
        self.redis_url = redis_url
        # The per-second totals are two new counter names a second: a replay reads them back (``sinkstats``);
        # a live run does not (its health fields carry the latency), and every bundle reports every name.
        self.per_second = per_second
        self.delay_ms = delay_ms
        self.health_ms = health_ms
        # None: on unless the environment says SEGSHADOW_STREAM_REACH=0 (``bench/sketches.py``'s baseline)
        self.reach_enabled = os.environ.get("SEGSHADOW_STREAM_REACH", "1") != "0" if reach is None else reach

    def setup(self) -> None:
        from segments.redisstore import RedisStore

        self.store = with_backoff("connect to Redis", lambda: RedisStore.open(self.redis_url))
        self.writer = self.store.stream_writer()
        self.reach = ReachStore(self.store.client, prefix=self.store.prefix) if self.reach_enabled else None
        self.reach_entries: list[tuple[str, tuple[str, ...], int]] = []
        self.reach_adds = Metrics.counter(NAMESPACE, "reach_adds")
        self.written = Metrics.counter(NAMESPACE, "redis_writes")
        self.bundle_ms = Metrics.distribution(NAMESPACE, "redis_bundle_ms")
        self.retries = Metrics.counter(NAMESPACE, "redis_retries")
        self.spent = 0.0
        self.health = HealthPublisher("sink", self.health_ms / 1000) if self.health_ms else None
        self.failures = Metrics.counter(NAMESPACE, "redis_failures")
        self.by_name: dict[str, Any] = {}  # the per-write latency counters (``streaming.sinkstats``)
        self.totals = [0, 0, 0]  # writes, retries and failures since setup, for the health fields
        self.recent_ms: list[float] = []  # each bundle's Redis time since the last publish
        self.recent_write_ms: list[float] = []  # each bundle's Redis time per write since the last publish

    def _retried(self) -> None:
        self.retries.inc()
        self.totals[1] += 1

    def process(self, batch: list[Transition]) -> None:
        start = time.perf_counter()
        self.writer.send(batch)
        if self.reach is not None:
            self.reach_entries.extend((t.user_id, t.segments, t.effective_time) for t in batch if t.segments)
        self.spent += time.perf_counter() - start

    def finish_bundle(self) -> None:
        start = time.perf_counter()
        if self.delay_ms and self.spent:
            time.sleep(self.delay_ms / 1000)
        try:
            written = with_backoff("write transitions to Redis", self.writer.drain, retried=self._retried)
        except StoreUnavailable:
            self.failures.inc()  # the bundle fails; the runner retries it
            self.totals[2] += 1
            raise
        if self.reach is not None and self.reach_entries:
            reach, entries = self.reach, self.reach_entries
            added = with_backoff("write reach to Redis", lambda: reach.record("stream", entries), retried=self._retried)
            self.reach_entries = []
            self.reach_adds.inc(added)
        spent, self.spent = self.spent + time.perf_counter() - start, 0.0
        if written:
            self.bundle_ms.update(round(spent * 1000))
            self._per_write(spent * 1e6 / written, written)
        self.written.inc(written)
        if self.health is not None:
            self.totals[0] += written
            if written:
                self.recent_ms.append(spent * 1000)
                self.recent_write_ms.append(spent * 1000 / written)
            if self.health.due():
                marks = quantiles(self.recent_ms)
                fields: dict[str, float] = {"sink_writes": self.totals[0], "sink_retries": self.totals[1],
                          "sink_failures": self.totals[2], "sink_bundles": len(self.recent_ms)}
                fields |= {f"sink_ms_{name}": round(value, 3) for name, value in marks.items()}
                fields |= {f"sink_write_ms_{name}": round(value, 4)
                           for name, value in quantiles(self.recent_write_ms).items()}
                self.recent_ms, self.recent_write_ms = [], []
                self.health.publish(self.store.client, fields)

    def _count(self, name: str, n: int) -> None:
        counter = self.by_name.get(name)
        if counter is None:
            counter = self.by_name[name] = Metrics.counter(NAMESPACE, name)
        counter.inc(n)

    def _per_write(self, per_write_us: float, writes: int) -> None:
        """Each of the bundle's ``writes`` at ``per_write_us``: its histogram bucket and this second's totals."""
        self._count(bucket_name(per_write_us), writes)
        if self.per_second:
            second = int(time.time())
            self._count(f"{SUM_AT}{second}", round(per_write_us * writes))
            self._count(f"{COUNT_AT}{second}", writes)

    def teardown(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class SqlTransitionsSink(beam.DoFn):
    """Appends transitions to the durable SQL log (a row per user, effective time and revision), or
    stages them under ``run_id`` (a replay) until the replay publishes them."""

    def __init__(self, database_url: str, ruleset_ref: str, run_id: str | None = None) -> None:
        self.database_url = database_url
        self.ruleset_ref = ruleset_ref
        self.run_id = run_id

    def setup(self) -> None:
        from segments.sqlstore import SqlStore

        self.store = SqlStore.open(self.database_url)
        self.written = Metrics.counter(NAMESPACE, "sql_transitions")

    def process(self, batch: list[Transition]) -> None:
        self.written.inc(self.store.insert_transitions(batch, self.ruleset_ref, self.run_id))

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


class SqlDeadLetterSink(beam.DoFn):
    """Stores the stream's dead letters (rejected lines and too-late events) in SQL."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def setup(self) -> None:
        from segments.sqlstore import SqlStore

        self.store = SqlStore.open(self.database_url)

    def process(self, batch: list[Rejection]) -> None:
        self.store.insert_dead_letters("stream", batch)

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()


def sink_all(
    transitions: Any,
    dead: Any,
    redis_url: str | None,
    database_url: str | None,
    ruleset_ref: str,
    run_id: str | None = None,
    sink_delay_ms: int = 0,
    health_ms: int = 0,
    reach: bool | None = None,
    per_second: bool = True,
) -> None:
    """Attach the Redis and SQL sinks that are configured (SQL transitions staged under ``run_id``
    when given; ``sink_delay_ms``, ``health_ms``, ``reach``, ``per_second``: see ``RedisTransitionsSink``)."""
    if redis_url:
        sink = RedisTransitionsSink(redis_url, sink_delay_ms, health_ms, reach=reach, per_second=per_second)
        _ = transitions | "ToRedis" >> beam.ParDo(sink)
    if database_url:
        _ = transitions | "ToSQL" >> beam.ParDo(SqlTransitionsSink(database_url, ruleset_ref, run_id))
        _ = (
            dead
            | "BatchDead" >> beam.BatchElements(min_batch_size=100, max_batch_size=5000)
            | "DeadToSQL" >> beam.ParDo(SqlDeadLetterSink(database_url))
        )
