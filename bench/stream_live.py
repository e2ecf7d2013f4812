"""Benchmark: live latency, XADD to the user's segments visible in Redis, at a fixed rate.

    .venv/bin/python bench/stream_live.py [--rate 10000] [--duration 60] [--warmup 10] [--users 50000]
                                          [--shards 4] [--sample 100] [--poll 5ms] [--history-minutes 0]

A producer XADDs events to the Redis Stream at ``--rate`` events/s for
``--warmup`` s and then the measured ``--duration`` s, while ``segshadow stream
live`` runs in its own process. The
``--users`` users take turns, each alternating purchases and refunds of 150, so
with nothing in the window before them their events flip ``high_value`` every
time. One event in ``--sample`` is instead the first purchase of a user of its
own, which changes that user's set for certain: with a full window an event of
a steady user need not (a purchase leaving the window can cancel it), and then
nothing new becomes visible to wait for. From its XADD on, a sampler polls the
sampled user's key (all outstanding samples in one pipelined round trip every
half millisecond) until the stored effective time reaches the event's, and
records the delay (KLL sketch: p50, p99, max). Being in the same batches as the
rest, a sampled event waits for whatever they cost. The consumer group's lag
is sampled every 5 s to show whether a backlog grows. Redis is
``SEGSHADOW_REDIS_URL`` or an embedded Valkey.

The producer and the sampler share the machine's two cores with the pipeline
under test, so both write their commands as raw RESP on one connection each
(``resp_command``) and read the replies with hiredis: through redis-py's pipeline
objects they took about 70% of a core between them (28 us of CPU per XADD, and
0.23 ms per sampler round), now about 5 us per XADD and 0.05 ms per round.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from datasketches import kll_floats_sketch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segments.embedded import redis_endpoint
from segments.redisstore import resp_command, user_key
from streaming.admission import shard_of
from streaming.live import EVENTS_STREAM, FIELD


def wait_for_consumer(client: redis.Redis, stream: subprocess.Popen, log: Any, timeout_s: float = 60.0) -> None:
    """Until the live pipeline has rebuilt from the log and moved its group's cursor to the last entry.

    (Not "until the group has a consumer": Redis 7.0 creates the consumer only
    when XREADGROUP returns entries, and nothing is produced before this returns.)
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stream.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the live pipeline exited ({stream.returncode}):\n{log.read()[-2000:]}")
        try:
            groups = client.xinfo_groups(EVENTS_STREAM)
            last = client.xinfo_stream(EVENTS_STREAM)["last-generated-id"]
            if groups and groups[0].get("last-delivered-id") == last:
                return
        except redis.ResponseError:
            pass
        time.sleep(0.2)
    raise SystemExit("the live pipeline did not start reading in time")


def sampler(
    url: str, jobs: queue.Queue, sketch: kll_floats_sketch, misses: list[int], timeline: list[tuple[float, float]]
) -> None:
    """Follows every sampled event at once: each round, one pipelined HGET per outstanding user.

    (Two threads each following one event at a time queued new samples behind
    slow ones, and a sample that waited in the queue counted the wait as
    latency; here nothing waits, and a round costs one round trip however many
    samples are outstanding.)
    """
    conn = redis.Redis.from_url(url).connection_pool.get_connection()
    outstanding: list[tuple[bytes, int, float]] = []  # (HGET command, event time, sent)
    stopping = False
    while outstanding or not stopping:
        while not stopping:
            try:
                job = jobs.get(block=not outstanding)
            except queue.Empty:
                break
            if job is None:
                stopping = True
            else:
                user, event_time, sent = job
                command = resp_command(b"HGET", user_key("stream", user).encode(), b"time")
                outstanding.append((command, event_time, sent))
        if not outstanding:
            continue
        conn.send_packed_command([b"".join(command for command, _, _ in outstanding)], check_health=False)
        stored = [conn.read_response() for _ in outstanding]
        now = time.perf_counter()
        waiting = []
        for (command, event_time, sent), value in zip(outstanding, stored, strict=True):
            if value is not None and int(value) >= event_time:
                sketch.update((now - sent) * 1000)
                timeline.append((sent, (now - sent) * 1000))
            elif now - sent > 5.0:
                misses[0] += 1
            else:
                waiting.append((command, event_time, sent))
        outstanding = waiting
        time.sleep(0.0005)


def windows(timeline: list[tuple[float, float]], start: float, width: float) -> list[tuple[float, float, float]]:
    """(window end in s, p99, max) of the samples sent in each ``width``-second window: shows whether the tail
    is spread over the run or comes from a few stalls, and whether it grows."""
    out = []
    ends = sorted({int((sent - start) // width) for sent, _ in timeline})
    for index in ends:
        values = sorted(ms for sent, ms in timeline if int((sent - start) // width) == index)
        out.append(((index + 1) * width, round(values[int(0.99 * (len(values) - 1))], 1), round(values[-1], 1)))
    return out


def rss_mb(pid: int) -> int:
    """Resident memory of process ``pid`` in MB (Linux), -1 if unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return -1


def event_line(event_id: str, user_id: str, event_time: int, kind: str) -> str:
    """An event of the benchmark: every one is a purchase or a refund of 150."""
    return (
        f'{{"event_id": "{event_id}", "user_id": "{user_id}", "event_time": {event_time}, "kind": "{kind}", '
        f'"amount": "150"}}'
    )


def steady_kind(counts: list[int], user: int) -> str:
    """The next event of one of the ``--users`` users: purchases and refunds alternate (counted in ``counts``)."""
    kind = "purchase" if counts[user] % 2 == 0 else "refund"
    counts[user] += 1
    return kind


def xadd_all(connection: Any, lines: list[str]) -> None:
    """XADD ``lines`` to the events stream in one write of raw RESP, then read every reply."""
    key, field = EVENTS_STREAM.encode(), FIELD.encode()
    connection.send_packed_command(
        [b"".join(resp_command(b"XADD", key, b"*", field, line.encode()) for line in lines)], check_health=False
    )
    for _ in lines:
        connection.read_response()


def fill_history(client: redis.Redis, rate: int, users: int, minutes: float, counts: list[int]) -> int:
    """XADD ``minutes`` of events at ``rate`` ending now (event times spread evenly), in the live run's pattern
    (users in turn, each alternating purchase and refund); returns how many."""
    total = int(minutes * 60 * rate)
    if not total:
        return 0
    connection = client.connection_pool.get_connection()
    first_ms = int(time.time() * 1000) - int(minutes * 60_000)
    for begin in range(0, total, 2_000):
        xadd_all(
            connection,
            [
                event_line(f"h{n}", f"u{n % users}", first_ms + n * 1000 // rate, steady_kind(counts, n % users))
                for n in range(begin, min(total, begin + 2_000))
            ],
        )
    client.connection_pool.release(connection)
    return total


def wait_until_live(client: redis.Redis, shards: int, timeout_s: float) -> None:
    """Until the pipeline is past its start-up: two rounds of probe events, one per shard, each visible.

    The first round, written after the history, is visible once every shard
    has applied the history; its batches also carry the watermark from the
    history's last event time to now, and the expiries of that gap (with ten
    minutes of history and a two-minute rebuild, about a million transitions)
    may still be going to Redis. The second round is read after that bundle has
    ended. (Waiting for the last history event alone put the end of start-up
    into the measured run: the first live poll came ~0.5 s late with three
    minutes of history, ~3 s with ten.) Start-up is reported as
    ``startup_with_rebuild_s``; the run measures the steady state after it.
    """
    probes: dict[int, str] = {}
    n = 0
    while len(probes) < shards:
        user = f"probe{n}"
        probes.setdefault(shard_of(user, shards), user)
        n += 1
    deadline = time.monotonic() + timeout_s
    for kind in ("purchase", "refund"):  # each makes a transition: into high_value, then out of it
        now = int(time.time() * 1000)
        for user in probes.values():
            client.xadd(EVENTS_STREAM, {FIELD: event_line(f"{user}-{kind}", user, now, kind)})
        while True:
            seen = [client.hget(user_key("stream", user), "time") for user in probes.values()]
            if all(stored is not None and int(stored) >= now for stored in seen):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the live pipeline did not catch up with the history in time")
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="seconds of the same load before the measured run, unsampled (after a rebuild from history, the "
        "watermark first catches up with the wall clock and fires the expiries of the gap)",
    )
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--poll", default="5ms")
    parser.add_argument(
        "--history-minutes",
        type=float,
        default=0.0,
        help="first fill the log with this many minutes of events at --rate (the pipeline rebuilds from it), "
        "so the run measures a shard holding that much history per user instead of an empty one",
    )
    parser.add_argument(
        "--timeline", help="also write every sample as a JSON line [wall clock s when sent, latency ms] to this file"
    )
    args = parser.parse_args()

    with (
        redis_endpoint(os.environ.get("SEGSHADOW_REDIS_URL") or "embedded") as url,
        tempfile.TemporaryFile(mode="w+") as log,
    ):
        client = redis.Redis.from_url(url)
        client.delete(EVENTS_STREAM)
        for side in ("stream",):
            for key in client.scan_iter(f"segshadow:{side}:*", count=10_000):
                client.delete(key)
        counts = [0] * args.users
        history = fill_history(client, args.rate, args.users, args.history_minutes, counts)
        allowance = 60 + 120 * args.history_minutes  # for the rebuild from the log, before the measured run
        started = time.perf_counter()
        stream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "segshadow.cli",
                "stream",
                "live",
                "--rules",
                "clickstream",
                "--redis-url",
                url,
                "--no-sql",
                "--shards",
                str(args.shards),
                "--poll",
                args.poll,
                "--duration",
                f"{int(args.warmup + args.duration + 2 * allowance)}s",  # both waits below may take an allowance
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,  # a file, not a pipe: nobody reads a pipe while it runs, and a full one blocks it
        )
        try:
            client.xadd(EVENTS_STREAM, {FIELD: "{}"})  # makes the stream exist; rejected as bad input
            wait_for_consumer(client, stream, log, timeout_s=allowance)
            wait_until_live(client, args.shards, allowance)
            rebuild_s = time.perf_counter() - started
            sketch = kll_floats_sketch(400)
            misses = [0]
            jobs: queue.Queue = queue.Queue()
            timeline: list[tuple[float, float]] = []  # (sent, latency ms) of every sample
            threads = [threading.Thread(target=sampler, args=(url, jobs, sketch, misses, timeline))]
            for t in threads:
                t.start()
            lag: list[tuple[float, int]] = []
            rss: list[tuple[float, int]] = []  # the pipeline process's resident memory, MB
            tick = 0.005
            per_tick = max(1, round(args.rate * tick))
            producer = client.connection_pool.get_connection()
            start = time.perf_counter()
            base_ms = int(time.time() * 1000)
            produced = 0
            regular = 0  # events of the --users users: they keep their turns whatever is sampled
            measured_from = start + args.warmup  # before it the same load runs, unsampled
            measured_events = 0
            next_lag = measured_from + 5
            while True:
                now = time.perf_counter()
                elapsed = now - start
                if elapsed >= args.warmup + args.duration:
                    break
                due = int(elapsed * args.rate) - produced
                if due <= 0:
                    time.sleep(max(0.0, tick - (now - start - elapsed)))
                    continue
                lines = []
                batch = []
                wall = base_ms + int(elapsed * 1000)
                measuring = now >= measured_from
                for i in range(min(due, per_tick * 4)):
                    n = produced + i
                    if measuring and n % args.sample == 0:
                        user_id, kind = f"s{n}", "purchase"
                        batch.append((user_id, wall))
                    else:
                        user = regular % args.users
                        regular += 1
                        user_id, kind = f"u{user}", steady_kind(counts, user)
                    lines.append(event_line(f"b{n}", user_id, wall, kind))
                xadd_all(producer, lines)
                sent = time.perf_counter()
                for user, event_time in batch:
                    jobs.put((user, event_time, sent))
                produced += min(due, per_tick * 4)
                if measuring:
                    measured_events += min(due, per_tick * 4)
                if now >= next_lag:
                    groups = client.xinfo_groups(EVENTS_STREAM)
                    at = round(now - measured_from, 1)
                    lag.append((at, int(groups[0].get("lag") or 0) if groups else -1))
                    rss.append((at, rss_mb(stream.pid)))
                    next_lag += 5
            seconds = time.perf_counter() - measured_from  # the producing, not the sampler's drain below
            for _ in threads:
                jobs.put(None)
            for t in threads:
                t.join()
        finally:
            stream.terminate()
            try:
                stream.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stream.kill()
                stream.wait()
            log.seek(0)
            err = log.read()
    report = {
        "rate_target": args.rate,
        "rate_achieved": round(measured_events / seconds),
        "warmup_s": args.warmup,
        "duration_s": round(seconds, 1),
        "events": measured_events,
        "history_events": history,
        "startup_with_rebuild_s": round(rebuild_s, 1),
        "samples": sketch.n,
        "missed_samples": misses[0],
        "latency_ms": {
            "p50": round(sketch.get_quantile(0.5), 2) if sketch.n else None,
            "p99": round(sketch.get_quantile(0.99), 2) if sketch.n else None,
            "max": round(sketch.get_max_value(), 2) if sketch.n else None,
        },
        "group_lag_every_5s": lag,
        "p99_and_max_ms_every_10s": windows(timeline, measured_from, 10.0),
        "pipeline_rss_mb_every_5s": rss,
        "target": "p99 <= 50 ms at 10,000 events/s for 60 s, no growing lag",
    }
    print(json.dumps(report, indent=2))
    if args.timeline:
        offset = time.time() - time.perf_counter()  # perf_counter times as wall clock (close enough for a plot)
        with open(args.timeline, "w", encoding="utf-8") as out:
            out.writelines(f"[{sent + offset:.4f}, {ms:.2f}]\n" for sent, ms in timeline)
    if stream.returncode not in (0, -15, None) and err:
        print(err[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
