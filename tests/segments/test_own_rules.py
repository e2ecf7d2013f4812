"""Rule sets with their own kinds and attribute fields: validation, how events are read, the data check."""

from __future__ import annotations

import json

import pytest

from segments.errors import InputError, RuleSetError
from segments.events import Event, parse_line
from segments.rules import check_reads, load_ruleset, parse_ruleset_text
from tests.segments.own_rules import OWN

HEAD = "name: x\nversion: 1\nwindow: 10m\n"


def _compile(body: str) -> None:
    parse_ruleset_text(HEAD + body, "x")


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("aggregates: {n: {op: count, kinds: [click]}}\nsegments: [{name: s, when: {agg: n, op: '>', value: 0}}]",
         "aggregates.n.kinds", "unknown kind 'click'"),
        ("kinds: [click]\naggregates: {n: {op: count, kinds: [view]}}\n"
         "segments: [{name: s, when: {agg: n, op: '>', value: 0}}]", "aggregates.n.kinds", "declared kinds are click"),
        ("kinds: [click]\nattributes: {brand: string}\naggregates: {n: {op: sum, of: brand, kinds: [click]}}\n"
         "segments: [{name: s, when: {agg: n, op: '>', value: 0}}]", "aggregates.n.of", "brand is declared a string"),
        ("kinds: [click]\naggregates: {n: {op: sum, of: price, kinds: [click]}}\n"
         "segments: [{name: s, when: {agg: n, op: '>', value: 0}}]", "aggregates.n.of", "sum needs `of: amount`"),
        ("kinds: [click]\nattributes: {a: number, b: number}\n"
         "aggregates: {x: {op: sum, of: a, kinds: [click]}, y: {op: sum, of: b, kinds: [click]}}\n"
         "segments: [{name: s, when: {agg: x, op: '>', value: 0}}]", "aggregates.y.of", "x reads a, y reads b"),
        ("kinds: [a_kind_longer_than_16]\naggregates: {n: {op: count, kinds: [a_kind_longer_than_16]}}\n"
         "segments: [{name: s, when: {agg: n, op: '>', value: 0}}]", "kinds.0", ""),
    ],
)
def test_bad_own_declarations_name_the_key(body: str, key: str, message: str) -> None:
    with pytest.raises(RuleSetError) as caught:
        _compile(body)
    assert key in str(caught.value) and message in str(caught.value)


def test_a_declared_number_can_be_distinct_counted_and_thresholds_of_its_sum_are_money() -> None:
    _compile(
        "kinds: [order]\nattributes: {price: number}\n"
        "aggregates: {v: {op: sum, of: price, kinds: [order]}, p: {op: count_distinct, of: price, kinds: [order]}}\n"
        "segments: [{name: s, when: {agg: v, op: '>', value: 0.5}}]"
    )


def test_events_are_read_with_the_rule_sets_kinds_and_fields() -> None:
    bounds = OWN.time_bounds
    line = {"event_id": "1", "user_id": "u", "event_time": 5, "kind": "order", "amount": "1",
            "attrs": {"price": 12.5, "shop": 4}}  # fmt: skip
    event = parse_line(json.dumps(line), 1, bounds)
    assert isinstance(event, Event)
    assert (event.amount_micros, event.merchant) == (12_500_000, "4")
    spec = parse_line(json.dumps({**line, "kind": "purchase"}), 1)  # SPEC's reading: amount, attrs.merchant
    assert isinstance(spec, Event) and (spec.amount_micros, spec.merchant) == (1_000_000, None)
    assert not isinstance(parse_line(json.dumps(line), 1), Event)  # "order" is no SPEC kind
    missing = parse_line(json.dumps({**line, "attrs": {"shop": "s"}}), 2, bounds)
    assert not isinstance(missing, Event)
    assert (missing.reason, missing.detail) == ("missing_field", "order needs attrs.price")
    bad = parse_line(json.dumps({**line, "attrs": {"price": "-3"}}), 3, bounds)
    assert not isinstance(bad, Event) and bad.reason == "bad_amount" and bad.detail.startswith("attrs.price:")
    view = parse_line(json.dumps({**line, "kind": "view"}), 4, bounds)
    assert not isinstance(view, Event) and view.reason == "unknown_kind"  # not declared by this rule set
    click = parse_line(json.dumps({**line, "kind": "click", "attrs": {}}), 5, bounds)
    assert isinstance(click, Event) and (click.has_amount, click.merchant) == (False, None)


def test_shipped_rule_sets_read_events_as_before() -> None:
    assert not load_ruleset("clickstream").time_bounds.reads_own
    assert not load_ruleset("risk").time_bounds.reads_own


def test_a_field_no_event_has_is_one_error_naming_it() -> None:
    bounds = OWN.time_bounds
    lines = [{"event_id": str(i), "user_id": "u", "event_time": 5, "kind": "click", "attrs": {"shop": "s"}}
             for i in range(3)]  # fmt: skip
    events = [parse_line(json.dumps(obj), n, bounds) for n, obj in enumerate(lines, 1)]
    with pytest.raises(InputError, match=r"reads attrs.price \(value, value_2m\), which no accepted event has; 2"):
        check_reads(OWN, events, ["order needs attrs.price", "order needs attrs.price"], "f.jsonl")
    check_reads(OWN, [*events, parse_line(json.dumps({**lines[0], "attrs": {"price": 1}}), 9, bounds)], [], "f")
