"""Benchmark: the per-shard segmentation alone, over the shard batches of ``bench/stream_replay.py``'s workload.

    .venv/bin/python bench/segmenter_batches.py [--users 100000] [--minutes 60] [--shards 8] [--runs 3]
                                                [--workdir DIR] [--profile]

The workload is generated, parsed, put in arrival order, admitted and cut into
shard batches exactly as a replay does (``Flusher``, ``batch_events`` per flush,
a final flush at the end of time); the batches are cached in the work directory
(a pickle), so each run times only what a shard does with them: ``apply_batch``
then ``advance`` (or ``finish`` for the final batch), as ``segment_batch`` does.
GC stays on. Prints CPU seconds per run, their median, events per CPU second,
the transitions, and a digest of every transition in output order: two
checkouts that print the same digest published the same transitions (same
revisions, stamps, causes, order).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pickle
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segments.events import Event, arrival_order, iter_lines, parse_line
from segments.lateness import END_OF_TIME, GateParams
from segments.rules import load_ruleset
from segments.workloads import write_workload
from streaming.admission import Admission, shard_of
from streaming.segmenter import PRUNE_EVERY_MS, Row, ShardSegmenter

BATCH_EVENTS = 20_000  # StreamConfig's default


def shard_batches(path: Path, shards: int) -> list[tuple[int, list[Row], int, int, bool]]:
    """(shard, events, watermark, clock, final) in the order a replay emits them."""
    events = []
    for number, text in iter_lines(path):
        parsed = parse_line(text, number)
        if isinstance(parsed, Event):
            events.append(parsed)
    admission = Admission(GateParams())
    buffers: list[list[Row]] = [[] for _ in range(shards)]
    buffered = 0
    batches: list[tuple[int, list[Row], int, int, bool]] = []

    def flush(watermark: int, clock: int, final: bool) -> None:
        for shard in range(shards):
            batches.append((shard, buffers[shard], watermark, clock, final))
            buffers[shard] = []

    ordered = arrival_order(events)
    for event in ordered:
        row = admission.admit_row(event)
        if type(row) is tuple:
            buffers[shard_of(row[0], shards)].append(row)
            buffered += 1
            if buffered >= BATCH_EVENTS:
                flush(admission.gate.watermark, event.arrival_time, False)
                buffered = 0
    flush(END_OF_TIME, ordered[-1].arrival_time, True)
    return batches


def run(batches: list[tuple[int, list[Row], int, int, bool]], shards: int) -> tuple[float, int, str]:
    ruleset = load_ruleset("clickstream")
    phases = [PRUNE_EVERY_MS * shard // shards for shard in range(shards)]  # as the pipeline gives them
    segmenters = [ShardSegmenter(ruleset, GateParams(), prune_phase_ms=phase) for phase in phases]
    outs = []
    started = time.process_time()
    for shard, events, watermark, clock, final in batches:
        segmenter = segmenters[shard]
        out = segmenter.apply_batch(events)
        if final and watermark >= END_OF_TIME:
            out.extend(segmenter.finish(clock))
        else:
            out.extend(segmenter.advance(watermark, clock))
        outs.append(out)
    seconds = time.process_time() - started
    digest = hashlib.sha256()
    for out in outs:
        digest.update(repr(out).encode())
    return seconds, sum(len(out) for out in outs), digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", default=os.environ.get("SEGSHADOW_BENCH_DIR") or tempfile.mkdtemp())
    parser.add_argument("--profile", action="store_true", help="one run under cProfile, the top 25 by own time")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"clickstream_{args.users}u_{args.minutes}m.jsonl"
    if not path.exists():
        write_workload("clickstream", path, users=args.users, minutes=args.minutes, seed=7)
    cached = work / f"batches_{args.users}u_{args.minutes}m_{args.shards}s.pickle"
    if cached.exists():
        batches = pickle.loads(cached.read_bytes())
    else:
        batches = shard_batches(path, args.shards)
        cached.write_bytes(pickle.dumps(batches, protocol=pickle.HIGHEST_PROTOCOL))
    events = sum(len(b[1]) for b in batches)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run, batches, args.shards)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    cpu, transitions, digest = [], 0, ""
    for _ in range(args.runs):
        seconds, transitions, digest = run(batches, args.shards)
        cpu.append(seconds)
    median = statistics.median(cpu)
    report = {
        "events": events,
        "cpu_s": [round(c, 2) for c in cpu],
        "median_cpu_s": round(median, 2),
        "events_per_cpu_s": round(events / median),
        "transitions": transitions,
        "digest": digest,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
