"""What the rule arithmetic in ``mismatches.jsonl`` costs: writing every mismatch with and without it.

Usage: ``.venv/bin/python bench/mismatch_arithmetic.py [--users 3000] [--minutes 30] [--repeat 3] [--dir DIR]``

Real outputs: a late clickstream workload (``late_share`` 0.3) through the legacy
SQL job (SQLite) and the Beam replay, compared once; then ``write_mismatches`` is
timed on the same mismatches with the rule set and events at hand (each record
states both views' aggregates) and without (the records before issue 18), median of
``--repeat`` runs each, interleaved. ``bench/compare.py`` does not see this cost:
its synthetic inputs carry no event log, so its records have no aggregates.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare.comparison import compare_inputs
from compare.inputs import load_inputs
from compare.mismatches import logic_groups, write_mismatches
from legacy_batch.job import run_legacy
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-arith-"))
    directory.mkdir(parents=True, exist_ok=True)
    click = load_ruleset("clickstream")
    events = directory / "events.jsonl"
    write_workload("clickstream", events, users=args.users, minutes=args.minutes, seed=1, late_share=0.3)
    with SqlStore.open(f"sqlite:///{directory / 'db.sqlite'}") as store:
        run_legacy(events, click, 300_000, directory / "legacy.jsonl", store)
    run_replay(events, directory / "stream.jsonl", StreamConfig(click))
    inputs = load_inputs(events, directory / "legacy.jsonl", directory / "stream.jsonl", click)
    with_facts = compare_inputs(inputs, sketches=False).mismatches
    without = dataclasses.replace(with_facts, ruleset=None, facts=None)
    timings: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(args.repeat):
        for name, mismatches in (("without", without), ("with", with_facts)):
            start = time.perf_counter()
            write_mismatches(directory / f"mismatches_{name}.jsonl", mismatches)
            timings[name].append(time.perf_counter() - start)
    start = time.perf_counter()
    groups = logic_groups(with_facts)
    group_s = time.perf_counter() - start
    base, new = statistics.median(timings["without"]), statistics.median(timings["with"])
    n = len(with_facts)
    print(f"mismatches: {n:,} (pairs compared: {inputs.legacy.num_rows:,} legacy lines)")
    print(f"write_mismatches without aggregates (baseline): median {base:.3f} s ({n / base:,.0f} records/s)")
    print(f"write_mismatches with both views' aggregates:   median {new:.3f} s ({n / new:,.0f} records/s)")
    print(f"ratio with/without: {new / base:.2f}")
    print(f"logic_groups over {groups['grouped']:,} unexplained: {group_s:.3f} s")


if __name__ == "__main__":
    main()
