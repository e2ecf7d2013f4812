"""Benchmark: the dedup's memory and CPU per id, ``SeenIds`` against the Python ``set`` of ids it replaced.

    .venv/bin/python bench/dedup_memory.py [--ids 6000000] [--form live|uuid] [--repeat 3]

Each measurement runs in a fresh process: it makes ``--ids`` distinct ids of the
chosen form (``live``: ``h<n>`` as ``bench/stream_live.py``'s history; ``uuid``: a
random UUID4 string, as most producers send), then adds them all through the
structure's first-arrival check (``add_if_new`` for ``SeenIds``, ``in`` then ``add``
for the set), then asks again for every tenth id (all duplicates). It reports the
resident memory the structure added (RSS after minus RSS with the ids alone, the
ids' own strings excluded: a stream drops an event's id once it is judged, the
set kept it), and the CPU nanoseconds an id for the adds and for the repeats.
Medians of ``--repeat`` runs; the set is the baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ids(n: int, form: str) -> list[str]:
    if form == "uuid":
        return [str(uuid.UUID(int=uuid.uuid4().int)) for _ in range(n)]
    return [f"h{k}" for k in range(n)]


def measure(structure: str, n: int, form: str) -> dict[str, float]:
    """One run in this process (called in a fresh one by ``main``)."""
    sys.path.insert(0, str(HERE))
    from segments.seen import SeenIds

    ids = _ids(n, form)
    base = _rss_bytes()
    seen: set[str] = set()
    add = SeenIds().add_if_new
    start = time.process_time()
    if structure == "set":  # as the gate did before: ``in``, then ``add``
        for event_id in ids:
            if event_id not in seen:
                seen.add(event_id)
    else:
        for event_id in ids:
            add(event_id)
    middle = time.process_time()
    if structure == "set":
        repeats = sum(event_id in seen for event_id in ids[::10])
    else:
        repeats = sum(not add(event_id) for event_id in ids[::10])
    end = time.process_time()
    assert repeats == len(ids[::10])
    grown = _rss_bytes() - base
    # the set holds the id strings themselves: a stream would otherwise have let them go
    held = sum(sys.getsizeof(event_id) for event_id in ids) if structure == "set" else 0
    return {
        "bytes_per_id": (grown + held) / n,
        "add_ns": (middle - start) / n * 1e9,
        "repeat_ns": (end - middle) / len(ids[::10]) * 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ids", type=int, default=6_000_000)
    parser.add_argument("--form", choices=("live", "uuid"), default="live")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", choices=("set", "seen"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.ids, args.form)))
        return
    results: dict[str, list[dict[str, float]]] = {"set": [], "seen": []}
    for _ in range(args.repeat):
        for structure in results:  # interleaved, so both see the same machine
            out = subprocess.run(
                [sys.executable, __file__, "--one", structure, "--ids", str(args.ids), "--form", args.form],
                check=True, capture_output=True, text=True,
            ).stdout
            results[structure].append(json.loads(out))
    print(f"{args.ids:,} distinct ids of the {args.form} form, median of {args.repeat} (load {os.getloadavg()[0]:.1f})")
    medians = {s: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for s, runs in results.items()}
    for structure, label in (("set", "set[str] (before)"), ("seen", "SeenIds (after)")):
        m = medians[structure]
        print(f"  {label:18} {m['bytes_per_id']:6.1f} bytes/id   add {m['add_ns']:6.0f} ns/id   "
              f"repeat {m['repeat_ns']:6.0f} ns/id")
    s, t = medians["set"], medians["seen"]
    print(f"  ratio after/before: memory {t['bytes_per_id'] / s['bytes_per_id']:.2f}x, "
          f"add CPU {t['add_ns'] / s['add_ns']:.1f}x; at 10K events/s an hour of ids takes "
          f"{s['bytes_per_id'] * 3.6e7 / 1e9:.2f} GB before, {t['bytes_per_id'] * 3.6e7 / 1e9:.2f} GB after")


if __name__ == "__main__":
    main()
