"""Seeded workloads: valid SPEC lines in arrival order, realistic structure, the delivery defects promised."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from segments.events import Event, Rejection, dedupe, load_event_log, parse_line
from segments.lateness import GateParams, too_late_ids
from segments.rules import load_ruleset
from segments.workloads import DEFAULT_START_MS, generate, write_workload

MIN = 60_000


def parsed(lines: list[str]) -> tuple[list[Event], list[Rejection]]:
    events: list[Event] = []
    rejected: list[Rejection] = []
    for number, text in enumerate(lines, start=1):
        item = parse_line(text, number)
        (events if isinstance(item, Event) else rejected).append(item)  # type: ignore[arg-type]
    return events, rejected


@pytest.fixture(scope="module")
def clickstream() -> list[str]:
    return list(generate("clickstream", 600, 60, 11))


@pytest.fixture(scope="module")
def risk() -> list[str]:
    return list(generate("risk", 1500, 60, 5))


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    assert list(generate("risk", 80, 20, 3)) == list(generate("risk", 80, 20, 3))
    assert list(generate("clickstream", 80, 20, 3)) != list(generate("clickstream", 80, 20, 4))


@pytest.mark.parametrize("kind", ["clickstream", "risk"])
def test_lines_come_in_arrival_order(kind: str) -> None:
    events, _ = parsed(list(generate(kind, 300, 30, 2)))
    arrivals = [e.arrival_time for e in events]
    assert arrivals == sorted(arrivals)
    assert any(e.arrival_time > e.event_time for e in events)
    times = [e.event_time for e in events]
    assert times != sorted(times), "late arrivals put event times out of order"


def test_only_the_planted_lines_are_malformed_one_of_each_kind(clickstream: list[str]) -> None:
    events, rejected = parsed(clickstream)
    assert Counter(r.reason for r in rejected) == {
        "bad_json": 1,
        "missing_field": 1,
        "naive_timestamp": 1,
        "bad_amount": 1,
    }
    assert len(events) + len(rejected) == len(clickstream)
    assert all(e.event_time >= DEFAULT_START_MS and e.event_time < DEFAULT_START_MS + 60 * MIN for e in events)


def test_no_malformed_lines_when_asked_for_none() -> None:
    _, rejected = parsed(list(generate("risk", 100, 20, 1, malformed=0)))
    assert rejected == []


def test_clickstream_has_sessions_carts_purchases_and_refunds(clickstream: list[str]) -> None:
    events, _ = parsed(clickstream)
    kinds = Counter(e.kind for e in events)
    assert kinds["view"] > kinds["cart"] > kinds["purchase"] > kinds["refund"] > 0
    purchases = [e for e in events if e.kind == "purchase"]
    assert all(e.has_amount and e.amount_micros % 10_000 == 0 for e in purchases), "whole cents"
    assert any(e.amount_micros % 1_000_000 for e in purchases), "amounts with cents"
    # sessions: most consecutive events of a user are seconds apart, not uniformly spread
    by_user: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e.event_time)
    gaps = [b - a for times in by_user.values() for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] < MIN
    assert len(by_user) == 600


def test_clickstream_yields_both_segments(clickstream: list[str]) -> None:
    events, _ = parsed(clickstream)
    log = dedupe(sorted(events, key=lambda e: (e.arrival_time, e.seq)), [], len(events))
    rules = load_ruleset("clickstream")
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in log.events:
        by_user[e.user_id].append(e)
    held: Counter[str] = Counter()
    for facts in by_user.values():
        for e in facts:
            held.update(rules.segments_at(facts, e.event_time))
    assert held["high_value"] > 0 and held["window_shopper"] > 0


def test_late_arrivals_reach_the_stream_lateness_both_ways(clickstream: list[str]) -> None:
    events, _ = parsed(clickstream)
    log = dedupe(events, [], len(events))  # already in arrival order
    delays = [e.arrival_time - e.event_time for e in log.events]
    assert sum(1 for d in delays if 0 < d <= 30_000) > sum(1 for d in delays if d > 30_000) > 0
    assert max(delays) > 5 * MIN, "a few are tens of minutes late"
    dropped = too_late_ids(log.events, GateParams())
    late = {e.event_id for e in log.events if e.arrival_time > e.event_time}
    assert dropped and dropped < late and len(late - dropped) > len(dropped), "most late events are applied"


def test_duplicates_reuse_the_id_and_some_change_the_payload(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    counts = write_workload("clickstream", path, 400, 60, 9, dup_share=0.05)
    log = load_event_log(path)
    assert len(log.duplicates) == counts["duplicates"] > 0
    first = {e.event_id: e for e in log.events}
    changed = [d for d in log.duplicates if d.event_time != first[d.event_id].event_time]
    assert 0 < len(changed) == counts["changed_duplicates"]
    assert all(d.arrival_time >= first[d.event_id].arrival_time for d in log.duplicates)


def test_content_does_not_depend_on_delivery_knobs() -> None:
    clean, _ = parsed(list(generate("risk", 200, 30, 8, late_share=0, dup_share=0, malformed=0)))
    messy, _ = parsed(list(generate("risk", 200, 30, 8, late_share=0.3, dup_share=0.2)))
    first = dedupe(messy, [], len(messy)).events
    assert all(e.arrival_time == e.event_time for e in clean)

    def content(e: Event) -> tuple[object, ...]:
        return (e.event_id, e.user_id, e.event_time, e.kind, e.amount_micros, e.merchant)

    assert sorted(map(content, clean)) == sorted(map(content, first))


def test_rfc3339_and_ms_forms_hold_the_same_events() -> None:
    as_ms, _ = parsed(list(generate("clickstream", 100, 20, 4)))
    as_text_lines = list(generate("clickstream", 100, 20, 4, time_format="rfc3339"))
    as_text, _ = parsed(as_text_lines)
    assert '"event_time":"2024-01-01T' in as_text_lines[0]
    assert [e[:8] for e in as_ms] == [e[:8] for e in as_text]


def test_size_knob_gives_about_users_times_minutes_times_rate() -> None:
    for kind in ("clickstream", "risk"):
        events, _ = parsed(list(generate(kind, 3000, 60, 1, late_share=0, dup_share=0, malformed=0)))
        assert 0.9 * 30_000 < len(events) < 1.1 * 30_000, (kind, len(events))
    doubled, _ = parsed(list(generate("clickstream", 500, 60, 1, events_per_user_per_minute=1 / 3, malformed=0)))
    assert 0.85 * 10_000 < len(doubled) < 1.15 * 10_000


def test_risk_txns_carry_attrs_and_a_ground_truth_label(risk: list[str]) -> None:
    events, _ = parsed(risk)
    assert {e.kind for e in events} == {"txn"}
    for e in events:
        assert e.attrs is not None and set(e.attrs) == {"merchant", "device", "country", "fraud"}
        assert isinstance(e.attrs["fraud"], bool) and e.merchant == e.attrs["merchant"]
    labels = Counter(e.attrs["fraud"] for e in events if e.attrs)
    assert 0 < labels[True] < labels[False] / 10


def test_risk_tiers_catch_fraud_far_more_often_than_legitimate_use(risk: list[str]) -> None:
    events, _ = parsed(risk)
    log = dedupe(events, [], len(events))
    rules = load_ruleset("risk")
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in log.events:
        by_user[e.user_id].append(e)
    flagged: Counter[tuple[bool, str]] = Counter()
    for facts in by_user.values():
        for e in facts:
            (tier,) = rules.segments_at(facts, e.event_time)
            flagged[(bool(e.attrs and e.attrs["fraud"]), tier)] += 1
    fraud = sum(n for (f, _), n in flagged.items() if f)
    legit = sum(n for (f, _), n in flagged.items() if not f)
    fraud_high = flagged[(True, "risk_high")] / fraud
    legit_high = flagged[(False, "risk_high")] / legit
    fraud_flagged = fraud_high + flagged[(True, "risk_medium")] / fraud
    legit_flagged = legit_high + flagged[(False, "risk_medium")] / legit
    assert fraud_flagged > 0.6 and fraud_flagged > 4 * legit_flagged, flagged
    assert fraud_high > 5 * legit_high, flagged
    assert flagged[(False, "risk_high")] > 0, "legitimate heavy users give false positives"


def test_write_workload_writes_the_same_lines_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "out" / "w.jsonl"
    counts = write_workload("risk", path, 120, 20, 6)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == list(generate("risk", 120, 20, 6))
    assert counts["lines"] == len(lines)
    assert counts["events"] + counts["duplicates"] + counts["malformed"] == len(lines)
    events, rejected = parsed(lines)
    assert counts["users"] == len({e.user_id for e in events if e.user_id != "u-broken"})
    assert counts["malformed"] == len(rejected)


@pytest.mark.parametrize(
    "knobs",
    [
        {"kind": "fraud"},
        {"users": 0},
        {"minutes": 0},
        {"late_share": 1.5},
        {"dup_share": -0.1},
        {"events_per_user_per_minute": 0},
        {"time_format": "iso"},
    ],
)
def test_bad_knobs_are_refused(knobs: dict[str, object]) -> None:
    args: dict[str, object] = {"kind": "clickstream", "users": 10, "minutes": 10, "seed": 1}
    args.update(knobs)
    with pytest.raises(ValueError):
        generate(**args)  # type: ignore[arg-type]
