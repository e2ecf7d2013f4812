"""Test oracle and data for the stream: brute-force rules over the applied events, generated inputs."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from segments.events import Event, parse_line
from segments.rules import RuleSet

BASE = 1_700_000_000_000
MINUTE = 60_000


def brute_force(ruleset: RuleSet, facts: list[Event], t: int) -> frozenset[str]:
    """The rules evaluated directly, with no window index: the reference."""
    return ruleset.segments_at(facts, t)


def probe_instants(ruleset: RuleSet, events: list[Event]) -> list[int]:
    """Every event time, every window edge, and one millisecond either side of each."""
    points: set[int] = set()
    for e in events:
        for base in [e.event_time, *(e.event_time + w for w in ruleset.widths)]:
            points.update((base - 1, base, base + 1))
    return sorted(points)


@st.composite
def event_lines(draw: st.DrawFn, kinds: tuple[str, ...], max_events: int = 40) -> list[str]:
    """Arrival-ordered JSON lines: few users, out-of-order and late arrivals, duplicates with new payloads."""
    n = draw(st.integers(1, max_events))
    users = draw(st.lists(st.sampled_from(["a", "b", "c:d", "é 😀"]), min_size=1, max_size=3, unique=True))
    rows = []
    for i in range(n):
        event_time = BASE + draw(st.integers(0, 40 * MINUTE))
        delay = draw(
            st.one_of(
                st.just(0),
                st.integers(0, 10_000),
                st.integers(0, 3 * MINUTE),
                st.integers(0, 25 * MINUTE),
            )
        )
        kind = draw(st.sampled_from(kinds))
        amount = draw(st.sampled_from(["0.01", "33.33", "33.34", "60", "99.999999", "150", "700", "2500"]))
        event_id = f"e{draw(st.integers(0, n))}" if draw(st.booleans()) and i else f"e{i}"
        row = {
            "event_id": event_id,
            "user_id": draw(st.sampled_from(users)),
            "event_time": event_time,
            "arrival_time": event_time + delay,
            "kind": kind,
            "attrs": {"merchant": draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5"]))},
        }
        if kind in ("purchase", "refund", "txn"):
            row["amount"] = amount
        rows.append(row)
    rows.sort(key=lambda r: r["arrival_time"])
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def parse_all(lines: list[str]) -> list[Event]:
    out = []
    for number, line in enumerate(lines, start=1):
        parsed = parse_line(line, number)
        assert isinstance(parsed, Event), parsed
        out.append(parsed)
    return out
