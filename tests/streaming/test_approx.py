"""The Count-Min segmenter: one-sided against the rules, and its snapshots continue exactly."""

from __future__ import annotations

import pickle

from hypothesis import given, settings

from segments.events import arrival_order
from segments.lateness import GateParams
from segments.outputs import timelines
from segments.rules import Fact
from streaming.admission import admit_all
from streaming.approx import ApproxShardSegmenter
from streaming.segmenter import Applied
from tests.compare.test_approximate import approx_ruleset
from tests.streaming.oracle import event_lines, parse_all, probe_instants

PARAMS = GateParams(5_000, 60_000)
WIDE = approx_ruleset(1 << 16)  # collisions practically never happen: only the bucketing over-counts
NARROW = approx_ruleset(4)


@settings(max_examples=60, deadline=None)
@given(lines=event_lines(("view", "cart", "purchase", "refund")))
def test_views_from_the_sketch_never_undercount(lines):  # type: ignore[no-untyped-def]
    """Wherever the exact rules put a user in window_shopper with no purchase, views >= 3 holds for the
    sketch too (it only over-counts); high_value (exact aggregates only) is identical at every instant."""
    events = arrival_order(parse_all(lines))
    applied, _, _ = admit_all(events, PARAMS)
    shard = ApproxShardSegmenter(WIDE, PARAMS)
    final = max((e.arrival_time for e in events), default=0)
    out = shard.apply_batch([tuple(a) for a in applied]) + shard.finish(final)
    timeline = timelines(out)
    rows = [Applied(*a) for a in applied]
    for user in {a.user_id for a in rows}:
        mine = [a for a in rows if a.user_id == user]
        facts = [Fact(a.event_time, a.kind, a.amount_micros, a.merchant) for a in mine]
        for t in probe_instants(WIDE, mine):  # type: ignore[arg-type]  # reads event_time only
            exact = WIDE.aggregate(facts, t)
            got = timeline[user].at(t) if user in timeline else frozenset()
            assert ("high_value" in got) == (exact["net_spend"] > 100_000_000), (user, t)
            if exact["views"] >= 3 and exact["purchases"] == 0:
                assert "window_shopper" in got, (user, t)


@settings(max_examples=40, deadline=None)
@given(lines=event_lines(("view", "cart", "purchase", "refund")))
def test_a_pickled_part_snapshot_continues_exactly_as_the_original(lines):  # type: ignore[no-untyped-def]
    """Snapshots carry the marks and the sketch rings: after a split anywhere the output is unchanged."""
    events = arrival_order(parse_all(lines))
    applied, _, _ = admit_all(events, PARAMS)
    rows = [tuple(a) for a in applied]
    final = max((e.arrival_time for e in events), default=0)
    original = ApproxShardSegmenter(WIDE, PARAMS, parts=2)
    expected = original.apply_batch(rows) + original.finish(final)
    for split in range(0, len(rows) + 1, max(1, len(rows) // 4)):
        before = ApproxShardSegmenter(WIDE, PARAMS, parts=2)
        head = before.apply_batch(rows[:split])
        snaps = [pickle.loads(pickle.dumps(before.snapshot_part(p, 2))) for p in range(2)]
        copy = ApproxShardSegmenter.from_parts(snaps, 0, WIDE, PARAMS)
        copy.thaw(1)
        assert head + copy.apply_batch(rows[split:]) + copy.finish(final) == expected, split


@settings(max_examples=60, deadline=None)
@given(lines=event_lines(("view", "cart", "purchase", "refund")))
def test_the_batch_path_emits_what_apply_does_event_by_event(lines):  # type: ignore[no-untyped-def]
    """``apply_batch`` inlines in-order approximate events; per event ``apply`` is the definition. A narrow
    sketch (width 4) makes collisions common, so estimates read other users' counts too."""
    events = arrival_order(parse_all(lines))
    applied, _, _ = admit_all(events, PARAMS)
    rows = [tuple(a) for a in applied]
    final = max((e.arrival_time for e in events), default=0)
    for ruleset in (WIDE, NARROW):
        batch = ApproxShardSegmenter(ruleset, PARAMS)
        single = ApproxShardSegmenter(ruleset, PARAMS)
        expected = [t for row in rows for t in single.apply(row, row[5])] + single.finish(final)
        assert batch.apply_batch(rows) + batch.finish(final) == expected
