"""The stream's pure core against brute force: the settled timeline equals the rules over the applied events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from segments.events import arrival_order
from segments.lateness import GateParams
from segments.outputs import Transition, timelines
from segments.rules import load_ruleset
from streaming.admission import admit_all, shard_of
from streaming.segmenter import Applied, ShardSegmenter, run_shard
from tests.streaming.oracle import (
    BASE,
    MINUTE,
    brute_force,
    edge_lines_for,
    event_lines,
    parse_all,
    probe_instants,
    spec_admission,
)

CLICK = load_ruleset("clickstream")
RISK = load_ruleset("risk")
PARAMS = GateParams(5_000, 60_000)


def _run(ruleset, lines, shards=1, params=PARAMS):
    events = arrival_order(parse_all(lines))
    applied, dead, _ = admit_all(events, params)
    spec = spec_admission(events, params.max_out_of_orderness_ms, params.allowed_lateness_ms)
    expected = [e for e, _ in spec.applied]
    assert [(a.user_id, a.event_time) for a in applied] == [(e.user_id, e.event_time) for e in expected]
    transitions: list[Transition] = []
    final = max(e.arrival_time for e in events)
    for shard in range(shards):
        mine = [a for a in applied if shard_of(a.user_id, shards) == shard]
        transitions.extend(run_shard(ruleset, params, mine, final))
    return expected, transitions, dead


def _assert_settled_equals_rules(ruleset, applied_events, transitions):
    lines = timelines(transitions)
    by_user: dict[str, list] = {}
    for e in applied_events:
        by_user.setdefault(e.user_id, []).append(e)
    for user in set(by_user) | set(lines):
        facts = by_user.get(user, [])
        for t in probe_instants(ruleset, facts):
            got = lines[user].at(t) if user in lines else frozenset()
            assert got == brute_force(ruleset, facts, t), (user, t)


@settings(max_examples=150, deadline=None)
@given(lines=event_lines(("view", "cart", "purchase", "refund")), shards=st.integers(1, 3))
def test_clickstream_timeline_equals_brute_force(lines, shards):
    """Out-of-order, late and duplicate events: the settled clickstream timeline is the rules, everywhere."""
    applied, transitions, _ = _run(CLICK, lines, shards)
    _assert_settled_equals_rules(CLICK, applied, transitions)


@settings(max_examples=150, deadline=None)
@given(lines=event_lines(("txn", "view")))
def test_risk_timeline_equals_brute_force(lines):
    """The risk tiers, including the one-minute sub-window and distinct merchants, settle to the rules."""
    applied, transitions, _ = _run(RISK, lines)
    _assert_settled_equals_rules(RISK, applied, transitions)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), ruleset=st.sampled_from([CLICK, RISK]), shards=st.integers(1, 2))
def test_timeline_on_window_and_too_late_edges_equals_brute_force(data, ruleset, shards):
    """Events at exactly t - window, t - 1 min, watermark - allowed lateness, and 1 ms either side: the gate
    applies what SPEC §4 applies and the settled timeline is the rules, everywhere."""
    lines = data.draw(edge_lines_for(ruleset, PARAMS))
    applied, transitions, _ = _run(ruleset, lines, shards)
    _assert_settled_equals_rules(ruleset, applied, transitions)


@settings(max_examples=60, deadline=None)
@given(lines=event_lines(("view", "purchase", "refund")))
def test_revisions_increase_per_user_and_effective_time(lines):
    """A correction always carries a higher revision than what it replaces."""
    _, transitions, _ = _run(CLICK, lines)
    seen: dict[tuple[str, int], int] = {}
    for tr in transitions:
        key = (tr.user_id, tr.effective_time)
        assert tr.revision > seen.get(key, 0)
        seen[key] = tr.revision


@settings(max_examples=100, deadline=None)
@given(lines=event_lines(("view", "cart", "purchase", "refund")), ruleset=st.sampled_from([CLICK, RISK]))
def test_the_batch_path_emits_what_applying_one_event_at_a_time_emits(lines, ruleset):
    """``apply_batch`` (with its inlined in-order path) and ``apply`` per event: the same transitions, in order."""
    events = arrival_order(parse_all(lines))
    applied, _, _ = admit_all(events, PARAMS)
    one_at_a_time = ShardSegmenter(ruleset, PARAMS)
    expected = [tr for a in applied for tr in one_at_a_time.apply(a, a.arrival_time)]
    batched = ShardSegmenter(ruleset, PARAMS)
    got = batched.apply_batch([tuple(a) for a in applied])
    assert got == expected
    final = max((e.arrival_time for e in events), default=0)
    assert batched.finish(final) == one_at_a_time.finish(final)


@settings(max_examples=60, deadline=None)
@given(lines=event_lines(("view", "cart", "purchase", "refund")), ruleset=st.sampled_from([CLICK, RISK]))
def test_a_pickled_snapshot_at_any_point_continues_exactly_as_the_original(lines, ruleset):
    """The columnar snapshot (its queue of change points rebuilt on load) changes nothing that follows."""
    import pickle

    events = arrival_order(parse_all(lines))
    applied, _, _ = admit_all(events, PARAMS)
    rows = [tuple(a) for a in applied]
    final = max((e.arrival_time for e in events), default=0)
    original = ShardSegmenter(ruleset, PARAMS)
    expected = original.apply_batch(rows) + original.finish(final)
    for split in range(len(rows) + 1):
        before = ShardSegmenter(ruleset, PARAMS)
        head = before.apply_batch(rows[:split])
        copy = pickle.loads(pickle.dumps(before, pickle.HIGHEST_PROTOCOL))
        assert sorted([*copy.ordered, *copy.pending]) == sorted([*before.ordered, *before.pending]), split
        assert head + copy.apply_batch(rows[split:]) + copy.finish(final) == expected, split


def _applied(user, t, kind="purchase", micros=150_000_000, arrival=None, watermark=-(2**62)):
    return Applied(user, t, kind, micros, None, t if arrival is None else arrival, watermark)


def test_expiry_fires_when_the_watermark_passes_with_no_new_event_of_the_user():
    """A purchase leaves the 10-minute window: high_value ends at exactly t + 10 min, driven by the watermark."""
    shard = ShardSegmenter(CLICK, PARAMS)
    out = shard.apply(_applied("u", BASE), BASE)
    assert [(t.segments, t.effective_time, t.cause) for t in out] == [(("high_value",), BASE, "event")]
    assert shard.advance(BASE + 10 * MINUTE - 1, BASE + 11 * MINUTE) == []
    expired = shard.advance(BASE + 10 * MINUTE, BASE + 11 * MINUTE)
    assert [(t.segments, t.effective_time, t.cause) for t in expired] == [((), BASE + 10 * MINUTE, "expiry")]


def test_late_event_changes_the_past_with_a_correction():
    """A late refund that drops a past instant below the threshold is emitted as a higher revision."""
    shard = ShardSegmenter(CLICK, PARAMS)
    shard.apply(_applied("u", BASE), BASE)
    shard.apply(_applied("u", BASE + 30_000, "view", 0), BASE + 30_000)
    late = _applied("u", BASE - 1_000, "refund", 60_000_000, arrival=BASE + 40_000, watermark=BASE + 25_000)
    out = shard.apply(late, BASE + 40_000)
    assert [(t.segments, t.effective_time, t.revision, t.cause) for t in out] == [
        ((), BASE, 2, "correction")
    ]


def test_state_is_bounded_users_are_forgotten_after_their_window_and_lateness():
    """After the window plus allowed lateness pass, a user with an empty timeline leaves the state."""
    shard = ShardSegmenter(CLICK, PARAMS)
    shard.apply(_applied("u", BASE), BASE)
    shard.advance(BASE + 30 * MINUTE, BASE + 30 * MINUTE)
    shard.prune()
    assert "u" not in shard.users
    assert shard.retained_facts == 0


def test_shards_given_different_phases_sweep_their_state_at_different_watermarks():
    """A sweep is due each time the watermark passes a multiple of PRUNE_EVERY_MS plus the shard's phase, so
    shards do not all visit every user in the same batch."""
    from streaming.segmenter import PRUNE_EVERY_MS

    def sweeps(phase: int) -> list[int]:
        shard = ShardSegmenter(CLICK, PARAMS, prune_phase_ms=phase)
        seen: list[int] = []
        shard.prune = lambda: seen.append(shard.watermark)  # type: ignore[method-assign]
        for watermark in range(0, 4 * PRUNE_EVERY_MS, 7_000):
            shard.advance(watermark, watermark)
        return seen

    step = 7_000  # a sweep comes at the first watermark (a multiple of 7 s) at or past its instant
    for phase in (0, PRUNE_EVERY_MS // 4, PRUNE_EVERY_MS // 2):
        due = [k * PRUNE_EVERY_MS + phase for k in range(4) if 0 < k * PRUNE_EVERY_MS + phase < 4 * PRUNE_EVERY_MS]
        expected = [0] + [-(-instant // step) * step for instant in due]
        assert sweeps(phase) == expected
    assert sweeps(0)[1:] != sweeps(PRUNE_EVERY_MS // 2)[1:]


def test_a_shard_of_several_parts_sweeps_one_part_at_each_tick_and_each_part_once_a_period():
    """With ``parts`` parts, part ``j % parts`` is swept at tick ``j``'s instant ``phase + j * PRUNE_EVERY_MS //
    parts`` (the first sweep, at the first watermark, takes every part): no batch visits the whole shard."""
    from streaming.segmenter import PRUNE_EVERY_MS

    parts, phase, step = 4, PRUNE_EVERY_MS // 3, 7_000
    shard = ShardSegmenter(CLICK, PARAMS, parts, prune_phase_ms=phase)
    seen: list[tuple[int, int | None]] = []
    shard.prune = lambda part=None: seen.append((shard.watermark, part))  # type: ignore[method-assign]
    for watermark in range(0, 3 * PRUNE_EVERY_MS, step):
        shard.advance(watermark, watermark)
    first_tick = (-phase + 1) * parts // PRUNE_EVERY_MS  # the last tick at or before watermark 0 (-1 here)
    expected: list[tuple[int, int | None]] = [(0, None)]
    j = first_tick + 1
    while (instant := phase + j * PRUNE_EVERY_MS // parts) < 3 * PRUNE_EVERY_MS - step:
        expected.append((-(-instant // step) * step, j % parts))
        j += 1
    assert seen == expected
    swept = [part for _, part in seen[1:]]
    assert all(sorted(swept[k : k + parts]) == list(range(parts)) for k in range(len(swept) - parts + 1))


@settings(max_examples=120, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 9), st.integers(0, 7), st.integers(0, 9), st.sampled_from(["purchase", "view", "refund"])
        ),
        max_size=80,
    ),
    parts=st.integers(2, 6),
    phase=st.integers(0, 300_000),
)
def test_sweeping_part_by_part_publishes_what_sweeping_whole_shards_does(steps, parts, phase):
    """Sweeps only drop what no admissible event can need, so when they come cannot change what is published:
    a shard of several parts (one part a tick) emits the transitions of a shard of one (every user at once)
    at the same instants with the same stamps, and the same timelines. Revisions may differ only for a user
    forgotten at different times and created again (its revisions start again, at later instants)."""
    whole = ShardSegmenter(CLICK, PARAMS, 1, prune_phase_ms=phase)
    split = ShardSegmenter(CLICK, PARAMS, parts, prune_phase_ms=phase)
    outs: tuple[list[Transition], list[Transition]] = ([], [])
    t = top = BASE
    for user, gap_minutes, late, kind in steps:
        top += gap_minutes * MINUTE
        t = top - late * 10_000  # up to 90 s behind the latest: some late, some too late for the gate (skipped)
        watermark = top - PARAMS.max_out_of_orderness_ms
        if t < watermark - PARAMS.allowed_lateness_ms:
            continue
        row = _applied(f"u{user}", t, kind, arrival=top, watermark=watermark)
        for shard, out in zip((whole, split), outs, strict=True):
            shard.advance(watermark, top, out)
            out.extend(shard.apply(row, top))
    for shard, out in zip((whole, split), outs, strict=True):
        out.extend(shard.finish(top))

    def unrevised(out: list[Transition]) -> list[tuple[object, ...]]:
        return [(x.user_id, x.segments, x.effective_time, x.emitted_at, x.cause) for x in out]

    def settled(out: list[Transition]) -> dict[str, tuple[list[int], list[frozenset[str]]]]:
        return {user: (line.times, line.values) for user, line in timelines(out).items()}

    assert unrevised(outs[1]) == unrevised(outs[0])
    assert settled(outs[1]) == settled(outs[0])


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 13), st.sampled_from(["purchase", "view"])), max_size=60
    ),
    parts=st.integers(2, 5),
)
def test_a_part_snapshot_holds_that_parts_users_in_the_shards_order(steps, parts):
    """``snapshot_part`` (users bucketed once a turn, the ones created since kept aside) gives the snapshot of
    the part's users as ``users`` has them, while users come, are swept away when their window empties, and
    come back (at the end of ``users``)."""
    shard = ShardSegmenter(CLICK, PARAMS, parts)
    t = BASE
    for step, (user, gap_minutes, kind) in enumerate(steps):
        t += gap_minutes * MINUTE
        row = _applied(f"u{user}", t, kind, arrival=t, watermark=t - PARAMS.max_out_of_orderness_ms)
        shard.apply(row, t)
        for part in (step % parts, (step * 7 + 3) % parts):  # the pipeline's turn, and one out of turn
            definition = [(u, w) for u, w in shard.users.items() if w.part == part]
            assert shard.snapshot_part(part, parts) == shard._snapshot(definition), (step, part)


def test_a_user_swept_and_created_again_within_a_turn_keeps_its_new_place_in_the_part_snapshot():
    """Bucketed at part 0, then x and y come, x is swept away and comes back: it is after y in ``users`` now,
    and so in the part's snapshot."""
    parts = 2
    x, y = [u for u in (f"u{n}" for n in range(100)) if ShardSegmenter(CLICK, PARAMS, parts)._new_part(u) == 1][:2]
    shard = ShardSegmenter(CLICK, PARAMS, parts)
    shard.snapshot_part(0, parts)
    for user, t in ((x, BASE), (y, BASE + 15 * MINUTE)):
        shard.apply(_applied(user, t, arrival=t, watermark=t - 5_000), t)
    assert x not in shard.users, "the sweep took x away"
    t = BASE + 15 * MINUTE + 1_000
    shard.apply(_applied(x, t, arrival=t, watermark=t - 5_000), t)
    assert list(shard.users) == [y, x]
    definition = [(u, w) for u, w in shard.users.items() if w.part == 1]
    assert shard.snapshot_part(1, parts) == shard._snapshot(definition)
