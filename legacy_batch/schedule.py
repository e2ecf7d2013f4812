"""When the legacy job runs: the as-of times of SPEC §3, within stated limits.

Limits (bounded work): ``--every`` is at least ``MIN_EVERY_MS`` (1 s) and at most
``MAX_EVERY_MS`` (1 day), and a schedule never holds more than ``MAX_AS_OFS``
(100,000) as-of times: one that would is refused with ``UsageError`` (exit 2)
naming the span of the arrivals and ``--every`` before any list is built, so the
memory and the number of queries of a run are bounded whatever times the events
carry. (100,000 as-ofs are about 347 days at the default 5 minutes.)
"""

from __future__ import annotations

from collections.abc import Sequence

from segments.durations import format_duration_ms
from segments.errors import UsageError
from segments.events import Event
from segments.timeutil import format_ms

DEFAULT_EVERY_MS = 300_000
MIN_EVERY_MS = 1_000
MAX_EVERY_MS = 86_400_000
MAX_AS_OFS = 100_000


def check_every(every_ms: int) -> int:
    """``every_ms`` when it is within [``MIN_EVERY_MS``, ``MAX_EVERY_MS``]; ``UsageError`` otherwise."""
    if every_ms <= 0:
        raise UsageError(f"--every must be positive, not {every_ms} ms")
    if not MIN_EVERY_MS <= every_ms <= MAX_EVERY_MS:
        low, high = format_duration_ms(MIN_EVERY_MS), format_duration_ms(MAX_EVERY_MS)
        raise UsageError(f"--every must be between {low} and {high}, not {format_duration_ms(every_ms)}")
    return every_ms


def as_of_count(first_arrival: int, last_arrival: int, every_ms: int) -> int:
    """How many as-of times ``as_of_times`` gives, computed without building them."""
    start = -(-first_arrival // every_ms) * every_ms
    return (last_arrival + every_ms - start) // every_ms + 1


def as_of_times(first_arrival: int, last_arrival: int, every_ms: int) -> list[int]:
    """The multiples of ``every_ms`` (epoch-aligned) from the first one at or after
    ``first_arrival`` up to ``last_arrival + every_ms`` inclusive.

    The last as-of is therefore at or after the last arrival: the final run sees every
    event. Raises ``UsageError`` when ``every_ms`` is outside its limits or the schedule
    would exceed ``MAX_AS_OFS``, and ``ValueError`` when the arrivals are out of order.
    """
    check_every(every_ms)
    if last_arrival < first_arrival:
        raise ValueError(f"last arrival {last_arrival} is before the first {first_arrival}")
    count = as_of_count(first_arrival, last_arrival, every_ms)
    if count > MAX_AS_OFS:
        span_days = (last_arrival - first_arrival) / 86_400_000
        raise UsageError(
            f"the arrivals span {span_days:,.1f} days ({format_ms(first_arrival)} to {format_ms(last_arrival)}): "
            f"at --every {format_duration_ms(every_ms)} that is {count:,} as-of times, more than the limit "
            f"of {MAX_AS_OFS:,}; use a larger --every or fewer days of events"
        )
    start = -(-first_arrival // every_ms) * every_ms
    return list(range(start, last_arrival + every_ms + 1, every_ms))


def schedule(events: Sequence[Event], every_ms: int) -> list[int]:
    """The as-of times for an event log's valid, deduplicated events (none when there are none)."""
    if not events:
        return []
    first = last = events[0].arrival_time
    for event in events:
        arrival = event.arrival_time
        if arrival < first:
            first = arrival
        elif arrival > last:
            last = arrival
    return as_of_times(first, last, every_ms)
