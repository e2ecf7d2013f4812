"""SPEC §2: the shipped rule sets' semantics and window edges, rule-set validation and resolution."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.errors import RuleSetError
from segments.events import DEFAULT_TIME_BOUNDS
from segments.rules import Fact, RuleSet, compile_ruleset, load_ruleset, shipped_ruleset

T = 1_704_067_200_000
MIN = 60_000
WINDOW = 10 * MIN
UNIT = 1_000_000  # micro-units per currency unit

CLICK = load_ruleset("clickstream")
RISK = load_ruleset("risk")


def money(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * UNIT + int((frac + "000000")[:6])


def purchase(t: int, amount: str) -> Fact:
    return Fact(t, "purchase", money(amount), None)


def refund(t: int, amount: str) -> Fact:
    return Fact(t, "refund", money(amount), None)


def view(t: int) -> Fact:
    return Fact(t, "view", 0, None)


def txn(t: int, amount: str = "1", merchant: str | None = "m") -> Fact:
    return Fact(t, "txn", money(amount), merchant)


# ---- an independent oracle, written from SPEC §2 ------------------------------------------------


def oracle_clickstream(facts: Sequence[Fact], t: int) -> frozenset[str]:
    inside = [f for f in facts if t - WINDOW < f.event_time <= t]
    spend = sum(f.amount_micros for f in inside if f.kind == "purchase")
    spend -= sum(f.amount_micros for f in inside if f.kind == "refund")
    views = sum(1 for f in inside if f.kind == "view")
    purchases = sum(1 for f in inside if f.kind == "purchase")
    out = set()
    if spend > 100 * UNIT:
        out.add("high_value")
    if views >= 3 and purchases == 0:
        out.add("window_shopper")
    return frozenset(out)


def oracle_risk(facts: Sequence[Fact], t: int) -> frozenset[str]:
    txns = [f for f in facts if f.kind == "txn" and t - WINDOW < f.event_time <= t]
    if not txns:
        return frozenset()
    last_minute = sum(1 for f in txns if t - MIN < f.event_time <= t)
    total = sum(f.amount_micros for f in txns)
    merchants = len({f.merchant for f in txns if f.merchant is not None})
    if last_minute >= 5 or total > 2000 * UNIT:
        return frozenset({"risk_high"})
    if last_minute >= 3 or total > 500 * UNIT or merchants >= 4:
        return frozenset({"risk_medium"})
    return frozenset({"risk_low"})


# ---- clickstream ---------------------------------------------------------------------------------


def test_window_edge_exactly_ten_minutes_before_is_out_at_t_is_in() -> None:
    facts = [purchase(T, "150")]
    assert "high_value" in CLICK.segments_at(facts, T), "an event at t is in"
    assert "high_value" in CLICK.segments_at(facts, T + WINDOW - 1)
    assert "high_value" not in CLICK.segments_at(facts, T + WINDOW), "an event at exactly t - 10 min is out"
    assert CLICK.segments_at(facts, T - 1) == frozenset(), "an event after t is not seen"


def test_thirty_three_thirty_three_twice_and_thirty_four_is_not_high_value_one_more_cent_is() -> None:
    facts = [purchase(T, "33.33"), purchase(T + 1, "33.33"), purchase(T + 2, "33.34")]
    assert CLICK.segments_at(facts, T + 2) == frozenset(), "exactly 100 is not more than 100"
    assert CLICK.segments_at([*facts, purchase(T + 3, "0.01")], T + 3) == {"high_value"}


def test_refunds_are_subtracted_and_other_kinds_do_not_count() -> None:
    facts = [purchase(T, "150"), refund(T + 1, "50"), Fact(T + 2, "cart", money("900"), None)]
    assert CLICK.segments_at(facts, T + 2) == frozenset()
    assert CLICK.segments_at(facts, T) == {"high_value"}
    assert CLICK.segments_at(facts, T + WINDOW) == frozenset(), "the purchase left, the refund is still in"


def test_window_shopper_needs_three_views_and_no_purchase() -> None:
    views = [view(T), view(T + 1), view(T + 2)]
    assert CLICK.segments_at(views[:2], T + 2) == frozenset()
    assert CLICK.segments_at(views, T + 2) == {"window_shopper"}
    assert CLICK.segments_at([*views, purchase(T + 3, "1")], T + 3) == frozenset()
    # the purchase leaves the window at T + 3 + 10 min, but so have the first views by then
    late_views = [view(T + WINDOW + k) for k in range(3)]
    assert CLICK.segments_at([*views, purchase(T + 3, "1"), *late_views], T + WINDOW + 3) == {"window_shopper"}
    assert CLICK.segments_at([*views, purchase(T + 3, "1"), *late_views], T + WINDOW + 2) == frozenset()


def test_net_spend_counts_refunds_whose_purchase_left_the_window() -> None:
    facts = [purchase(T - WINDOW, "300"), refund(T - 1, "50"), purchase(T, "120")]
    assert CLICK.segments_at(facts, T) == frozenset(), "120 - 50: the 300 is exactly 10 min old, out"
    assert CLICK.segments_at(facts, T - 1) == {"high_value"}, "300 - 50"


# ---- risk ----------------------------------------------------------------------------------------


def test_no_txn_in_the_window_means_no_tier() -> None:
    assert RISK.segments_at([], T) == frozenset()
    assert RISK.segments_at([purchase(T, "5000"), view(T)], T) == frozenset()
    assert RISK.segments_at([txn(T)], T) == {"risk_low"}
    assert RISK.segments_at([txn(T)], T + WINDOW - 1) == {"risk_low"}
    assert RISK.segments_at([txn(T)], T + WINDOW) == frozenset(), "a txn at exactly t - 10 min is out"


def test_one_minute_sub_window_edges() -> None:
    four = [txn(T - MIN), txn(T - 50_000), txn(T - 45_000), txn(T - 30_000), txn(T)]
    assert RISK.segments_at(four, T) == {"risk_medium"}, "t - 1 min is out of (t - 1 min, t]: 4 in"
    assert RISK.segments_at([*four, txn(T - MIN + 1)], T) == {"risk_high"}, "5 in the last minute"
    five = [txn(T + k) for k in range(5)]
    assert RISK.segments_at(five, T + 4) == {"risk_high"}
    assert RISK.segments_at(five, T + MIN - 1) == {"risk_high"}
    assert RISK.segments_at(five, T + MIN) == {"risk_medium"}, "the first one left the minute"
    assert RISK.segments_at(five, T + MIN + 1) == {"risk_medium"}, "three in the minute: still >= 3"
    assert RISK.segments_at(five, T + MIN + 2) == {"risk_low"}
    assert RISK.segments_at(five, T + 4 + WINDOW - 1) == {"risk_low"}
    assert RISK.segments_at(five, T + 4 + WINDOW) == frozenset()


def test_amount_sum_tiers_are_strictly_greater() -> None:
    assert RISK.segments_at([txn(T, "500")], T) == {"risk_low"}
    assert RISK.segments_at([txn(T, "500.000001")], T) == {"risk_medium"}
    assert RISK.segments_at([txn(T - 5 * MIN, "1000"), txn(T, "1000")], T) == {"risk_medium"}
    assert RISK.segments_at([txn(T - 5 * MIN, "1000"), txn(T, "1000.01")], T) == {"risk_high"}
    assert RISK.segments_at([txn(T - WINDOW, "1000"), txn(T, "1000.01")], T) == {"risk_medium"}


def test_distinct_merchants_make_medium() -> None:
    spaced = [txn(T + k * 2 * MIN, "1", m) for k, m in enumerate(["a", "b", "c", "a", None])]
    assert RISK.segments_at(spaced, T + 8 * MIN) == {"risk_low"}, "3 distinct; a repeat and None do not count"
    four = [*spaced, txn(T + 9 * MIN, "1", "d")]
    assert RISK.segments_at(four, T + 9 * MIN) == {"risk_medium"}
    assert RISK.segments_at(four, T + WINDOW) == {"risk_medium"}, "a's first txn left, its repeat is in"
    assert RISK.segments_at(four, T + WINDOW + 2 * MIN) == {"risk_low"}, "b left: a, c, d"


def test_tiers_are_exclusive_high_wins() -> None:
    facts = [txn(T + k, "600", f"m{k}") for k in range(5)]
    assert RISK.segments_at(facts, T + 4) == {"risk_high"}


# ---- properties against the oracle ---------------------------------------------------------------

kinds = st.sampled_from(["view", "cart", "purchase", "refund", "txn"])
offsets = st.one_of(
    st.integers(-2 * WINDOW, 2 * WINDOW),
    st.sampled_from([0, 1, -1, WINDOW, WINDOW - 1, WINDOW + 1, MIN, MIN - 1, MIN + 1, -WINDOW, -MIN]),
)
amounts = st.one_of(st.integers(0, 3000 * UNIT), st.sampled_from([0, 1, 100 * UNIT, 500 * UNIT, 2000 * UNIT]))
facts_strategy = st.lists(
    st.builds(
        lambda o, k, a, m: Fact(T + o, k, a if k in ("purchase", "refund", "txn") else 0, m),
        offsets,
        kinds,
        amounts,
        st.one_of(st.none(), st.sampled_from(["m1", "m2", "m3", "m4", "m5"])),
    ),
    max_size=30,
)
probe = st.one_of(st.integers(-WINDOW, 3 * WINDOW), st.sampled_from([0, WINDOW, WINDOW - 1, MIN, MIN - 1]))


@settings(max_examples=400, deadline=None)
@given(facts_strategy, probe)
def test_clickstream_matches_the_spec_oracle(facts: list[Fact], offset: int) -> None:
    assert CLICK.segments_at(facts, T + offset) == oracle_clickstream(facts, T + offset)


@settings(max_examples=400, deadline=None)
@given(facts_strategy, probe)
def test_risk_matches_the_spec_oracle(facts: list[Fact], offset: int) -> None:
    assert RISK.segments_at(facts, T + offset) == oracle_risk(facts, T + offset)


@settings(max_examples=200, deadline=None)
@given(facts_strategy, probe)
def test_sorted_evaluation_reads_only_the_window_and_agrees(facts: list[Fact], offset: int) -> None:
    ordered = sorted(facts, key=lambda f: f.event_time)
    times = [f.event_time for f in ordered]
    for ruleset in (CLICK, RISK):
        assert ruleset.segments_at_sorted(times, ordered, T + offset) == ruleset.segments_at(facts, T + offset)


@settings(max_examples=100, deadline=None)
@given(facts_strategy)
def test_order_of_facts_does_not_matter(facts: list[Fact]) -> None:
    for ruleset in (CLICK, RISK):
        assert ruleset.segments_at(facts, T) == ruleset.segments_at(list(reversed(facts)), T)


# ---- validation names the bad key -----------------------------------------------------------------


def mutated(ruleset: RuleSet, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    definition = copy.deepcopy(dict(ruleset.definition))
    change(definition)
    return definition


BAD: list[tuple[RuleSet, Callable[[dict[str, Any]], None], str, str]] = [
    (CLICK, lambda d: d["segments"][0]["when"].update(op="=>"), "segments.0.when.op", "Input should be"),
    (CLICK, lambda d: d["segments"][1]["when"]["all"][0].update(op="~"), "segments.1.when.all.0.op", "Input"),
    (CLICK, lambda d: d["segments"][0]["when"].update(agg="spend"), "segments.0.when", "unknown aggregate 'spend'"),
    (CLICK, lambda d: d["segments"][1]["when"]["all"][1].update(agg="buys"), "segments.1.when.all.1", "buys"),
    (RISK, lambda d: d["segments"][1]["when"]["any"][2].update(agg="shops"), "segments.1.when.any.2", "shops"),
    (CLICK, lambda d: d["aggregates"]["views"].update(op="median"), "aggregates.views.op", "Input should be"),
    (CLICK, lambda d: d["aggregates"]["views"].update(kinds=["click"]), "aggregates.views.kinds", "'click'"),
    (CLICK, lambda d: d["aggregates"]["net_spend"].update(kinds={"purchase": 1, "tip": 1}),
     "aggregates.net_spend.kinds", "unknown kind 'tip'"),
    (CLICK, lambda d: d.update(colour="red"), "colour", "Extra inputs"),
    (CLICK, lambda d: d["segments"][0].update(colour="red"), "segments.0.colour", "Extra inputs"),
    (CLICK, lambda d: d["aggregates"]["views"].update(colour="red"), "aggregates.views.colour", "Extra"),
    (CLICK, lambda d: d["segments"][1]["when"]["all"][0].update(extra=1), "segments.1.when.all.0.extra", "Extra"),
    (CLICK, lambda d: d["segments"][1]["when"].update(any=[]), "segments.1.when.any", "Extra"),
    (RISK, lambda d: d["aggregates"]["txns_1m"].update(window="11m"), "aggregates.txns_1m.window", "longer"),
    (RISK, lambda d: d["aggregates"]["txns_1m"].update(window="1 minute"), "aggregates.txns_1m.window", "bad"),
    (CLICK, lambda d: d.update(window="ten minutes"), "window", "bad duration"),
    (CLICK, lambda d: d.update(window="0"), "window", "positive"),
    (CLICK, lambda d: d.update(window="100000000h"), "window", "outside 1s..31d"),
    (CLICK, lambda d: d.update(window="32d"), "window", "outside 1s..31d"),
    (CLICK, lambda d: d.update(window="999ms"), "window", "outside 1s..31d"),
    (RISK, lambda d: d["aggregates"]["txns_1m"].update(window="500ms"), "aggregates.txns_1m.window", "outside"),
    (CLICK, lambda d: d.update(event_times={"earliest": "2020-01-01"}), "event_times.earliest", "not an RFC 3339"),
    (CLICK, lambda d: d.update(event_times={"max_ahead": "soon"}), "event_times.max_ahead", "bad duration"),
    (CLICK, lambda d: d.update(event_times={"latest": "1999-01-01T00:00:00Z", "earliest": "2000-01-01T00:00:00Z"}),
     "event_times", "earliest < latest"),
    (CLICK, lambda d: d.update(event_times={"colour": "red"}), "event_times.colour", "Extra"),
    (CLICK, lambda d: d.pop("version"), "version", "Field required"),
    (CLICK, lambda d: d.update(version=0), "version", "greater than or equal to 1"),
    (CLICK, lambda d: d.update(name="Click Stream"), "name", "pattern"),
    (CLICK, lambda d: d["segments"][1].update(name="high_value"), "segments.1.name", "duplicate"),
    (CLICK, lambda d: d["aggregates"]["net_spend"].pop("of"), "aggregates.net_spend.of", "sum needs"),
    (CLICK, lambda d: d["aggregates"]["views"].update(kinds={"view": 2}), "aggregates.views.kinds", "weights"),
    (CLICK, lambda d: d["segments"][0]["when"].update(value="100.0000001"), "segments.0.when", "6 digits"),
    (CLICK, lambda d: d["segments"][0]["when"].update(value=True), "segments.0.when.value", "true/false"),
    (CLICK, lambda d: d["segments"][1]["when"]["all"][0].update(value=2.5), "segments.1.when.all.0", "whole"),
    (CLICK, lambda d: d["segments"][0].update(when={}), "segments.0.when.agg", "Field required"),
    (CLICK, lambda d: d.update(segments=[]), "segments", "at least 1"),
]  # fmt: skip


@pytest.mark.parametrize(("base", "change", "key", "message"), BAD)
def test_validation_error_names_the_bad_key(
    base: RuleSet, change: Callable[[dict[str, Any]], None], key: str, message: str
) -> None:
    with pytest.raises(RuleSetError) as caught:
        compile_ruleset(mutated(base, change))
    assert caught.value.key == key, str(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(RuleSetError, match="must be a mapping"):
        compile_ruleset(["name", "x"])


def test_money_thresholds_are_exact_micro_units() -> None:
    ruleset = compile_ruleset(mutated(CLICK, lambda d: d["segments"][0]["when"].update(value="99.999999")))
    assert ruleset.segments_at([purchase(T, "99.999999")], T) == frozenset()
    assert ruleset.segments_at([purchase(T, "100")], T) == {"high_value"}
    as_float = compile_ruleset(mutated(CLICK, lambda d: d["segments"][0]["when"].update(value=0.1)))
    assert as_float.segments_at([purchase(T, "0.1")], T) == frozenset()
    assert as_float.segments_at([purchase(T, "0.100001")], T) == {"high_value"}


# ---- resolution, versions and digests ------------------------------------------------------------


def test_shipped_sets_resolve_by_name_and_version() -> None:
    assert load_ruleset("clickstream@v1").digest == CLICK.digest
    assert load_ruleset("risk@1").ref == "risk@v1"
    assert CLICK.ref == "clickstream@v1" and CLICK.segment_names == ("high_value", "window_shopper")
    assert RISK.widths == (WINDOW, MIN) and RISK.span_ms == WINDOW and RISK.kinds == {"txn"}
    with pytest.raises(RuleSetError, match="ships as version 1"):
        load_ruleset("clickstream@v2")
    with pytest.raises(RuleSetError, match="unknown rule set 'fraud'"):
        load_ruleset("fraud")


def test_a_file_in_yaml_or_json_gives_the_same_digest(tmp_path: Path) -> None:
    as_yaml = tmp_path / "mine.yaml"
    as_yaml.write_text(yaml.safe_dump(dict(RISK.definition)), encoding="utf-8")
    as_json = tmp_path / "mine.json"
    as_json.write_text(json.dumps(dict(RISK.definition)), encoding="utf-8")
    assert load_ruleset(str(as_yaml)).digest == load_ruleset(str(as_json)).digest == RISK.digest
    changed = mutated(RISK, lambda d: d["segments"][0]["when"]["any"][1].update(value=2001))
    assert compile_ruleset(changed).digest != RISK.digest


def test_unreadable_or_broken_files_are_rule_set_errors(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError, match="cannot read"):
        load_ruleset(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(RuleSetError, match="not valid YAML"):
        load_ruleset(str(broken))


def test_shipped_definitions_are_stable() -> None:
    assert shipped_ruleset("clickstream").digest == CLICK.digest
    assert CLICK.to_canonical_json() == json.dumps(dict(CLICK.definition), sort_keys=True, separators=(",", ":"))


def test_a_window_of_exactly_the_limits_is_accepted() -> None:
    for window in ("1s", "31d"):
        assert compile_ruleset(mutated(CLICK, lambda d, w=window: d.update(window=w))).window_ms > 0


def test_event_times_become_the_rule_sets_time_bounds_and_change_its_digest() -> None:
    spec = {"earliest": "2020-01-01T00:00:00Z", "max_ahead": "1h"}
    ruleset = compile_ruleset(mutated(CLICK, lambda d: d.update(event_times=spec)))
    bounds = ruleset.time_bounds
    assert bounds.earliest_ms == 1_577_836_800_000 and bounds.max_ahead_ms == 3_600_000
    assert bounds.latest_ms == DEFAULT_TIME_BOUNDS.latest_ms and bounds.max_skew_ms == DEFAULT_TIME_BOUNDS.max_skew_ms
    assert ruleset.digest != CLICK.digest and CLICK.time_bounds == DEFAULT_TIME_BOUNDS
