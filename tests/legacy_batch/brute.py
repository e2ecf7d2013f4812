"""An independent, brute-force legacy evaluation: the oracle the SQL job is checked against.

It shares nothing with the job but ``RuleSet.segments_at`` (the one evaluation SPEC §2
defines): its own dedup, its own as-of times, a scan of every user at every as-of.
"""

from __future__ import annotations

from collections.abc import Sequence

from segments.events import Event
from segments.outputs import Assignment
from segments.rules import RuleSet


def first_arrivals(valid: Sequence[Event]) -> list[Event]:
    """Valid events in arrival order (ties in input order), keeping the first arrival of each id."""
    seen: set[str] = set()
    out: list[Event] = []
    for event in sorted(valid, key=lambda e: (e.arrival_time, e.seq)):
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def brute_as_ofs(events: Sequence[Event], every_ms: int) -> list[int]:
    """Every multiple of ``every_ms`` between the first arrival and the last arrival plus ``every_ms``."""
    if not events:
        return []
    first = min(e.arrival_time for e in events)
    last = max(e.arrival_time for e in events)
    return [k * every_ms for k in range(first // every_ms, (last + every_ms) // every_ms + 1)
            if first <= k * every_ms <= last + every_ms]


def brute_legacy(valid: Sequence[Event], ruleset: RuleSet, every_ms: int) -> list[Assignment]:
    """SPEC §3 by definition: at each as-of, each user's segments over the events arrived by then."""
    events = first_arrivals(valid)
    users = sorted({e.user_id for e in events})
    out: list[Assignment] = []
    for t in brute_as_ofs(events, every_ms):
        for user in users:
            seen = [e for e in events if e.user_id == user and e.arrival_time <= t]
            if not seen:
                continue
            segments = ruleset.segments_at(seen, t)
            if segments:
                out.append(Assignment(t, user, tuple(sorted(segments))))
    return out
