"""When the legacy job runs: the as-of times of SPEC §3."""

from __future__ import annotations

from collections.abc import Sequence

from segments.errors import UsageError
from segments.events import Event

DEFAULT_EVERY_MS = 300_000


def as_of_times(first_arrival: int, last_arrival: int, every_ms: int) -> list[int]:
    """The multiples of ``every_ms`` (epoch-aligned) from the first one at or after
    ``first_arrival`` up to ``last_arrival + every_ms`` inclusive.

    The last as-of is therefore at or after the last arrival: the final run sees every
    event. Raises ``UsageError`` when ``every_ms`` is not positive and ``ValueError``
    when the arrivals are out of order.
    """
    if every_ms <= 0:
        raise UsageError(f"--every must be positive, not {every_ms} ms")
    if last_arrival < first_arrival:
        raise ValueError(f"last arrival {last_arrival} is before the first {first_arrival}")
    start = -(-first_arrival // every_ms) * every_ms
    return list(range(start, last_arrival + every_ms + 1, every_ms))


def schedule(events: Sequence[Event], every_ms: int) -> list[int]:
    """The as-of times for an event log's valid, deduplicated events (none when there are none)."""
    if not events:
        return []
    arrivals = [e.arrival_time for e in events]
    return as_of_times(min(arrivals), max(arrivals), every_ms)
