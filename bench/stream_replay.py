"""Benchmark: ``stream replay`` end to end over 1M clickstream events of 100K users, against the naive Beam form.

    .venv/bin/python bench/stream_replay.py [--users 100000] [--minutes 60] [--naive-events 60000] [--shards 8]
                                            [--runs 1] [--workdir DIR] [-- BEAM_OPTIONS, e.g. --direct_num_workers=2]

(the project's virtual environment: the system Python has no Beam). ``--users`` and
``--minutes`` size the generated workload (about users x minutes / 6 events);
``--runs`` repeats the segshadow pipeline and reports each run; ``--workdir`` (or
``SEGSHADOW_BENCH_DIR``) keeps the files.

Prints events/s of the segshadow pipeline (parse -> admission -> per-shard state
-> JSONL and Redis), per wall second and per CPU second of this process, its
peak RSS and the state size per active user, and in the same run the naive
formulation (SlidingWindows(10m, 1m) + CombinePerKey on the same runner) over
the first M events, and the ratio. The naive form is run on a prefix because at
~1-2K events/s the full million would take ten minutes; its rate is what is
compared. Redis is ``SEGSHADOW_REDIS_URL`` or an embedded Valkey.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import apache_beam as beam
from apache_beam.transforms import window

from segments.embedded import redis_endpoint
from segments.events import Event, arrival_order, iter_lines, parse_line
from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import write_workload
from streaming.admission import admit_all, shard_of
from streaming.options import REPLAY_RUNNER, pipeline_options
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay
from streaming.segmenter import ShardSegmenter


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (the local runner runs the pipeline in it): on a
    shared machine a rate per CPU-second moves less with the neighbours' load than one per wall second."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def state_size_per_user(path: Path, limit: int, shards: int) -> tuple[float, int]:
    """Pickled bytes of the per-shard state divided by the users it holds, after ``limit`` events."""
    ruleset = load_ruleset("clickstream")
    events = []
    for number, text in iter_lines(path):
        if number > limit:
            break
        parsed = parse_line(text, number)
        if isinstance(parsed, Event):
            events.append(parsed)
    applied, _, _ = admit_all(arrival_order(events), GateParams())
    segmenters = [ShardSegmenter(ruleset, GateParams()) for _ in range(shards)]
    for a in applied:
        segmenters[shard_of(a.user_id, shards)].apply(a, a.arrival_time)
    size = sum(len(pickle.dumps(s)) for s in segmenters)
    users = sum(len(s.users) for s in segmenters)
    return size / max(users, 1), users


# ---- the naive formulation ------------------------------------------------------------------------


class _Aggregate(beam.CombineFn):  # type: ignore[misc]
    """net spend (micros), views, purchases for one user in one sliding window."""

    def create_accumulator(self) -> tuple[int, int, int]:
        return (0, 0, 0)

    def add_input(self, acc: tuple[int, int, int], event: tuple[str, int]) -> tuple[int, int, int]:
        kind, micros = event
        net, views, purchases = acc
        if kind == "purchase":
            return (net + micros, views, purchases + 1)
        if kind == "refund":
            return (net - micros, views, purchases)
        if kind == "view":
            return (net, views + 1, purchases)
        return acc

    def merge_accumulators(self, accs):  # type: ignore[no-untyped-def]
        return tuple(map(sum, zip(*accs, strict=True)))

    def extract_output(self, acc: tuple[int, int, int]) -> tuple[int, int, int]:
        return acc


def _classify(kv):  # type: ignore[no-untyped-def]
    user, (net, views, purchases) = kv
    segments = []
    if net > 100_000_000:
        segments.append("high_value")
    if views >= 3 and purchases == 0:
        segments.append("window_shopper")
    return user, tuple(segments)


def run_naive(path: Path, limit: int) -> float:
    """Seconds for the naive pipeline over the first ``limit`` lines (same parse, same runner)."""
    lines = []
    for number, text in iter_lines(path):
        if number > limit:
            break
        lines.append(text)
    started = time.perf_counter()
    with beam.Pipeline(options=pipeline_options([], REPLAY_RUNNER)) as p:
        _ = (
            p
            | beam.Create(lines)
            | beam.Map(lambda text: parse_line(text, 0))
            | beam.Filter(lambda e: isinstance(e, Event))
            | beam.Map(lambda e: window.TimestampedValue((e.user_id, (e.kind, e.amount_micros)), e.event_time / 1000))
            | beam.WindowInto(window.SlidingWindows(600, 60))
            | beam.CombinePerKey(_Aggregate())
            | beam.Map(_classify)
            | beam.combiners.Count.Globally().without_defaults()
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--naive-events", type=int, default=60_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default=os.environ.get("SEGSHADOW_BENCH_DIR") or tempfile.mkdtemp())
    parser.add_argument("beam_args", nargs="*", help="pipeline options after --, e.g. --direct_num_workers=2")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    events = work / f"clickstream_{args.users}u_{args.minutes}m.jsonl"
    if not events.exists():
        counts = write_workload("clickstream", events, users=args.users, minutes=args.minutes, seed=7)
        print(f"generated {counts['lines']:,} lines for {counts['users']:,} users -> {events}")
    lines = sum(1 for _ in iter_lines(events))

    ruleset = load_ruleset("clickstream")
    config = StreamConfig(ruleset, GateParams(), shards=args.shards)
    seconds = []
    cpu = []
    with redis_endpoint(os.environ.get("SEGSHADOW_REDIS_URL") or "embedded") as redis_url:
        for run in range(args.runs):
            started, cpu_started = time.perf_counter(), cpu_seconds()
            out = work / f"stream_{run}.jsonl"
            result = run_replay(events, out, config, redis_url=redis_url, beam_args=args.beam_args)
            seconds.append(time.perf_counter() - started)
            cpu.append(cpu_seconds() - cpu_started)
    median = statistics.median(seconds)
    median_cpu = statistics.median(cpu)
    rate = lines / median
    rss = peak_rss_mb()
    per_user, users = state_size_per_user(events, 200_000, args.shards)

    naive_seconds = run_naive(events, args.naive_events)
    naive_rate = args.naive_events / naive_seconds
    report = {
        "lines": lines,
        "runs_s": [round(s, 2) for s in seconds],
        "median_s": round(median, 2),
        "events_per_s": round(rate),
        "cpu_s": [round(c, 2) for c in cpu],
        "events_per_cpu_s": round(lines / median_cpu),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "transitions": result.counts.get("transitions"),
        "peak_rss_mb": round(rss),
        "state_bytes_per_active_user": round(per_user),
        "active_users_sampled": users,
        "naive_events": args.naive_events,
        "naive_s": round(naive_seconds, 2),
        "naive_events_per_s": round(naive_rate),
        "ratio_vs_naive": round(rate / naive_rate, 1),
        "target_events_per_s": 50_000,
        "beam_args": args.beam_args,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
