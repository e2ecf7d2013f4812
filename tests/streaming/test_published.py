"""Every value the stream publishes, not only the settled one, against brute force over what it knew then.

The settled timeline (``test_segmenter``) can be right while a wrong value was
published for a while and corrected later: a consumer reading Redis in between
saw it. So these tests follow each transition to the moment it was emitted.

The seam: the shards are driven exactly as the pipeline drives them
(``segment_batch`` over ``ShardBatch`` elements, cut every few applied events,
each batch carrying the watermark after it; the last one final), with the one
field the segmenter reads only to stamp ``emitted_at`` (an applied row's
arrival time, and a batch's clock) replaced by a marker of the step:

- ``2k + 1`` while applying the ``k``-th applied event (0-based, arrival order).
  Expiries are emitted by ``advance`` to the event's watermark *before* the event
  is inserted, so they know the first ``k`` applied events; the event's own
  transitions (``event``, ``correction``) know the first ``k + 1``;
- ``2m`` in the advance to the watermark after a batch that ends with the
  ``m``-th applied event: the first ``m``;
- ``FINAL`` at the end of the input: all of them.

Admission comes from ``spec_admission`` (SPEC §4 written out in the tests),
never from the production gate, and the production gate must agree with it.

Two checks, with the events known at each step:

1. each transition equals the rules over the user's known events at its
   effective time;
2. after each step the published timeline (highest revision per effective
   time, the greatest effective time at or before the instant) equals the rules
   at every *due* instant of the users whose shard took the step: each event time
   of an event the rule set reads, and each window edge ``e + width`` the shard's
   watermark has reached. (A window edge beyond the watermark is not due: its
   expiry waits for the watermark, by design; an instant of a kind no aggregate
   reads changes nothing.) A transition that should have been emitted and was
   not is caught here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.events import Event, arrival_order
from segments.lateness import END_OF_TIME, NO_WATERMARK, GateParams
from segments.outputs import Transition
from segments.rules import RuleSet, load_ruleset
from streaming.admission import admit_all, shard_of
from streaming.pipeline import ShardBatch, segment_batch
from streaming.segmenter import ShardSegmenter
from tests.streaming.oracle import BASE, MINUTE, brute_force, edge_lines_for, parse_all, spec_admission

CLICK = load_ruleset("clickstream")
RISK = load_ruleset("risk")
FINAL = 10**15  # after every marker; above any ``point + max out-of-orderness`` that ``finish`` could stamp
GATES = [GateParams(5_000, 60_000), GateParams(0, 0), GateParams(5_000, 0), GateParams(0, 60_000)]


@dataclass
class Published:
    """One run through the shards: every transition with the number of applied events it knew."""

    applied: list[tuple[Event, int]]  # with the watermark before each (NO_WATERMARK before the first)
    emitted: list[tuple[Transition, int]] = field(default_factory=list)
    # (marker, shard or None for every shard, known count, the watermark the shard(s) had reached)
    steps: list[tuple[int, int | None, int, int]] = field(default_factory=list)


def _known_count(tr: Transition, n: int) -> int:
    """How many of the ``n`` applied events (arrival order) the shard held when it emitted ``tr``."""
    if tr.emitted_at >= FINAL:
        return n
    if tr.emitted_at % 2 == 0:
        return tr.emitted_at // 2
    k = tr.emitted_at // 2
    return k if tr.cause == "expiry" else k + 1


def _drive(ruleset: RuleSet, params: GateParams, lines: list[str], shards: int, batch_events: int) -> Published:
    events = arrival_order(parse_all(lines))
    spec = spec_admission(events, params.max_out_of_orderness_ms, params.allowed_lateness_ms)
    applied = [(e, NO_WATERMARK if w is None else w) for e, w in spec.applied]
    # The production gate agrees with SPEC §4 (the same events applied with the same watermarks, the same dropped).
    got, dead, admission = admit_all(events, params)
    assert [(a.user_id, a.event_time, a.watermark) for a in got] == [(e.user_id, e.event_time, w) for e, w in applied]
    assert [r.event_id for r in dead] == [e.event_id for e in spec.too_late]
    assert admission.counts.duplicates == len(spec.duplicates)

    run = Published(applied)
    segmenters = [ShardSegmenter(ruleset, params) for _ in range(shards)]
    seqs = [0] * shards
    largest: int | None = None
    for start in range(0, max(len(applied), 1), batch_events):
        chunk = applied[start : start + batch_events]
        final = start + batch_events >= len(applied)
        rows: list[list[tuple]] = [[] for _ in range(shards)]
        for k, (e, w) in enumerate(chunk, start=start):
            largest = e.event_time if largest is None else max(largest, e.event_time)
            shard = shard_of(e.user_id, shards)
            rows[shard].append((e.user_id, e.event_time, e.kind, e.amount_micros, e.merchant, 2 * k + 1, w))
            run.steps.append((2 * k + 1, shard, k + 1, w))
        m = start + len(chunk)
        reached = NO_WATERMARK if largest is None else largest - params.max_out_of_orderness_ms
        after = END_OF_TIME if final else reached
        clock = FINAL if final else 2 * m
        run.steps.append((clock, None, m, after))
        for shard in range(shards):
            batch = ShardBatch(seqs[shard], rows[shard], after, clock, final)
            seqs[shard] += 1
            out = segment_batch(segmenters[shard], batch, False)
            run.emitted.extend((tr, _known_count(tr, len(applied))) for tr in out)
    return run


def _rules(ruleset: RuleSet, known: list[Event], user: str, t: int) -> tuple[str, ...]:
    return tuple(sorted(brute_force(ruleset, [e for e in known if e.user_id == user], t)))


def _check_every_transition(ruleset: RuleSet, run: Published) -> None:
    events = [e for e, _ in run.applied]
    for tr, known in run.emitted:
        expected = _rules(ruleset, events[:known], tr.user_id, tr.effective_time)
        assert tr.segments == expected, (tr, "knew", known, "applied events")


def _check_published_at_due_instants(ruleset: RuleSet, run: Published, shards: int) -> None:
    events = [e for e, _ in run.applied]
    timeline: dict[str, dict[int, tuple[int, tuple[str, ...]]]] = {}
    by_marker: dict[int, list[Transition]] = {}
    for tr, _ in run.emitted:
        by_marker.setdefault(tr.emitted_at if tr.emitted_at < FINAL else FINAL, []).append(tr)
    for marker, shard, known, watermark in run.steps:
        for tr in by_marker.get(marker, []):
            points = timeline.setdefault(tr.user_id, {})
            if tr.effective_time not in points or points[tr.effective_time][0] < tr.revision:
                points[tr.effective_time] = (tr.revision, tr.segments)
        seen = events[:known]
        users = {e.user_id for e in seen if shard is None or shard_of(e.user_id, shards) == shard}
        for user in users:
            mine = [e for e in seen if e.user_id == user]
            due = {e.event_time for e in mine if e.kind in ruleset.kinds}
            due |= {e.event_time + w for e in mine for w in ruleset.widths if e.event_time + w <= watermark}
            points = timeline.get(user, {})
            for t in sorted(due):
                before = [p for p in points if p <= t]
                published = points[max(before)][1] if before else ()
                assert published == _rules(ruleset, seen, user, t), (user, t, "after step", marker, "knowing", known)


@pytest.mark.parametrize("ruleset", [CLICK, RISK], ids=["clickstream", "risk"])
@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    params=st.sampled_from(GATES),
    shards=st.integers(1, 2),
    batch_events=st.sampled_from([1, 3, 1_000]),
)
def test_every_published_revision_equals_the_rules_over_the_events_known_when_it_was_emitted(
    data, ruleset, params, shards, batch_events
):
    """Events on each other's window edges and on the too-late edge, to the millisecond: every transition
    the shards emit, and the published timeline after every event and batch, agree with brute force over
    the events applied by then."""
    lines = data.draw(edge_lines_for(ruleset, params))
    run = _drive(ruleset, params, lines, shards, batch_events)
    _check_every_transition(ruleset, run)
    _check_published_at_due_instants(ruleset, run, shards)


def _line(event_id: str, t: int, kind: str, amount: str | None = None) -> str:
    import json

    row: dict[str, object] = {"event_id": event_id, "user_id": "u", "event_time": t, "kind": kind}
    if amount is not None:
        row["amount"] = amount
    return json.dumps(row)


def test_an_event_at_exactly_t_minus_the_window_is_outside_when_it_is_first_published():
    """150 bought at T, 100 refunded at T + 1 ms, 60 bought at exactly T + 10 min: the first purchase is out
    of that instant's window, so the net is -40 and no ``high_value`` may be published there, not even
    until the expiry at T + 10 min corrects it."""
    lines = [_line("p1", BASE, "purchase", "150"), _line("r1", BASE + 1, "refund", "100")]
    lines.append(_line("p2", BASE + 10 * MINUTE, "purchase", "60"))
    run = _drive(CLICK, GATES[0], lines, 1, 1_000)
    _check_every_transition(CLICK, run)
    _check_published_at_due_instants(CLICK, run, 1)
