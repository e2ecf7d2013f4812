"""Benchmark: bytes of a shard's state per fact in the window and per active user, and its snapshot's size.

    .venv/bin/python bench/state_memory.py [--users 20000] [--facts 30,120] [--baseline-repo DIR]

Builds one ``ShardSegmenter`` (clickstream rules) holding ``--users`` users with
F facts each, all inside the ten-minute window (events in order, ahead of the
watermark, through ``apply_batch``), for each F in ``--facts``, and measures in
a fresh process each time: the Python heap the state holds (tracemalloc), the
process's resident memory before and after (another fresh process, without
tracemalloc), and the pickled snapshot (``snapshot_part`` of every part, as
``SegmentShard`` stores them). From two sizes of F it solves bytes = users x
(per_user + F x per_fact). With ``--baseline-repo`` (a checkout of the code
before, e.g. ``git worktree add /tmp/base main``) the same measurements run
against that tree in the same run, and the ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rows(users: int, facts: int):  # type: ignore[no-untyped-def]
    """Applied rows in arrival order: each user's facts spread over nine minutes, every kind the rules read."""
    kinds = ("purchase", "refund", "view", "purchase")
    base = 1_700_000_000_000
    step = 540_000 // facts
    for k in range(facts):
        for u in range(users):
            t = base + k * step + u % step
            # a fresh id string per event, as parsing makes them
            yield (f"user-{u:07d}", t, kinds[(k + u) % 4], 150_000_000 + u, None, t, t - 5_000)


def measure(mode: str, users: int, facts: int) -> dict[str, float]:
    """In this process: build the state, and measure it one way (``heap`` or ``rss``)."""
    import gc
    import pickle
    import tracemalloc

    from segments.lateness import GateParams
    from segments.rules import load_ruleset
    from streaming.segmenter import ShardSegmenter

    ruleset = load_ruleset("clickstream")
    parts = 16
    gc.collect()
    if mode == "heap":
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if mode == "heap" else _rss_bytes()
    shard = ShardSegmenter(ruleset, GateParams(), parts=parts)
    chunk: list[tuple] = []  # type: ignore[type-arg]
    for row in _rows(users, facts):
        chunk.append(row)
        if len(chunk) == 4096:
            shard.apply_batch(chunk)
            chunk = []
    shard.apply_batch(chunk)
    del chunk
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "heap" else _rss_bytes()
    if mode == "heap":
        tracemalloc.stop()
    held = shard.retained_facts
    assert held == users * facts, (held, users * facts)
    snapshot = sum(len(pickle.dumps(shard.snapshot_part(p, parts), pickle.HIGHEST_PROTOCOL)) for p in range(parts))
    return {"bytes": after - before, "facts": held, "users": len(shard.users), "snapshot_bytes": snapshot}


def run_in(repo: Path, mode: str, users: int, facts: int) -> dict[str, float]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(repo)!r}); sys.path.insert(0, {str(HERE / 'bench')!r});"
        f"import state_memory; print(json.dumps(state_memory.measure({mode!r}, {users}, {facts})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=repo)
    if done.returncode:
        raise SystemExit(f"measuring {repo} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def figures(repo: Path, users: int, facts: list[int]) -> dict[str, object]:
    heap = {f: run_in(repo, "heap", users, f) for f in facts}
    rss = {f: run_in(repo, "rss", users, f) for f in facts}
    small, large = facts[0], facts[-1]
    per_fact = (heap[large]["bytes"] - heap[small]["bytes"]) / (users * (large - small))
    per_user = heap[small]["bytes"] / users - small * per_fact
    return {
        "heap_bytes_per_fact_overall": {f: round(heap[f]["bytes"] / heap[f]["facts"], 1) for f in facts},
        "rss_bytes_per_fact_overall": {f: round(rss[f]["bytes"] / rss[f]["facts"], 1) for f in facts},
        "heap_bytes_per_fact_marginal": round(per_fact, 1),
        "heap_bytes_per_user_overhead": round(per_user),
        "snapshot_bytes_per_fact": {f: round(heap[f]["snapshot_bytes"] / heap[f]["facts"], 1) for f in facts},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--facts", default="30,120", help="facts per user, two or more sizes, comma-separated")
    parser.add_argument("--baseline-repo", default=None, help="a checkout of the code before, measured in the same run")
    args = parser.parse_args()
    facts = sorted(int(f) for f in args.facts.split(","))
    if len(facts) < 2:
        parser.error("--facts needs two sizes at least")
    report: dict[str, object] = {"users": args.users, "facts_per_user": facts, "rules": "clickstream"}
    report["this_tree"] = figures(HERE, args.users, facts)
    if args.baseline_repo:
        base = figures(Path(args.baseline_repo).resolve(), args.users, facts)
        report["baseline"] = base
        ours = report["this_tree"]
        report["ratio_marginal_heap_per_fact"] = round(
            base["heap_bytes_per_fact_marginal"] / ours["heap_bytes_per_fact_marginal"], 1  # type: ignore[index,operator]
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
