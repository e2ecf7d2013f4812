"""Benchmark: ``stream replay --transform`` (a team's PTransform) against segshadow's own stream, same events, same run.

    .venv/bin/python bench/byo_transform.py [--events FILE] [--users 200] [--minutes 30] [--runs 3]
                                            [--transform M:NAME ...]

(the project's virtual environment). Without ``--events`` a clickstream workload of
``--users`` x ``--minutes`` is generated. Each round runs segshadow's own stream, then
each transform (default: the example ``examples.byo.clickstream_windows:ClickstreamWindows``;
give ``--transform`` several times to compare versions, e.g. an older copy on
``PYTHONPATH``), in turn, so that the machine's load touches them alike. Prints each
one's median wall seconds, lines/s and CPU seconds over ``--runs`` rounds and their
ratios to the own stream's; no SQL, no Redis (the file sink only).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segments.rules import load_ruleset
from segments.workloads import write_workload
from streaming.byo import load_transform
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

EXAMPLE = "examples.byo.clickstream_windows:ClickstreamWindows"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transform", action="append")
    args = parser.parse_args()
    refs = args.transform or [EXAMPLE]
    work = Path(tempfile.mkdtemp(prefix="bench-byo-"))
    events = args.events
    if events is None:
        events = work / "events.jsonl"
        write_workload("clickstream", events, users=args.users, minutes=args.minutes, seed=1)
    lines = sum(1 for _ in events.open("rb"))
    config = StreamConfig(load_ruleset("clickstream"))
    transforms = {ref: load_transform(ref) for ref in refs}
    seconds: dict[str, list[float]] = {"own stream": [], **{ref: [] for ref in refs}}
    cpu: dict[str, list[float]] = {name: [] for name in seconds}
    for round_ in range(args.runs):
        for name in seconds:
            before = cpu_seconds()
            transform = transforms.get(name)
            result = run_replay(events, work / "out.jsonl", config, transform=transform)
            seconds[name].append(result.seconds)
            cpu[name].append(cpu_seconds() - before)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.1f}s" for n, s in seconds.items()), flush=True)
    base, base_cpu = statistics.median(seconds["own stream"]), statistics.median(cpu["own stream"])
    print(f"{lines} lines of {events}; load average {os.getloadavg()[0]:.2f} at the end; medians of {args.runs}:")
    for name, values in seconds.items():
        median, used = statistics.median(values), statistics.median(cpu[name])
        print(
            f"  {name}: {median:.1f}s wall ({lines / median:,.0f} lines/s, {median / base:.2f}x the own stream's), "
            f"{used:.1f}s CPU ({used / base_cpu:.2f}x)"
        )


def cpu_seconds() -> float:
    """This process's user and system CPU time (the local runner runs the pipeline in-process): what a loaded
    machine's wall clock blurs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
