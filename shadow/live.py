"""``shadow run --live``: the real-time path. A producer into dual-write, legacy on its schedule, the stream live.

One run, all in the run directory ``plan.out``:

1. **own the stores**: the events table and the rule set's legacy assignments are
   emptied, the Redis namespaces ``legacy`` and ``stream`` cleared, and the shadow
   log is a fresh Redis Stream ``segshadow:shadow:live:{rule set}:events`` (its
   consumer group goes with it);
2. **stream**: ``segshadow stream live`` in a child process (Beam's runner stays
   out of this process), reading that log through the consumer group
   ``segshadow-shadow-live`` and appending transitions to ``stream.jsonl``
   (and Redis ``stream``, SQL). Producing starts once the group exists: the
   child is reading. The child runs for ``duration + grace``, counted from when
   it builds its pipeline, which is a second or two before it reads;
3. **producer**: the seeded workload's lines in their arrival order, re-timed to
   the wall clock at ``rate`` lines/s for ``duration`` s, in batches every 10 ms.
   A line's ``arrival_time`` is the wall clock when ingest takes it and its
   ``event_time`` that minus the lateness it had in the workload, so late events
   stay late. Valid lines are dual-written (SQL primary on this thread, XADD on
   the dual-writer's); invalid ones go to ``ingest.deadletter.jsonl`` and neither side;
4. **legacy on its schedule**: a thread runs the as-of ``t`` (the multiples of
   ``every`` from the first arrival on) once ingest has committed every event
   with ``arrival_time <= t`` to SQL. Batches are stamped before they are
   written, so "the wall clock passed t" is not enough: a batch stamped just
   before t may still be in flight, and an as-of that missed it would report a
   false defect. Waiting for the ingest frontier costs at most one batch write;
5. **settle, then compare**. Only as-ofs **at or before the stream's final
   watermark** (the largest applied event time minus the max out-of-orderness,
   recomputed with the stream's own ``Gate`` over ``events.jsonl``) are written to
   ``legacy.jsonl`` and compared. Later instants are not settled on the stream
   side when it stops: an expiry is emitted only once the watermark passes it,
   so comparing them would report expiries that are merely not due yet as
   defects. As-ofs the schedule ran beyond that instant stay in SQL and Redis
   but are left out of the comparison and listed in the legacy sidecar
   (``live.unsettled_as_ofs``).

Latency is measured, not modelled:

- **stream** (``stream_latency.txt``, one value per line, given to the
  comparator): for each transition an event caused (``event`` or
  ``correction``), ``emitted_at`` (the child's wall clock when the segmenter
  produced it, just before its sinks write it) minus the ingest time
  (``arrival_time``) of the event that caused it: the user's latest applied
  event that had arrived by ``emitted_at`` and whose event time is at or before
  the effective time. Expiries are caused by the watermark, not an event, and are
  left out;
- **legacy**: the sidecar's ``timing_ms.run_per_as_of`` is, per as-of, the time
  from the instant ``t`` to its snapshot being written (the wait for ingest plus
  the run), so the comparator's legacy freshness (next as-of after arrival plus
  that) is what a reader saw; the pure run times are in ``live.run_ms``;
- **dual-write** (``live.json``): the primary write call per batch, and per event
  the time from ingest until its XADD returned.

**Redis trouble** does not end the run. The dual-writer journals while the
shadow Redis is down and, when the log came back without its entries (a
restart without persistence, a flush), re-seeds it from the SQL events table
(``shadow.dualwrite``); the child recreates its consumer group and reads the log
again, counting what it had applied as duplicates (``streaming.live``); the
legacy schedule's serving-store writes that fail are retried with the next as-of
(SQL holds every as-of; Redis only serves them). ``live.json`` says what
happened under ``counts.recovery``: each re-seed (when the shadow first failed,
when the loss was noticed, where the log ended, events re-sent), each regroup of
the stream and the serving writes that failed; ``counts.stream.admission`` is
the child's own accounting of every line it read (``re_read``: lines read beyond
the events accepted, the re-sent events it had already applied).

A live run needs ``duration`` longer than ``every`` plus the max
out-of-orderness, or no as-of can be settled (``UsageError`` before anything runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import redis

from compare.comparison import run_comparison
from compare.latency import summarize
from compare.manifest import begin, comparison_artifacts, seal
from compare.parity import ParityResult
from legacy_batch.job import AsOfRun, LegacyReport, run_as_of, serving_sink
from legacy_batch.query import build_query
from legacy_batch.schedule import as_of_times
from segments.durations import format_duration_ms
from segments.errors import SegshadowError, StoreUnavailable, UsageError
from segments.events import DEFAULT_TIME_BOUNDS, Event, Rejection, TimeBounds, load_event_log, parse_line, write_jsonl
from segments.lateness import NO_WATERMARK, Gate, GateParams, too_late_ids
from segments.outputs import Transition, file_sha256, meta_path, read_transitions, write_meta
from segments.redisstore import RedisStore
from segments.rules import RuleSet
from segments.sqlstore import SqlStore
from segments.timeutil import Clock, format_ms, wall_clock_ms
from segments.workloads import WORKLOADS, generate
from shadow.dualwrite import Batch, DualWriter
from shadow.journal import Journal
from shadow.targets import RedisStreamShadow, SqlEventsPrimary
from streaming.byo import TransformRef
from streaming.live import source_counts_path

GROUP = "segshadow-shadow-live"
TICK_S = 0.010
STREAM_START_TIMEOUT_S = 180.0
STREAM_EXIT_SLACK_S = 60.0
LATENCY_FILE = "stream_latency.txt"

log = logging.getLogger("segshadow.shadow")


class LiveRunFailed(SegshadowError):
    """The live run could not finish: the stream process failed, or stopped before reading every event."""


@dataclass(frozen=True)
class LivePlan:
    """What a live shadow run does; ``UsageError`` for values that cannot make a comparison."""

    ruleset: RuleSet
    out: Path
    workload: str = "clickstream"
    every_ms: int = 300_000
    params: GateParams = field(default_factory=GateParams)
    shards: int = 4
    rate: int = 1_000
    duration_s: float = 60.0
    seed: int = 1
    grace_s: float = 5.0
    transform: TransformRef | None = None  # the team's Beam transform as the stream (``streaming.byo``)

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise UsageError(f"--workload must be one of {', '.join(WORKLOADS)}, not {self.workload!r}")
        if self.rate < 1:
            raise UsageError("--rate must be at least 1 event per second")
        if self.every_ms <= 0 or self.grace_s < 0 or self.shards < 1:
            raise UsageError("--every and --shards must be positive")
        needed = self.every_ms + self.params.max_out_of_orderness_ms
        if self.duration_s * 1000 <= needed:
            raise UsageError(
                f"--duration {format_duration_ms(round(self.duration_s * 1000))} settles no as-of: a live run must "
                f"last longer than --every plus --max-out-of-orderness ({format_duration_ms(needed)})"
            )

    @property
    def lines(self) -> int:
        """How many workload lines the producer sends (rate x duration)."""
        return max(1, round(self.rate * self.duration_s))


@dataclass(frozen=True)
class LiveReport:
    """What a live run did; ``live.json`` is ``to_dict()``."""

    parity: ParityResult
    counts: dict[str, Any]
    seconds: dict[str, float]
    latency: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "live",
            "counts": self.counts,
            "seconds": self.seconds,
            "latency": self.latency,
            "verdict": self.parity.verdict,
        }


# ---- pure parts ------------------------------------------------------------------------------------


def workload_items(kind: str, lines: int, seed: int) -> list[Event | Rejection]:
    """The first ``lines`` lines of a seeded workload (arrival order), parsed; sized so each user has several.

    The workload is generated with about one user per ten lines over an hour of
    its own time, and regenerated longer until it has ``lines`` lines.
    """
    users = max(10, -(-lines * 13 // 100))
    minutes = 60
    while True:
        generated = list(generate(kind, users=users, minutes=minutes, seed=seed))
        if len(generated) >= lines:
            return [parse_line(text, n) for n, text in enumerate(generated[:lines], start=1)]
        minutes *= 2


def retime(event: Event, arrival_ms: int, seq: int) -> Event:
    """``event`` as ingest takes it at ``arrival_ms``: as late as it was in the workload (arrival minus event time)."""
    lateness = event.arrival_time - event.event_time
    return event._replace(event_time=arrival_ms - lateness, arrival_time=arrival_ms, seq=seq)


def final_watermark(events: Sequence[Event], params: GateParams) -> int:
    """The stream's watermark after admitting ``events`` (arrival order), as its gate computes it."""
    gate = Gate(params)
    for event in events:
        gate.admit(event)
    return gate.watermark


def live_freshness(transitions: Sequence[Transition], applied: Sequence[Event]) -> tuple[list[int], int]:
    """(ms per event-caused transition, how many such transitions had no causing event); see the module doc.

    ``applied`` are the events the stream applied, in arrival order. A transition's
    cause is the user's latest applied event with ``arrival_time <= emitted_at`` and
    ``event_time <= effective_time``; expiries are skipped.
    """
    arrivals: dict[str, list[int]] = {}
    times: dict[str, list[int]] = {}
    for event in applied:
        arrivals.setdefault(event.user_id, []).append(event.arrival_time)
        times.setdefault(event.user_id, []).append(event.event_time)
    values: list[int] = []
    unattributed = 0
    for transition in transitions:
        if transition.cause == "expiry":
            continue
        user_arrivals = arrivals.get(transition.user_id, [])
        user_times = times.get(transition.user_id, [])
        index = bisect_right(user_arrivals, transition.emitted_at) - 1
        while index >= 0 and user_times[index] > transition.effective_time:
            index -= 1
        if index < 0:
            unattributed += 1
        else:
            values.append(transition.emitted_at - user_arrivals[index])
    return values, unattributed


def settled(as_ofs: Sequence[int], watermark: int) -> tuple[list[int], list[int]]:
    """(as-ofs at or before ``watermark``, the later ones)."""
    return [t for t in as_ofs if t <= watermark], [t for t in as_ofs if t > watermark]


def summary(values: Sequence[float], source: str) -> dict[str, Any]:
    """p50/p95/p99/max and count of ``values`` (ms), by the comparator's one function (``summarize``)."""
    return summarize(list(values), source).to_dict()


# ---- what the producer and the legacy schedule share -----------------------------------------------


class Frontier:
    """How far ingest has committed to the primary, shared by the producer and the legacy schedule.

    ``through``: every event with ``arrival_time <= through`` is in the primary
    store; ``first``: the first arrival. After ``close(limit)`` nothing arrives any
    more and the schedule runs the as-ofs still due up to ``limit``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.first: int | None = None
        self.through = NO_WATERMARK
        self.limit: int | None = None

    def advance(self, through: int, first: int | None = None) -> None:
        with self._cond:
            if self.first is None and first is not None:
                self.first = first
            self.through = max(self.through, through)
            self._cond.notify_all()

    def close(self, limit: int) -> None:
        with self._cond:
            self.limit = limit
            self._cond.notify_all()

    def wait_first(self) -> int | None:
        """The first arrival, once there is one; None when ingest closed without any."""
        with self._cond:
            self._cond.wait_for(lambda: self.first is not None or self.limit is not None)
            return self.first

    def wait_for(self, t: int) -> bool:
        """Wait until as-of ``t`` may run; False when it never will (ingest closed and ``t`` is past the limit)."""
        with self._cond:
            self._cond.wait_for(lambda: self.through >= t or self.limit is not None)
            return self.limit is None or t <= self.limit


@dataclass(frozen=True)
class LiveAsOf:
    """One as-of run on schedule: the run, and how long after ``t`` its snapshot was written (ms)."""

    run: AsOfRun
    visible_ms: float


class ServingSink:
    """The legacy schedule's serving-store writes; a failed one (Redis down) is kept and retried, never fatal.

    SQL holds every as-of; the Redis ``legacy`` namespace only serves the latest, so
    after a failure only the newest snapshot is pending: the next as-of's write (or
    ``retry``) replaces it.
    """

    def __init__(self, serving: RedisStore) -> None:
        # Each as-of's members also go into the legacy reach; a retried snapshot re-adds them (PFADD is idempotent).
        self.inner = serving_sink(serving)
        self.failures = 0
        self.pending: tuple[int, Sequence[tuple[str, frozenset[str]]]] | None = None

    def write_assignments(self, as_of: int, rows: Sequence[tuple[str, frozenset[str]]]) -> object:
        try:
            written = self.inner.write_assignments(as_of, rows)
        except StoreUnavailable as exc:
            self.failures += 1
            self.pending = (as_of, rows)
            log.warning("legacy as-of %s is in SQL but not yet in the serving store: %s", format_ms(as_of), exc)
            return 0
        self.pending = None
        return written

    def retry(self) -> None:
        """Write the pending snapshot, if any, once more."""
        if self.pending is not None:
            self.write_assignments(*self.pending)


class LegacySchedule(threading.Thread):
    """Runs each as-of when ingest has committed everything that arrived by it (see ``Frontier``)."""

    def __init__(
        self, ruleset: RuleSet, every_ms: int, database_url: str, redis_url: str, frontier: Frontier, clock: Clock
    ) -> None:
        super().__init__(name="segshadow-legacy-schedule", daemon=True)
        self.ruleset = ruleset
        self.every_ms = every_ms
        self.database_url = database_url
        self.redis_url = redis_url
        self.frontier = frontier
        self.clock = clock
        self.runs: list[LiveAsOf] = []
        self.error: BaseException | None = None
        self.serving_failures = 0
        self.serving_pending: int | None = None  # an as-of the serving store still misses at the end

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # re-raised on the caller's thread by ``join_checked``
            self.error = exc

    def _run(self) -> None:
        query = build_query(self.ruleset)
        with SqlStore.open(self.database_url) as store, RedisStore.open(self.redis_url) as serving:
            sink = ServingSink(serving)
            try:
                first = self.frontier.wait_first()
                if first is None:
                    return
                t = as_of_times(first, first, self.every_ms)[0]
                while self.frontier.wait_for(t):
                    result = run_as_of(store, query, t, sink, self.clock)
                    self.runs.append(LiveAsOf(result, float(self.clock() - t)))
                    t += self.every_ms
                sink.retry()
            finally:
                self.serving_failures = sink.failures
                self.serving_pending = sink.pending[0] if sink.pending is not None else None

    def join_checked(self) -> list[LiveAsOf]:
        self.join()
        if self.error is not None:
            raise self.error
        return self.runs


class TimedShadow:
    """A ``Shadow`` that records when each batch's write returned (wall ms), by its range of sequence numbers."""

    def __init__(self, inner: RedisStreamShadow, clock: Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.spans: list[tuple[int, int, int]] = []  # (first seq, last seq, wall ms when written)

    def write(self, batch: Batch) -> None:
        self.inner.write(batch)
        if len(batch):
            self.spans.append((batch.after_seq + 1, batch.after_seq + len(batch), self.clock()))

    def healthy(self) -> bool:
        return self.inner.healthy()

    def reseed(self, batches: Sequence[Batch], end: tuple[int, int]) -> None:
        self.inner.reseed(batches, end)

    def verify(self, end: tuple[int, int]) -> None:
        self.inner.verify(end)

    def reached(self) -> dict[int, int]:
        """Sequence number -> when it first reached the shadow (a replayed entry keeps its first success)."""
        out: dict[int, int] = {}
        for first, last, at in self.spans:
            for seq in range(first, last + 1):
                out.setdefault(seq, at)
        return out


# ---- the stream's child process ------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: the kernel SIGKILLs it when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG


class StreamProcess:
    """``segshadow stream live`` in a child process; its output goes to ``stream.log``.

    The child dies with this process, even when this one is SIGKILLed (on Linux):
    an orphan would go on reading the next run's log into the same stores.
    """

    def __init__(self, command: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 -- closed in ``close``
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def check(self) -> None:
        """Raise ``LiveRunFailed`` if the child has already exited."""
        code = self.process.poll()
        if code is not None:
            raise LiveRunFailed(f"the live stream process exited early (code {code}): {self.tail()}")

    def wait_reading(self, client: redis.Redis, stream_key: str, group: str, timeout_s: float) -> float:
        """Wait until the child's consumer group exists (it has started reading); returns seconds waited."""
        start = time.perf_counter()
        while True:
            self.check()
            with contextlib.suppress(redis.ResponseError):
                if any(_text(g["name"]) == group for g in client.xinfo_groups(stream_key)):
                    return time.perf_counter() - start
            if time.perf_counter() - start > timeout_s:
                self.stop()
                raise LiveRunFailed(f"the live stream did not start reading within {timeout_s:.0f} s: {self.tail()}")
            time.sleep(0.05)

    def wait(self, timeout_s: float) -> None:
        """Wait for the child to finish its ``--duration``; ``LiveRunFailed`` when it fails or overruns."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LiveRunFailed(f"the live stream did not stop within {timeout_s:.0f} s: {self.tail()}") from None
        if code != 0:
            raise LiveRunFailed(f"the live stream process failed (code {code}): {self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 3) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or f"no output (see {self.log_path})"

    def close(self) -> None:
        self.stop()
        self._log.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_command(
    plan: LivePlan, stream_key: str, duration_ms: int, out: Path, database_url: str, redis_url: str,
    beam_args: Sequence[str],
) -> list[str]:
    """The child's command line: the same interpreter running ``segshadow stream live``."""
    params = plan.params
    command = [
        sys.executable, "-m", "segshadow.cli", "stream", "live",
        "--rules", plan.ruleset.ref,
        "--stream-key", stream_key,
        "--group", GROUP,
        "--shards", str(plan.shards),
        "--max-out-of-orderness", format_duration_ms(params.max_out_of_orderness_ms),
        "--allowed-lateness", format_duration_ms(params.allowed_lateness_ms),
        "--duration", format_duration_ms(duration_ms),
        "--out", str(out),
        "--database-url", database_url,
        "--redis-url", redis_url,
    ]  # fmt: skip
    if plan.transform is not None:
        command += ["--transform", plan.transform.ref]
    return command + (["--", *beam_args] if beam_args else [])


def drained(client: redis.Redis, stream_key: str, group: str) -> tuple[bool, int, int]:
    """(the group read and acknowledged every entry, lines in the log, lines delivered to the group).

    Lines are counted by the entries' ids (``streaming.eventlog``: the dual-writer's ids count lines)."""
    from streaming.eventlog import position

    if int(client.xlen(stream_key)) == 0:
        return True, 0, 0
    # The last entry's id: after a re-seed the log's last-generated id may lie past every entry.
    newest: Any = client.xrevrange(stream_key, count=1)
    last = _text(newest[0][0])
    logged = position(last)[1]
    for info in client.xinfo_groups(stream_key):
        if _text(info["name"]) == group:
            delivered = _text(info["last-delivered-id"])
            read = position(delivered)[1]
            return delivered == last and int(info["pending"]) == 0, logged, read
    return False, logged, 0


# ---- the producer ----------------------------------------------------------------------------------------


@dataclass
class Ingested:
    """What the producer sent: accepted events (re-timed, arrival order) and their lines, rejections, timings."""

    events: list[Event] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    primary_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0


def produce(
    writer: DualWriter,
    items: Sequence[Event | Rejection],
    rate: float,
    duration_s: float,
    frontier: Frontier,
    watch: Callable[[], None] = lambda: None,
    clock: Clock = wall_clock_ms,
    timer: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    tick_s: float = TICK_S,
    watch_every_s: float = 0.5,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> Ingested:
    """Send ``items`` at ``rate`` per second for ``duration_s`` seconds, one batch per tick.

    Each batch is stamped with the wall clock (never going back) when ingest takes
    it, then dual-written; ``frontier`` moves to just before the stamp, since every
    earlier batch is committed by then. ``watch`` is called every ``watch_every_s``
    between batches (it raises to abort). Stops at ``duration_s`` even if the primary fell behind.
    An event whose re-timed times are outside ``bounds`` (the rule set's) is rejected
    ``time_out_of_range`` like a bad line, so neither side sees it.
    """
    got = Ingested()
    start = timer()
    sent = 0
    stamp = NO_WATERMARK
    ticks = 0
    watched = start
    while sent < len(items):
        elapsed = timer() - start
        if elapsed >= duration_s:
            break
        due = min(len(items), int(elapsed * rate) + 1)
        stamp = max(stamp, clock())
        frontier.advance(stamp - 1)
        if due > sent:
            events: list[Event] = []
            lines: list[str] = []
            for item in items[sent:due]:
                if type(item) is Event:
                    event = retime(item, stamp, len(got.events) + len(events) + 1)
                    problem = bounds.problem(event.event_time, event.arrival_time)
                    if problem is not None:
                        raw = event.to_json()
                        got.rejected.append(
                            Rejection("time_out_of_range", problem, item.seq, raw, event.event_id, event.user_id)
                        )
                        continue
                    events.append(event)
                    lines.append(event.to_json())
                else:
                    got.rejected.append(item)  # type: ignore[arg-type]
            writer.reject(due - sent - len(events))
            if events:
                began = timer()
                writer.write(events, lines)
                got.primary_ms.append((timer() - began) * 1000)
                if not got.events:
                    frontier.advance(stamp - 1, first=stamp)
                got.batch_sizes.append(len(events))
                got.events.extend(events)
                got.lines.extend(lines)
            sent = due
        ticks += 1
        if timer() - watched >= watch_every_s:
            watched = timer()
            watch()
        sleep(max(0.0, start + ticks * tick_s - timer()))
    got.seconds = timer() - start
    return got


# ---- the run ------------------------------------------------------------------------------------------------


def _percent(part: float, whole: float) -> float:
    return round(100 * part / whole, 2) if whole else 0.0


def live_stream_key(ruleset_name: str) -> str:
    """The shadow log a live run of ``ruleset_name`` writes (and its status line reads)."""
    return f"segshadow:shadow:live:{ruleset_name}:events"


def run_live(
    plan: LivePlan,
    database_url: str,
    redis_url: str,
    beam_args: Sequence[str] = (),
    clock: Clock = wall_clock_ms,
) -> LiveReport:
    """The whole live shadow run (see the module doc); writes every output into ``plan.out``.

    Raises ``LiveRunFailed`` when the stream process fails or stops before it has
    read every event, ``StoreUnavailable`` when a store cannot be reached, and
    ``SegshadowError`` subclasses for inputs that cannot be compared.
    """
    out = plan.out
    begin(out)  # sealed last (``compare.manifest``); until then the directory says it is incomplete
    paths = {name: out / name for name in ("events.jsonl", "legacy.jsonl", "stream.jsonl", "journal.jsonl")}
    olds = (*paths.values(), *(meta_path(p) for p in paths.values()), out / LATENCY_FILE)
    for path in (*olds, source_counts_path(paths["stream.jsonl"])):
        path.unlink(missing_ok=True)  # a run owns its directory: nothing from an earlier run may vouch for it
    items = workload_items(plan.workload, plan.lines, plan.seed)
    stream_key = live_stream_key(plan.ruleset.name)
    seconds: dict[str, float] = {}

    with SqlStore.open(database_url) as store, RedisStore.open(redis_url) as serving:
        store.register_ruleset(plan.ruleset)
        store.clear_events()
        store.clear_legacy(plan.ruleset.ref)
        serving.clear_side("legacy")
        serving.clear_side("stream")
        target = RedisStreamShadow(redis_url, stream_key)
        target.reset()
        stream_ms = round((plan.duration_s + plan.grace_s) * 1000)
        command = stream_command(
            plan, stream_key, stream_ms, paths["stream.jsonl"], database_url, redis_url, beam_args
        )
        child = StreamProcess(command, out / "stream.log")
        frontier = Frontier()
        schedule = LegacySchedule(plan.ruleset, plan.every_ms, database_url, redis_url, frontier, clock)
        timed = TimedShadow(target, clock)
        ingested = Ingested()

        def watch() -> None:
            child.check()
            if schedule.error is not None:
                raise schedule.error

        try:
            waited = child.wait_reading(target.client, stream_key, GROUP, STREAM_START_TIMEOUT_S)
            seconds["stream_start"] = round(waited, 3)
            started = time.perf_counter()
            writer = DualWriter(SqlEventsPrimary(store), timed, Journal(paths["journal.jsonl"]))
            schedule.start()
            try:
                ingested = produce(
                    writer, items, plan.rate, plan.duration_s, frontier, watch, clock,
                    bounds=plan.ruleset.time_bounds,
                )
            finally:
                writer.close()
                frontier.close(final_watermark(ingested.events, plan.params))
            seconds["produce"] = round(ingested.seconds, 3)
            runs = schedule.join_checked()
            child.wait(plan.grace_s + plan.duration_s + STREAM_EXIT_SLACK_S)
            seconds["live"] = round(time.perf_counter() - started, 3)
            complete, logged, read = drained(target.client, stream_key, GROUP)
            if not complete:
                raise LiveRunFailed(
                    f"the live stream stopped after reading {read} of {logged} events; give it more time "
                    f"(grace {plan.grace_s:g} s after the producer stops)"
                )
            if writer.journal.pending:
                raise LiveRunFailed(f"{writer.journal.pending} events stayed journaled: the shadow Redis stayed down")
        finally:
            child.close()
            target.close()
        store.insert_dead_letters("ingest", ingested.rejected)
        backend = store.backend
    if not ingested.events:
        raise LiveRunFailed("the producer sent no valid event")

    start = time.perf_counter()
    events_path = paths["events.jsonl"]
    write_jsonl(events_path, ingested.lines)
    write_jsonl(out / "ingest.deadletter.jsonl", (r.to_json() for r in ingested.rejected))
    log = load_event_log(events_path, plan.ruleset.time_bounds)
    watermark = final_watermark(log.events, plan.params)
    compared, unsettled = settled([r.run.as_of for r in runs], watermark)
    if not compared:
        raise LiveRunFailed("no legacy as-of is settled on the stream side: run longer or with a shorter --every")
    kept = runs[: len(compared)]
    legacy = _write_legacy(plan, events_path, log.counts, kept, unsettled, paths["legacy.jsonl"], backend)
    transitions = read_transitions(paths["stream.jsonl"])
    _write_stream_meta(plan, paths["stream.jsonl"], events_path, stream_key, len(transitions), watermark, beam_args)
    too_late = too_late_ids(log.events, plan.params)
    values, unattributed = live_freshness(transitions, [e for e in log.events if e.event_id not in too_late])
    (out / LATENCY_FILE).write_text("".join(f"{v}\n" for v in values), encoding="utf-8")
    seconds["write"] = round(time.perf_counter() - start, 3)

    start = time.perf_counter()
    parity = run_comparison(
        events_path,
        paths["legacy.jsonl"],
        paths["stream.jsonl"],
        plan.ruleset,
        plan.every_ms,
        plan.params,
        out,
        stream_latency=out / LATENCY_FILE,
        event_log=log,
        seal_outputs=False,
    )
    seconds["compare"] = round(time.perf_counter() - start, 3)

    counts = _counts(plan, ingested, writer, legacy, runs, unsettled, transitions, unattributed)
    counts["stream"].update(_admission(source_counts_path(paths["stream.jsonl"]), len(ingested.events)))
    counts["recovery"] = _recovery(writer, counts["stream"], schedule)
    reached = timed.reached()
    shadow_lag = [
        reached[seq] - event.arrival_time for seq, event in enumerate(ingested.events, start=1) if seq in reached
    ]
    latency = {
        "primary_write_ms": summary(ingested.primary_ms, "per batch write call"),
        "shadow_xadd_after_ingest_ms": summary(shadow_lag, "per event"),
        # The comparator's figure from the same samples (``compare.latency.summarize``), not a second one.
        "stream_emitted_after_ingest_ms": parity.latency["stream"].to_dict(),
        "legacy_visible_after_as_of_ms": summary([r.visible_ms for r in kept], "per compared as-of"),
    }
    report = LiveReport(parity, counts, seconds, latency)
    (out / "live.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    artifacts = comparison_artifacts(
        out, events_path, paths["legacy.jsonl"], paths["stream.jsonl"], stream_latency=out / LATENCY_FILE
    )
    seal(out, parity, {**artifacts, "live": out / "live.json"})
    return report


def _write_legacy(
    plan: LivePlan,
    events_path: Path,
    counts: dict[str, int],
    runs: list[LiveAsOf],
    unsettled: list[int],
    path: Path,
    backend: str,
) -> LegacyReport:
    """``legacy.jsonl`` and its sidecar: the compared as-ofs, listed, with their live timings."""
    written = write_jsonl(path, (a.to_json() for r in runs for a in r.run.assignments))
    report = LegacyReport(
        plan.ruleset,
        str(events_path),
        file_sha256(events_path),
        plan.every_ms,
        backend,
        tuple(r.run.as_of for r in runs),
        written,
        counts,
        0.0,
        0.0,
        tuple(r.run.query_ms for r in runs),
        tuple(r.visible_ms for r in runs),
    )
    live = {
        "run_per_as_of_is": "from the as-of instant to its snapshot written (wait for ingest + run)",
        "run_ms": [round(r.run.duration_ms, 3) for r in runs],
        "unsettled_as_ofs": unsettled,
    }
    write_meta(path, {**report.meta(), "as_of_times": list(report.as_ofs), "live": live})
    return report


def _write_stream_meta(
    plan: LivePlan,
    path: Path,
    events_path: Path,
    stream_key: str,
    transitions: int,
    watermark: int,
    beam_args: Sequence[str],
) -> None:
    ruleset = plan.ruleset
    write_meta(
        path,
        {
            "side": "stream",
            "live": True,
            "ruleset": {"name": ruleset.name, "version": ruleset.version, "digest": ruleset.digest}
            if plan.transform is None
            else plan.transform.sidecar_ruleset(ruleset),
            "events_path": str(events_path),
            "events_sha256": file_sha256(events_path),
            "source": f"redis-stream:{stream_key} (live, group {GROUP})",
            "max_out_of_orderness_ms": plan.params.max_out_of_orderness_ms,
            "allowed_lateness_ms": plan.params.allowed_lateness_ms,
            "shards": plan.shards,
            "beam_args": list(beam_args),
            "final_watermark": watermark,
            "counts": {"transitions": transitions},
        },
    )


def _admission(path: Path, accepted: int) -> dict[str, Any]:
    """The child's own accounting (``streaming.live``): every line it read, and how many beyond the accepted."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"admission": None, "re_read": None}
    regroups = found.pop("regroups", [])
    return {"admission": found, "re_read": int(found["lines"]) - accepted, "regroups": regroups}


def _recovery(writer: DualWriter, stream: dict[str, Any], schedule: LegacySchedule) -> dict[str, Any]:
    """What the run survived: log re-seeds, stream regroups and failed serving writes (module doc)."""

    def stamp(ms: int | None) -> str | None:
        return None if ms is None else format_ms(ms)

    reseeds = [
        {**r.to_dict(), "noticed_at": stamp(r.noticed_at_ms), "down_since": stamp(r.down_since_ms)}
        for r in writer.reseeds
    ]
    regroups = [{**g, "at": stamp(g["at_ms"])} for g in stream.get("regroups", [])]
    return {
        "reseeds": reseeds,
        "resent": writer.counts.resent,
        "stream_regroups": regroups,
        "serving_write_failures": schedule.serving_failures,
        "serving_pending_as_of": schedule.serving_pending,
    }


def _counts(
    plan: LivePlan,
    ingested: Ingested,
    writer: DualWriter,
    legacy: LegacyReport,
    runs: list[LiveAsOf],
    unsettled: list[int],
    transitions: list[Transition],
    unattributed: int,
) -> dict[str, Any]:
    sent = len(ingested.events) + len(ingested.rejected)
    return {
        "ingest": {
            "requested": plan.lines,
            "sent": sent,
            "rate_requested": plan.rate,
            "rate_achieved": round(sent / ingested.seconds, 1) if ingested.seconds else 0.0,
            "rate_achieved_pct": _percent(sent / ingested.seconds if ingested.seconds else 0.0, plan.rate),
            "batches": len(ingested.batch_sizes),
            "accepted": len(ingested.events),
            **writer.counts.as_dict(),
        },
        "legacy": {
            "as_ofs_run": len(runs),
            "as_ofs_compared": len(legacy.as_ofs),
            "as_ofs_unsettled": len(unsettled),
            "assignments": legacy.assignments,
        },
        "stream": {
            "transitions": len(transitions),
            "expiries": sum(1 for t in transitions if t.cause == "expiry"),
            "latency_unattributed": unattributed,
        },
    }
