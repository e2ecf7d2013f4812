"""The comparator's view of what the stream dropped, against SPEC §4 written out in the tests.

The comparator recomputes the stream's too-late events with the production gate
when no dead-letter file is given, and the other comparator tests build their
dead letters with that same gate, so a wrong gate would agree with itself. Here
the expected drops come from ``spec_admission`` (tests/streaming/oracle.py), the
expected legacy rows from ``brute_legacy``, the stream rows from brute force over
the events SPEC §4 applies, and the expected causes from SPEC §5 read literally;
the inputs put events at exactly watermark - allowed lateness and 1 ms either side.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compare.comparison import run_comparison
from segments.events import Event, arrival_order, load_event_log, too_late
from segments.lateness import GateParams, too_late_ids
from segments.rules import RuleSet, load_ruleset
from segments.timeutil import format_ms
from tests.compare.builders import event, write_events, write_legacy, write_stream
from tests.legacy_batch.brute import brute_as_ofs, brute_legacy
from tests.streaming.oracle import BASE, edge_lines_for, parse_all, spec_admission

CLICK = load_ruleset("clickstream")
RISK = load_ruleset("risk")
EVERY = 5 * 60_000
GATES = [GateParams(5_000, 60_000), GateParams(0, 0), GateParams(5_000, 0)]
# SPEC §5: (the stream applied some that arrived after t, it dropped some that legacy saw) -> cause
CAUSE = {
    (True, False): "late_arrival",
    (False, True): "dropped_too_late",
    (True, True): "mixed",
    (False, False): "unexplained",
}


def _lines(data: st.DataObject, ruleset: RuleSet, params: GateParams) -> list[str]:
    return data.draw(edge_lines_for(ruleset, params, max_events=16))


@settings(max_examples=120, deadline=None)
@given(data=st.data(), ruleset=st.sampled_from([CLICK, RISK]), params=st.sampled_from(GATES))
def test_the_gate_the_comparator_recomputes_drops_what_spec_4_drops(data, ruleset, params):
    """``too_late_ids`` over the deduplicated log: exactly the events strictly earlier than watermark minus
    allowed lateness, never one at that millisecond."""
    events = arrival_order(parse_all(_lines(data, ruleset, params)))
    spec = spec_admission(events, params.max_out_of_orderness_ms, params.allowed_lateness_ms)
    first_arrivals = [e for e in events if e not in spec.duplicates]
    assert too_late_ids(first_arrivals, params) == {e.event_id for e in spec.too_late}


def _settled_stream(ruleset: RuleSet, applied: list[Event]) -> list[tuple[str, list[str], int, int, int, str]]:
    """A correct stream's settled output: one transition per change of the rules over the applied events."""
    rows = []
    for user in sorted({e.user_id for e in applied}):
        mine = [e for e in applied if e.user_id == user]
        instants = sorted({e.event_time + w for e in mine for w in (0, *ruleset.widths)})
        value: frozenset[str] = frozenset()
        revision = 0
        for t in instants:
            now = ruleset.segments_at(mine, t)
            if now != value:
                revision += 1
                rows.append((user, sorted(now), t, revision, t, "event"))
                value = now
    return rows


def _expected_mismatches(ruleset: RuleSet, events: list[Event], params: GateParams) -> tuple[int, set[tuple]]:
    """(pairs, {(as_of, user, cause)}) by SPEC §3-§5 read literally, with SPEC §4 from ``spec_admission``
    (the as-ofs span the first arrivals of the valid events, as ``brute_legacy``'s do)."""
    spec = spec_admission(events, params.max_out_of_orderness_ms, params.allowed_lateness_ms)
    applied = [e for e, _ in spec.applied]
    dropped = {e.event_id for e in spec.too_late}
    firsts = [e for e in events if e not in spec.duplicates]
    legacy = {(a.as_of, a.user_id): frozenset(a.segments) for a in brute_legacy(events, ruleset, EVERY)}
    pairs = 0
    mismatches = set()
    for t in brute_as_ofs(firsts, EVERY):
        for user in sorted({e.user_id for e in firsts}):
            old = legacy.get((t, user), frozenset())
            new = ruleset.segments_at([e for e in applied if e.user_id == user], t)
            if not old and not new:
                continue
            pairs += 1
            if old == new:
                continue
            window = [
                e
                for e in firsts
                if e.user_id == user and e.kind in ruleset.kinds and t - ruleset.span_ms < e.event_time <= t
            ]
            late = any(e.event_id not in dropped and e.arrival_time > t for e in window)
            lost = any(e.event_id in dropped and e.arrival_time <= t for e in window)
            mismatches.add((format_ms(t), user, CAUSE[late, lost]))
    return pairs, mismatches


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    ruleset=st.sampled_from([CLICK, RISK]),
    params=st.sampled_from(GATES),
    dead_letter=st.booleans(),
)
def test_causes_end_to_end_against_an_independent_gate(data, ruleset, params, dead_letter):
    """A correct stream's output and the legacy oracle's, compared: the pairs, every mismatch's cause and
    the stream's too-late count are what SPEC §3-§5 give, whether the comparator reads the too-late events
    from the stream's dead letters (written here from the oracle) or recomputes them with its gate."""
    lines = _lines(data, ruleset, params)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        events_path = write_events(root / "events.jsonl", lines)
        events = arrival_order(parse_all(lines))
        spec = spec_admission(events, params.max_out_of_orderness_ms, params.allowed_lateness_ms)
        legacy_rows = [(a.as_of, a.user_id, list(a.segments)) for a in brute_legacy(events, ruleset, EVERY)]
        legacy = write_legacy(root / "legacy.jsonl", legacy_rows, events_path, ruleset, EVERY)
        dead = [too_late(e, 0, "too late") for e in spec.too_late] if dead_letter else None
        stream_rows = _settled_stream(ruleset, [e for e, _ in spec.applied])
        stream = write_stream(root / "stream.jsonl", stream_rows, events_path, ruleset, params, dead_letters=dead)
        result = run_comparison(events_path, legacy, stream, ruleset, out_dir=root / "out")
        got = {
            (r["as_of"], r["user_id"], r["cause"])
            for r in map(json.loads, (root / "out" / "mismatches.jsonl").read_text().splitlines())
        }
        parity = json.loads((root / "out" / "parity.json").read_text())
    pairs, expected = _expected_mismatches(ruleset, events, params)
    assert parity["dead_letter"]["stream"]["too_late"] == len(spec.too_late)
    assert got == expected
    assert (result.pairs, result.mismatch) == (pairs, len(expected))


def test_an_event_at_exactly_watermark_minus_allowed_lateness_is_applied():
    """An event from the future sets the watermark; views 1 ms before the horizon and earlier are dropped,
    the one at exactly the horizon and the one 1 ms after are applied."""
    params = GateParams()
    ahead = BASE + 20 * 60_000
    horizon = ahead - params.max_out_of_orderness_ms - params.allowed_lateness_ms
    times = {"v0": horizon - 60_000, "v1": horizon - 1, "v2": horizon, "v3": horizon + 1}
    lines = [event("x", "w", ahead, arrival=BASE), *(event(i, "u", t, arrival=BASE) for i, t in times.items())]
    with tempfile.TemporaryDirectory() as tmp:
        log = load_event_log(write_events(Path(tmp) / "events.jsonl", lines))
    assert {e.event_id for e in spec_admission(log.events, 5_000, 60_000).too_late} == {"v0", "v1"}
    assert too_late_ids(log.events, params) == {"v0", "v1"}
