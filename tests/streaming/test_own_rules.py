"""The stream's core on a rule set with its own kinds and attribute fields: its settled timeline equals an
oracle that reads the attributes (``tests.segments.own_rules``), as legacy's output does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from segments.events import Event, arrival_order, parse_line
from segments.lateness import GateParams
from segments.outputs import timelines
from streaming.admission import admit_all, shard_of
from streaming.segmenter import run_shard
from tests.segments.own_rules import OWN, oracle_segments, oracle_valid, own_lines
from tests.streaming.oracle import BASE, probe_instants, spec_admission

PARAMS = GateParams(5_000, 60_000)


@settings(max_examples=120, deadline=None)
@given(lines=own_lines(BASE), shards=st.integers(1, 2))
def test_stream_on_own_kinds_and_attributes_equals_the_oracle(lines: list[str], shards: int) -> None:
    parsed = [parse_line(line, n, OWN.time_bounds) for n, line in enumerate(lines, start=1)]
    assert [isinstance(p, Event) for p in parsed] == [oracle_valid(line) for line in lines]
    events = arrival_order([p for p in parsed if isinstance(p, Event)])
    if not events:
        return
    applied, _, _ = admit_all(events, PARAMS)
    spec = spec_admission(events, PARAMS.max_out_of_orderness_ms, PARAMS.allowed_lateness_ms)
    final = max(e.arrival_time for e in events)
    transitions = []
    for shard in range(shards):
        mine = [a for a in applied if shard_of(a.user_id, shards) == shard]
        transitions.extend(run_shard(OWN, PARAMS, mine, final))
    lines_by_user = timelines(transitions)
    by_user: dict[str, list[Event]] = {}
    for event, _ in spec.applied:
        by_user.setdefault(event.user_id, []).append(event)
    for user in set(by_user) | set(lines_by_user):
        facts = by_user.get(user, [])
        for t in probe_instants(OWN, facts):
            got = lines_by_user[user].at(t) if user in lines_by_user else frozenset()
            assert got == oracle_segments(facts, t), (user, t)
