"""The Redis sink's write latency, per write, as Beam counters a replay reads back (no Beam needed here).

The sink pipelines its writes (each batch is sent without waiting, the answers are
drained at the end of the bundle), so one write's own round trip is not
observable: a write's latency here is **its bundle's Redis time shared over the
bundle's writes** (every write of a bundle counts once, with that value). Two
families of counters carry it, summed by the runner across workers:

- ``redis_write_us_le_<bound>``: how many writes took at most ``<bound>``
  microseconds (and more than the bound below; ``inf`` for the rest), bounds
  ``WRITE_BOUNDS_US``: the quantiles read from it are the bucket's upper bound (a
  true quantile is at most that); the largest bundle value is kept exactly apart;
- ``redis_write_us_sum_at_<s>`` and ``redis_writes_at_<s>``: per wall-clock second
  ``s`` (Unix time), the writes' summed latency and their count, so the mean per
  write over the run's first and last thirds of its seconds says whether the
  latency **grew** during the period (``GROWTH``, as the doctor's live rule).

``summarize`` turns the counters (by name) into the sidecar's ``redis_write``
figures; ``counter_names`` says which counters are these (kept out of ``counts``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

WRITE_BOUNDS_US = (10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
                   500_000, 1_000_000)
LE = "redis_write_us_le_"
SUM_AT = "redis_write_us_sum_at_"
COUNT_AT = "redis_writes_at_"
GROWTH = 1.5


def bucket_name(per_write_us: float) -> str:
    """The histogram counter a write of ``per_write_us`` microseconds goes to."""
    for bound in WRITE_BOUNDS_US:
        if per_write_us <= bound:
            return f"{LE}{bound}"
    return f"{LE}inf"


def counter_names(name: str) -> bool:
    """Whether ``name`` is one of this module's counters."""
    return name.startswith((LE, SUM_AT, COUNT_AT))


def _quantile_bound(buckets: list[tuple[float, int]], q: float) -> float | None:
    total = sum(n for _, n in buckets)
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for bound, n in buckets:
        seen += n
        if seen >= rank:
            return bound
    return buckets[-1][0]


def summarize(counters: Mapping[str, int], max_bundle_ms: float | None = None) -> dict[str, Any] | None:
    """The ``redis_write`` figures from the counters (None when there are none): writes, p50/p90/p99 per write
    in ms (bucket upper bounds, ``inf`` beyond the last), the mean, the first and last thirds' means and whether
    the latency grew (last third's mean over ``GROWTH`` times the first's, by at least 0.05 ms)."""
    buckets: list[tuple[float, int]] = []
    for bound in (*WRITE_BOUNDS_US, math.inf):
        key = f"{LE}{'inf' if bound == math.inf else int(bound)}"
        buckets.append((bound, int(counters.get(key, 0))))
    writes = sum(n for _, n in buckets)
    if not writes:
        return None
    seconds: dict[int, list[int]] = {}
    for name, value in counters.items():
        for prefix, slot in ((SUM_AT, 0), (COUNT_AT, 1)):
            if name.startswith(prefix):
                seconds.setdefault(int(name.removeprefix(prefix)), [0, 0])[slot] += int(value)
    series = [(s, total, n) for s, (total, n) in sorted(seconds.items()) if n]
    total_us = sum(t for _, t, _ in series)

    def ms(value: float | None) -> float | str | None:
        if value is None:
            return None
        return "inf" if value == math.inf else round(value / 1000, 3)

    out: dict[str, Any] = {
        "writes": writes,
        "latency_is": "each bundle's Redis time shared over its writes (writes are pipelined)",
        "ms_per_write_p50_at_most": ms(_quantile_bound(buckets, 0.5)),
        "ms_per_write_p90_at_most": ms(_quantile_bound(buckets, 0.9)),
        "ms_per_write_p99_at_most": ms(_quantile_bound(buckets, 0.99)),
        "ms_per_write_mean": round(total_us / writes / 1000, 4),
        "largest_bundle_ms": max_bundle_ms,
        "seconds": len(series),
        "histogram_us": {("inf" if b == math.inf else str(int(b))): n for b, n in buckets if n},
    }
    if len(series) >= 3:
        third = len(series) // 3
        first = sum(t for _, t, _ in series[:third]) / sum(n for _, _, n in series[:third])
        last = sum(t for _, t, _ in series[-third:]) / sum(n for _, _, n in series[-third:])
        out |= {
            "ms_per_write_first_third": round(first / 1000, 4),
            "ms_per_write_last_third": round(last / 1000, 4),
            "grew": last > GROWTH * first and last - first >= 50,
        }
    else:
        out["grew"] = None  # too short a run to say (fewer than three seconds with writes)
    return out
