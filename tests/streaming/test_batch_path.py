"""The shard's batch path (``apply_batch``, the expiry runs of ``advance`` and ``finish``) against a plain shard
that takes one step at a time: each event through ``apply``, each due change point popped and settled alone."""

from __future__ import annotations

import heapq
import itertools
import pickle
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from segments.events import arrival_order
from segments.lateness import END_OF_TIME, GateParams
from segments.outputs import Transition
from segments.rules import Fact, RuleSet, load_ruleset, parse_ruleset_text
from streaming.admission import admit_all
from streaming.evaluate import Evaluator, Window
from streaming.segmenter import PRUNE_EVERY_MS, Row, ShardSegmenter
from tests.streaming.oracle import MINUTE, edge_event_lines, event_lines, parse_all

CLICK = load_ruleset("clickstream")
RISK = load_ruleset("risk")
PARAMS = GateParams(5_000, 60_000)


def _many(window: str) -> RuleSet:
    """One width and more than ten segments (so masks' sets are made on first use), groups among them, and
    the sum after the counts (so a sum past the 64-bit range raises part way through a fact's columns)."""
    net = "  - {{name: net{}, group: net, when: {{agg: net, op: '>', value: {}}}}}\n"
    nets = "".join(net.format(n, 100 * (6 - n)) for n in range(6))
    views = "".join(f"  - {{name: views{n}, when: {{agg: views, op: '>=', value: {n + 1}}}}}\n" for n in range(4))
    text = (
        f"name: many\nversion: 1\nwindow: {window}\naggregates:\n"
        "  views: {op: count, kinds: [view]}\n"
        "  buys: {op: count, kinds: [purchase]}\n"
        "  net: {op: sum, of: amount, kinds: {purchase: 1, refund: -1}}\n"
        f"segments:\n{nets}{views}"
        "  - {name: shopper, when: {all: [{agg: views, op: '>=', value: 2}, {agg: buys, op: '==', value: 0}]}}\n"
        "  - {name: refunder, when: {agg: net, op: '<', value: 0}}\n"
    )
    return parse_ruleset_text(text, "test")


MANY = _many("10m")
NARROW = _many("1m")  # narrower than the sweep period: an in-order event's edge can be the next thing due


class PlainShard(ShardSegmenter):
    """The shard stepped as SPEC §4 words it, with none of the batch path's shortcuts: the reference."""

    def apply_batch(self, events, clock=None):
        return [tr for event in events for tr in self.apply(event, event[5])]

    def _due(self, limit: int) -> list[tuple[int, str]]:
        """Every queued change point at or before ``limit``, sorted, taken out of the queue."""
        queued = sorted([*self.ordered, *self.pending])
        due = [entry for entry in queued if entry[0] <= limit]
        self.ordered.head = len(self.ordered.users)
        self.pending = [entry for entry in queued if entry[0] > limit]
        heapq.heapify(self.pending)
        return due

    def _settle_one(self, point: int, user_id: str, stamp: int, out: list[Transition]) -> None:
        user = self.users.get(user_id)
        if user is None or (self._frozen and user.part in self._frozen):
            return
        if self._settle(user_id, user, point, stamp, "expiry", out):
            self.watermark = point
            self._settle_after_expiry(user_id, user, point, stamp, out)

    def advance(self, watermark, emitted_at, out=None):
        out = [] if out is None else out
        if watermark <= self.watermark:
            return out
        for point, user_id in self._due(watermark):
            self._settle_one(point, user_id, emitted_at, out)
        self.watermark = watermark
        if watermark >= self._next_prune:
            self._next_prune = watermark + PRUNE_EVERY_MS - (watermark - self._prune_phase) % PRUNE_EVERY_MS
            self.prune()
        return out

    def finish(self, emitted_at_of):
        out: list[Transition] = []
        ooo = self.params.max_out_of_orderness_ms
        for point, user_id in self._due(END_OF_TIME):
            self._settle_one(point, user_id, max(point + ooo, emitted_at_of), out)
        self.watermark = END_OF_TIME
        return out


def _state(shard: ShardSegmenter) -> dict[str, tuple[object, ...]]:
    return {
        user_id: (
            list(u.times),
            [list(column) for column in u.sums],
            list(u.pub_times),
            list(u.pub_values),
            u.revision,
        )
        for user_id, u in shard.users.items()
    }


def _rows(lines: list[str], scale: int) -> list[Row]:
    applied, _, _ = admit_all(arrival_order(parse_all(lines)), PARAMS)
    return [(a.user_id, a.event_time, a.kind, a.amount_micros * scale, a.merchant, a.arrival_time, a.watermark)
            for a in applied]  # fmt: skip


KINDS = ("view", "cart", "purchase", "refund", "txn")


@settings(max_examples=300, deadline=None)
@given(
    ruleset=st.sampled_from([CLICK, RISK, MANY, NARROW]),
    edges=st.booleans(),
    data=st.data(),
)
def test_the_batch_path_emits_and_keeps_what_the_plain_shard_does(ruleset, edges, data):
    """Cut into batches anywhere, each batch then a watermark step (or none), snapshots restored between
    batches, amounts scaled until sums leave the 64-bit range, event times anywhere or on each other's window
    edges: the same transitions in the same order (every revision, stamp and cause) and the same state after
    every batch."""
    if edges:
        widths = (*ruleset.widths, 11 * MINUTE)
        ooo, lateness = PARAMS.max_out_of_orderness_ms, PARAMS.allowed_lateness_ms
        lines = data.draw(edge_event_lines(KINDS, widths, ooo, lateness, 40))
    else:
        lines = data.draw(event_lines(KINDS, max_events=60))
    scale = data.draw(st.sampled_from([1, 1, 10**10, 3 * 10**9]))  # x10^10: 2,500 units is past 2^63 micros
    rows = _rows(lines, scale)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(rows)), max_size=6)) | {0, len(rows)})
    phase = data.draw(st.integers(0, PRUNE_EVERY_MS))
    fast = ShardSegmenter(ruleset, PARAMS, prune_phase_ms=phase)
    plain = PlainShard(ruleset, PARAMS, prune_phase_ms=phase)
    for start, end in itertools.pairwise(cuts):
        batch = rows[start:end]
        got, expected = fast.apply_batch(batch), plain.apply_batch(batch)
        assert got == expected
        step = data.draw(st.sampled_from([None, 0, 1, MINUTE, 11 * MINUTE, 40 * MINUTE]))
        if step is not None and batch:
            watermark, clock = max(r[6] for r in batch) + step, batch[-1][5]
            assert fast.advance(watermark, clock) == plain.advance(watermark, clock)
        assert _state(fast) == _state(plain)
        assert fast.pending_edges == plain.pending_edges
        if data.draw(st.booleans()):
            fast = pickle.loads(pickle.dumps(fast))
    final = max((r[5] for r in rows), default=0)
    assert fast.finish(final) == plain.finish(final)
    assert _state(fast) == _state(plain)


def test_a_sum_past_the_64_bit_range_on_the_in_order_path_widens_only_that_column():
    """The unrolled append raises at the sum, after the counts before it took their entry: each column ends
    with exactly one entry per fact, the sum's as Python integers."""
    shard = ShardSegmenter(MANY, PARAMS)
    t = 1_700_000_000_000
    big = 2**62
    rows = [("u", t + i, "purchase", big, None, t + i, t + i - 10_000) for i in range(3)]
    out = shard.apply_batch(rows)
    views, buys, net = shard.users["u"].sums
    assert type(views) is array and list(views) == [0, 0, 0, 0]
    assert type(buys) is array and list(buys) == [0, 1, 2, 3]
    assert type(net) is list and net == [0, big, 2 * big, 3 * big]
    assert [tr.segments for tr in out] == [("net0",)]


@settings(max_examples=200, deadline=None)
@given(
    facts=st.lists(
        st.tuples(
            st.integers(0, 30 * MINUTE),
            st.sampled_from(["view", "purchase", "refund", "cart"]),
            st.sampled_from([0, 50_000_000, 100_000_000, 100_000_001, 700_000_000]),
        ),
        max_size=12,
    ),
    ruleset=st.sampled_from([CLICK, MANY, NARROW]),
    t=st.integers(-MINUTE, 45 * MINUTE),
)
def test_the_window_mask_classifies_as_the_rules_do(facts, ruleset, t):
    """``window_classifier``: the set from the prefix-sum columns equals the rules over the facts in (t - w, t]."""
    evaluator = Evaluator(ruleset)
    window = evaluator.window_classifier
    assert window is not None
    window_mask, sets, vacant = window
    indexed = Window(evaluator, [Fact(time, kind, micros, None) for time, kind, micros in facts])
    width = evaluator.single_width
    assert width is not None
    hi = sum(1 for time in indexed.times if time <= t)
    lo = sum(1 for time in indexed.times if time <= t - width)
    as_facts = [Fact(time, kind, micros, None) for time, kind, micros in facts]
    assert sets[window_mask(indexed.sums, lo, hi)] == ruleset.segments_at(as_facts, t)
    assert vacant == ruleset.segments_at([], t)


def test_a_rule_set_with_several_widths_or_a_distinct_count_has_no_window_mask():
    assert Evaluator(RISK).window_classifier is None
    assert Evaluator(CLICK).window_classifier is not None


def test_an_edge_queued_ahead_of_everything_fires_at_the_first_watermark_past_it():
    """Under a one-minute window (narrower than the sweep period), with the sweep four minutes off: an in-order
    event's edge when nothing is queued, and a late event's edge queued in the heap ahead of the queue's first,
    each fire at the first event whose watermark passes them, stamped with its arrival."""
    t = 1_700_000_400_000
    phase = (t - 5_000) % PRUNE_EVERY_MS  # the first sweep is due a whole period after the first watermark
    rows = [
        ("a", t, "purchase", 700_000_000, None, t, -(2**62)),
        ("b", t + 30_000, "view", 0, None, t + 30_000, t - 5_000),  # a's edge (t + 1m) is the only one queued
        ("c", t - 30_000, "purchase", 700_000_000, None, t + 31_000, t + 25_000),  # late: its edge t + 30s
        ("d", t + 50_000, "view", 0, None, t + 55_000, t + 45_000),  # passes c's edge, not a's
        ("e", t + 70_000, "view", 0, None, t + 75_000, t + 65_000),  # passes a's
    ]
    fast = ShardSegmenter(NARROW, PARAMS, prune_phase_ms=phase)
    plain = PlainShard(NARROW, PARAMS, prune_phase_ms=phase)
    got = fast.apply_batch(rows)
    assert got == plain.apply_batch(rows)
    expiries = [(tr.user_id, tr.effective_time, tr.emitted_at) for tr in got if tr.cause == "expiry"]
    assert expiries == [("c", t + 30_000, t + 55_000), ("a", t + 60_000, t + 75_000)]
    # Nothing queued when a's event comes: its edge is the next thing due, before the sweep.
    rows = [
        ("a", t, "purchase", 700_000_000, None, t, t - 5_000),
        ("b", t + 70_000, "view", 0, None, t + 75_000, t + 65_000),
    ]
    fast = ShardSegmenter(NARROW, PARAMS, prune_phase_ms=phase)
    plain = PlainShard(NARROW, PARAMS, prune_phase_ms=phase)
    got = fast.apply_batch(rows)
    assert got == plain.apply_batch(rows)
    assert [(tr.user_id, tr.effective_time, tr.emitted_at) for tr in got if tr.cause == "expiry"] == [
        ("a", t + 60_000, t + 75_000)
    ]
