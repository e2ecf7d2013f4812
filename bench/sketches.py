"""Benchmark: what the probabilistic sketches cost and save, each beside the exact answer.

    python bench/sketches.py [--users U] [--minutes M] [--bloom-members N] [--shards S]

Prints one table:

- **state per user**: the stream's per-shard state (pickled, as snapshots are)
  divided by its users, for the clickstream rule set exactly and with ``views``
  as a Count-Min aggregate (``approx: cms``, error 0.001, confidence 0.99), after
  the whole workload has been applied without Beam;
- **HLL reach**: per (side, segment, minute) bucket of the comparison, the
  observed error of DataSketches' HLL and of Redis' PFCOUNT against the exact
  count, the stated bound, and bytes per bucket (compact sketch vs the exact
  set of ids);
- **Bloom**: bytes per member at a 1% target for ``--bloom-members`` members
  (1M by default), the observed false-positive rate over as many non-member
  probes with its Wilson 95% interval, and false negatives;
- **cost on the stream path**: ``stream replay`` (Beam, the same pipeline as
  ``bench/stream_replay.py``) of the exact rule set, against the approximate
  rule set's replay plus keeping reach (HLL per minute, PFADD in Redis) and
  rebuilding the Bloom filters once per minute of event time, in the same run;
  per event and as a ratio (target: at most 1.10).

The workload is the project's clickstream generator (seed 7); 1M users over 30
minutes is about 7M events, so the default is 100K users (documented in the
output) and ``--users 1000000`` runs the full size where time allows.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare.inputs import load_inputs
from compare.reach import build_reach
from homepage.bloom import build_blooms, measure
from legacy_batch.job import run_legacy
from segments.embedded import redis_endpoint
from segments.events import Event, arrival_order, iter_lines, parse_line
from segments.lateness import GateParams
from segments.reachstore import ReachStore, reach_key
from segments.redisstore import connect, encode_user_id
from segments.rules import RuleSet, load_ruleset, parse_ruleset_text
from segments.sketches import REDIS_HLL_BOUND, hll_bound
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from streaming.admission import admit_all, shard_of
from streaming.approx import segmenter_class
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

APPROX = """
name: clickstream
version: 1
window: 10m
aggregates:
  net_spend: {op: sum, of: amount, kinds: {purchase: 1, refund: -1}}
  views: {op: count, kinds: [view], approx: cms, error: 0.001, confidence: 0.99}
  purchases: {op: count, kinds: [purchase]}
segments:
  - name: high_value
    when: {agg: net_spend, op: ">", value: 100}
  - name: window_shopper
    when:
      all:
        - {agg: views, op: ">=", value: 3}
        - {agg: purchases, op: "==", value: 0}
"""


def state_per_user(path: Path, ruleset: RuleSet, shards: int) -> tuple[float, int, float]:
    """Pickled shard state / users after applying every event (no finish: the live state), users, and the
    Count-Min sketches' bytes in memory (uncompressed) / users."""
    events = [e for n, t in iter_lines(path) if isinstance(e := parse_line(t, n), Event)]
    applied, _, _ = admit_all(arrival_order(events), GateParams())
    cls = segmenter_class(ruleset)
    segmenters = [cls(ruleset, GateParams()) for _ in range(shards)]
    per: list[list[tuple]] = [[] for _ in range(shards)]
    for a in applied:
        per[shard_of(a.user_id, shards)].append(tuple(a))
    for segmenter, rows in zip(segmenters, per, strict=True):
        for i in range(0, len(rows), 500):
            segmenter.apply_batch(rows[i : i + 500])
    size = sum(len(pickle.dumps(s)) for s in segmenters)
    users = sum(len(s.users) for s in segmenters)
    sketches = sum(getattr(s, "state_bytes", lambda: 0)() for s in segmenters)
    return size / max(users, 1), users, sketches / max(users, 1)


def carry_before(store: ReachStore, side: str, members: dict[str, set[str]], at_ms: int) -> int:
    """``ReachStore.carry`` as it was (the baseline): each member PFADDed to the minute and the hour, sorted."""
    minute, hour = at_ms - at_ms % 60_000, at_ms - at_ms % 3_600_000
    buckets: dict[str, set[str]] = {}
    for segment, users in members.items():
        encoded = {encode_user_id(u) for u in users}
        if encoded:
            buckets[reach_key(side, segment, "minute", minute, store.prefix)] = encoded
            buckets.setdefault(reach_key(side, segment, "hour", hour, store.prefix), set()).update(encoded)
    return store._pfadd_all(buckets)


def row(name: str, exact: str, sketch: str, note: str) -> str:
    return f"| {name} | {exact} | {sketch} | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--bloom-members", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=os.environ.get("SEGSHADOW_BENCH_DIR") or tempfile.mkdtemp())
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    events = work / f"clickstream_{args.users}u_{args.minutes}m.jsonl"
    if not events.exists():
        write_workload("clickstream", events, users=args.users, minutes=args.minutes, seed=7)
    lines = sum(1 for _ in iter_lines(events))
    exact_rules = load_ruleset("clickstream")
    approx_rules = parse_ruleset_text(APPROX, "bench")
    lines_out: list[str] = [
        f"workload: clickstream seed 7, {args.users:,} users, {args.minutes} min, {lines:,} lines; "
        f"{args.shards} shards; Bloom on {args.bloom_members:,} members",
        "",
        "| measure | exact | sketch | note |",
        "|---|---:|---:|---|",
    ]

    # 1. state per user
    exact_bytes, exact_users, _ = state_per_user(events, exact_rules, args.shards)
    approx_bytes, approx_users, sketch_mem = state_per_user(events, approx_rules, args.shards)
    cms = approx_rules.approximate[0].approx
    assert cms is not None
    lines_out.append(
        row(
            "state bytes per user (live, pickled)",
            f"{exact_bytes:,.0f}",
            f"{approx_bytes:,.0f}",
            f"{exact_users:,} / {approx_users:,} users; CMS {cms.width}x{cms.depth} per minute per shard "
            f"(e/width {cms.relative_error:.4f}), zlib in snapshots; ratio {approx_bytes / exact_bytes:.2f}; "
            f"in memory the sketches alone are {sketch_mem:,.0f} B per user",
        )
    )

    # 4. cost on the stream path (same run): each replay writes to Redis (the serving store); the baseline is the
    # exact rule set with the sink's reach off (SEGSHADOW_STREAM_REACH=0), as before reach was kept there.
    with redis_endpoint(os.environ.get("SEGSHADOW_REDIS_URL") or "embedded") as redis_url:

        def replay(rules: RuleSet, out: str, reach: bool) -> float:
            os.environ["SEGSHADOW_STREAM_REACH"] = "1" if reach else "0"
            flush = connect(redis_url)
            try:
                flush.flushdb()
            finally:
                flush.close()
            started = time.perf_counter()
            run_replay(events, work / out, StreamConfig(rules, GateParams(), shards=args.shards), redis_url=redis_url)
            return time.perf_counter() - started

        timings: dict[str, list[float]] = {"exact": [], "hll": [], "cms": [], "all": []}
        for _ in range(args.rounds):  # interleaved, so drifting load on a shared machine hits all alike
            timings["exact"].append(replay(exact_rules, "exact.jsonl", False))
            timings["hll"].append(replay(exact_rules, "exact_reach.jsonl", True))
            timings["cms"].append(replay(approx_rules, "approx.jsonl", False))
            timings["all"].append(replay(approx_rules, "approx_reach.jsonl", True))
        exact_s, reach_sink_s, approx_s, all_s = (statistics.median(timings[k]) for k in ("exact", "hll", "cms", "all"))
        with SqlStore.open(f"sqlite:///{work}/bench.db") as store:
            run_legacy(events, exact_rules, 300_000, work / "legacy.jsonl", store)
        inputs = load_inputs(events, work / "legacy.jsonl", work / "exact.jsonl", exact_rules)
        horizon = int(inputs.schedule.times[-1])
        client = connect(redis_url)
        try:
            started = time.perf_counter()
            reach = build_reach(inputs.legacy, inputs.stream, horizon, ReachStore(client, prefix="segshadow-bench"))
            evidence_reach_s = time.perf_counter() - started
            # Bloom rebuilt once per minute of event time from the stream's current members, and the same scan
            # carries those members into the starting minute's reach (``BloomCache`` does both on a rebuild, in
            # the site's background thread). The carry is timed twice per minute, alternating which goes first:
            # as ``ReachStore.carry`` does it, and as it did before (``carry_before``, the baseline).
            carry_store = ReachStore(client, prefix="segshadow-bench-carry")
            before_store = ReachStore(client, prefix="segshadow-bench-carry-before")
            bloom_s = carry_s = carry_before_s = 0.0
            members_now: dict[str, set[str]] = {}
            table = inputs.stream.sort_by("effective_time")
            minute_next = None
            rebuilds = 0
            for user, segs, t in zip(
                table.column("user_id").to_pylist(),
                table.column("segments").to_pylist(),
                table.column("effective_time").to_pylist(),
                strict=True,
            ):
                if minute_next is None:
                    minute_next = t - t % 60_000 + 60_000
                while t >= minute_next:
                    started = time.perf_counter()
                    build_blooms(members_now, "stream", ("high_value", "window_shopper"))
                    bloom_s += time.perf_counter() - started
                    for which in (0, 1) if rebuilds % 2 else (1, 0):
                        started = time.perf_counter()
                        if which:
                            carry_store.carry("stream", members_now, minute_next)
                            carry_s += time.perf_counter() - started
                        else:
                            carry_before(before_store, "stream", members_now, minute_next)
                            carry_before_s += time.perf_counter() - started
                    rebuilds += 1
                    minute_next += 60_000
                for name in ("high_value", "window_shopper"):
                    (
                        members_now.setdefault(name, set()).add
                        if name in segs
                        else members_now.setdefault(name, set()).discard
                    )(user)
            carry_agree = sum(
                carry_store.count("stream", name, grain, b) == before_store.count("stream", name, grain, b)
                for name in members_now
                for grain, step in (("minute", 60_000), ("hour", 3_600_000))
                for b in {m - m % step for m in range(minute_next - rebuilds * 60_000, minute_next, 60_000)}
            )
            carry_keys = len(members_now) * (rebuilds + len({m - m % 3_600_000 for m in range(
                minute_next - rebuilds * 60_000, minute_next, 60_000)}))
        finally:
            client.close()
    per_event = 1e6 / lines
    minute_rows = [r for r in reach.rows if r.grain == "minute"]
    big = [r for r in minute_rows if r.exact >= 100] or minute_rows
    sketch_bytes = sum(len(r.sketch) * 3 // 4 for r in minute_rows) / max(len(minute_rows), 1)
    exact_set_bytes = sum(r.exact * 16 for r in minute_rows) / max(len(minute_rows), 1)  # 16-byte ids, no overhead
    lines_out.append(
        row(
            "HLL reach error per minute bucket (max / mean, buckets >= 100 users)",
            "0",
            f"{max(r.hll_error for r in big):.2%} / {sum(r.hll_error for r in big) / len(big):.2%}",
            f"{len(minute_rows)} minute buckets (both sides, 2 segments); stated bound {hll_bound():.2%} (3 sigma); "
            f"{sum(1 for r in reach.rows if not r.within)} outside",
        )
    )
    redis_errors = [r.redis_error for r in big if r.redis_error is not None]
    lines_out.append(
        row(
            "Redis PFCOUNT reach error (max / mean)",
            "0",
            f"{max(redis_errors):.2%} / {sum(redis_errors) / len(redis_errors):.2%}",
            f"bound {REDIS_HLL_BOUND:.2%} (3 x 0.81%); hours by PFMERGE of minutes",
        )
    )
    lines_out.append(
        row(
            "reach memory per segment per minute bucket (bytes)",
            f"{exact_set_bytes:,.0f}",
            f"{sketch_bytes:,.0f}",
            "exact: 16 bytes per distinct user id; sketch: DataSketches HLL_8 lg_k 12, compact (Redis: <= 12 KB dense)",
        )
    )

    # 3. Bloom on N members
    members = [f"user-{n:08d}" for n in range(args.bloom_members)]
    probes = [f"other-{n:08d}" for n in range(args.bloom_members)]
    exported = build_blooms({"x": members}, "stream", ["x"], 0.01)["x"]
    check = measure(exported, members, probes)
    lo, hi = check.interval()
    lines_out.append(
        row(
            "Bloom bytes per member at 1% target",
            "16",
            f"{len(exported.data) / args.bloom_members:.3f}",
            f"{len(exported.data):,} bytes for {args.bloom_members:,} members; exact: 16-byte ids, no set overhead",
        )
    )
    lines_out.append(
        row(
            "Bloom observed false-positive rate",
            "0",
            f"{check.observed_fpr:.4%}",
            f"{check.false_positives:,} of {check.probes:,} non-members (Wilson 95% {lo:.4%}-{hi:.4%}); "
            f"false negatives {check.false_negatives}",
        )
    )
    lines_out.append(
        row(
            "stream path: microseconds per event (median of rounds)",
            f"{exact_s * per_event:.1f}",
            f"{all_s * per_event:.1f}",
            f"replay to Redis: exact {exact_s:.1f} s; exact + reach in the sink {reach_sink_s:.1f} s; "
            f"CMS {approx_s:.1f} s; CMS + reach {all_s:.1f} s; {args.rounds} rounds interleaved",
        )
    )
    lines_out.append(
        row(
            "stream path with the sketches / exact (target <= 1.10)",
            "1.00",
            f"{all_s / exact_s:.2f}",
            f"CMS alone {approx_s / exact_s:.2f}; reach in the sink alone {reach_sink_s / exact_s:.2f}",
        )
    )
    lines_out.append(
        row(
            "site, per minute: carry of the current members into the reach (before -> after)",
            f"{carry_before_s / rebuilds * 1e3:,.0f} ms",
            f"{carry_s / rebuilds * 1e3:,.0f} ms",
            f"{rebuilds} minutes, alternating which runs first; after/before {carry_s / carry_before_s:.2f}; "
            f"before: each member PFADDed to minute and hour, sorted; after: to the minute once, the hour by "
            f"PFMERGE; PFCOUNT equal in {carry_agree} of {carry_keys} keys",
        )
    )
    lines_out.append(
        row(
            "site, per minute: Bloom rebuild (background thread)",
            "",
            f"{bloom_s / rebuilds * 1e3:,.0f} ms",
            f"{rebuilds} rebuilds, {bloom_s:.2f} s; off the request path since BloomCache.start",
        )
    )
    lines_out.append(
        row(
            "stream path + site work / exact (everything on one machine)",
            "1.00",
            f"{(all_s + carry_before_s + bloom_s) / exact_s:.2f} -> {(all_s + carry_s + bloom_s) / exact_s:.2f}",
            "before -> after: the replays plus the carry and the Bloom rebuilds added as if on the same cores",
        )
    )
    lines_out.append(
        row(
            "sketch evidence per compare: reach (exact + HLL + PFADD)",
            "",
            f"{evidence_reach_s:.1f} s",
            "once per evidence (compare/sketches.py), not on the stream path",
        )
    )
    print("\n".join(lines_out))


if __name__ == "__main__":
    main()
