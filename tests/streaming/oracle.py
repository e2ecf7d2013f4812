"""Test oracle and data for the stream: brute-force rules over the applied events, generated inputs."""

from __future__ import annotations

import json
from typing import NamedTuple

from hypothesis import strategies as st

from segments.events import Event, parse_line
from segments.lateness import GateParams
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


# ---- SPEC §4 admission, written out independently of ``segments.lateness`` ----------------------------


class OracleAdmission(NamedTuple):
    """What SPEC §4 says the stream does with arrival-ordered events.

    ``applied`` pairs each applied event with the watermark that held just before
    it (None before the first applied event); ``watermark`` is the one after the
    last event (None if nothing was applied).
    """

    applied: list[tuple[Event, int | None]]
    too_late: list[Event]
    duplicates: list[Event]
    watermark: int | None


def spec_admission(events: list[Event], max_out_of_orderness_ms: int, allowed_lateness_ms: int) -> OracleAdmission:
    """SPEC §4 read literally, with no code shared with the production gate.

    In arrival order: the first arrival of an id is judged, later ones are
    duplicates. The watermark is the largest event time applied so far minus the
    max out-of-orderness; an event is too late iff its event time is strictly
    earlier than that watermark minus the allowed lateness (an event at exactly
    that millisecond is applied). Too-late events do not move the watermark.
    """
    seen: set[str] = set()
    applied: list[tuple[Event, int | None]] = []
    too_late: list[Event] = []
    duplicates: list[Event] = []
    largest: int | None = None
    for event in events:
        if event.event_id in seen:
            duplicates.append(event)
            continue
        seen.add(event.event_id)
        watermark = None if largest is None else largest - max_out_of_orderness_ms
        if watermark is not None and event.event_time < watermark - allowed_lateness_ms:
            too_late.append(event)
            continue
        applied.append((event, watermark))
        largest = event.event_time if largest is None else max(largest, event.event_time)
    final = None if largest is None else largest - max_out_of_orderness_ms
    return OracleAdmission(applied, too_late, duplicates, final)


# ---- inputs that sit on the edges ---------------------------------------------------------------------


@st.composite
def edge_event_lines(
    draw: st.DrawFn,
    kinds: tuple[str, ...],
    widths: tuple[int, ...],
    max_out_of_orderness_ms: int,
    allowed_lateness_ms: int,
    max_events: int = 24,
) -> list[str]:
    """Arrival-ordered JSON lines whose event times sit on each other's edges, to the millisecond.

    Each event's time is drawn from: exactly the gate's too-late edge at its
    arrival (watermark - allowed lateness, per ``spec_admission`` over the events
    before it) or 1 ms either side; an earlier event's time plus or minus a
    window width (an event at exactly t - window; the previous event's time half
    the time), 0, or 1 ms either side of those; or anywhere in 40 minutes. Arrival times never go back (the list is the
    arrival order) and are never before the event time. Half the events are the
    previous one's user's. Ids are sometimes reused (a duplicate with another payload).
    """
    n = draw(st.integers(1, max_events))
    users = draw(st.lists(st.sampled_from(["a", "b", "é 😀"]), min_size=1, max_size=2, unique=True))
    lag = max_out_of_orderness_ms + allowed_lateness_ms
    rows: list[dict[str, object]] = []
    times: list[int] = []
    largest: int | None = None  # of the events judged applied so far (as ``spec_admission``, ids aside)
    seen: set[str] = set()
    arrival = BASE
    for i in range(n):
        how = draw(st.sampled_from(["horizon", "edge", "edge", "edge", "free"] if times else ["free"]))
        nudge = draw(st.sampled_from([0, 0, 0, -1, 1]))
        if how == "horizon" and largest is not None:
            event_time = largest - lag + nudge
        elif how in ("horizon", "edge"):
            width = draw(st.sampled_from([0, *widths, *widths, *widths, *(-w for w in widths)]))
            reference = times[-1] if draw(st.booleans()) else draw(st.sampled_from(times))
            event_time = reference + width + nudge
        else:
            event_time = BASE + draw(st.integers(0, 40 * MINUTE))
        reuse = i > 0 and draw(st.integers(0, 5)) == 0
        event_id = f"e{draw(st.integers(0, i - 1))}" if reuse else f"e{i}"
        arrival = max(arrival, event_time) + draw(st.sampled_from([0, 0, 1, 1_000, 3 * MINUTE]))
        kind = draw(st.sampled_from(kinds))
        row: dict[str, object] = {
            "event_id": event_id,
            "user_id": rows[-1]["user_id"] if rows and draw(st.booleans()) else draw(st.sampled_from(users)),
            "event_time": event_time,
            "arrival_time": arrival,
            "kind": kind,
            "attrs": {"merchant": draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5"]))},
        }
        if kind in ("purchase", "refund", "txn"):
            row["amount"] = draw(st.sampled_from(["40", "60", "150", "600", "2500"]))
        rows.append(row)
        times.append(event_time)
        if event_id not in seen:
            seen.add(event_id)
            if largest is None or event_time >= largest - lag:
                largest = event_time if largest is None else max(largest, event_time)
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def edge_lines_for(ruleset: RuleSet, params: GateParams, max_events: int = 24) -> st.SearchStrategy[list[str]]:
    """``edge_event_lines`` on ``ruleset``'s window widths and ``params``' too-late edge, with kinds it reads
    and one it does not (a view for risk, a cart for clickstream)."""
    kinds = ("txn", "view") if "txn" in ruleset.kinds else ("view", "cart", "purchase", "refund")
    return edge_event_lines(
        kinds, ruleset.widths, params.max_out_of_orderness_ms, params.allowed_lateness_ms, max_events
    )
