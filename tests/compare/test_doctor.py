"""The triage's pure layers: lateness table exactness, arrival gaps, rule-set diff, verdict order and exit codes."""

from __future__ import annotations

import random

import pytest

from compare.doctor import (
    LayerVerdict,
    LineObs,
    behind_frontier,
    definition_diff,
    diagnose,
    ingest_layer,
    lateness_table,
)
from segments.events import Event
from segments.faults import changed_rules
from segments.lateness import GateParams, too_late_ids
from segments.rules import compile_ruleset, shipped_ruleset

T0 = 1_704_067_200_000


def _events(n: int, seed: int, late_share: float = 0.2, gap_at: int | None = None) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        t = T0 + i * 1_000
        arrival = t + (rng.randrange(400_000) if rng.random() < late_share else 0)
        if gap_at is not None and i >= gap_at:
            arrival += 600_000
            t += 600_000
        out.append(Event(f"e{i}", f"u{i % 37}", t, "view", 0, arrival, None, i))
    return sorted(out, key=lambda e: (e.arrival_time, e.seq))


@pytest.mark.parametrize("seed", range(5))
def test_lateness_table_drops_exactly_what_the_gate_drops_at_every_candidate(seed: int) -> None:
    """Each row's dropped count equals the stream's own gate run with that allowed lateness."""
    events = _events(2_000, seed)
    params = GateParams(5_000, 2_000)
    table = lateness_table(events, params, 600_000)
    assert len(table) >= 3
    for row in table:
        assert row.dropped == len(too_late_ids(events, GateParams(5_000, row.allowed_lateness_ms)))
    assert table[0].allowed_lateness_ms == 2_000 and table[0].kept_vs_current == 0
    assert len(behind_frontier(events)) == len(events)


def _lines(events: list[Event]) -> list[LineObs]:
    return [LineObs(i / len(events), {"event_id": e.event_id, "user_id": e.user_id, "event_time": e.event_time,
                                      "kind": e.kind}, None, "{}") for i, e in enumerate(events)]


def test_ingest_fails_on_an_arrival_gap_and_passes_without_one() -> None:
    """A ten-minute hole in arrivals at one event a second is a delivery failure; the same log without it is ok."""
    rules = shipped_ruleset("clickstream")
    clean = _events(3_000, 1, late_share=0.0)
    gapped = _events(3_000, 1, late_share=0.0, gap_at=1_500)
    assert ingest_layer(_lines(clean), clean, 0, rules).verdict == "ok"
    verdict = ingest_layer(_lines(gapped), gapped, 0, rules)
    assert verdict.verdict == "failing" and "arrival gap" in verdict.summary


def test_ingest_fails_when_a_read_field_goes_missing() -> None:
    """Purchases without an amount in the second half are schema drift against the rule set's needs."""
    rules = shipped_ruleset("clickstream")
    events = _events(1_000, 2, late_share=0.0)
    lines = [
        LineObs(i / 1_000, {"event_id": f"p{i}", "user_id": "u", "event_time": T0, "kind": "purchase",
                            **({"amount": 3} if i < 500 else {"price": 3})}, None, "{}")
        for i in range(1_000)
    ]
    verdict = ingest_layer(lines, events, 0, rules)
    assert verdict.verdict == "failing" and "amount" in verdict.summary


def test_definition_diff_names_the_segment_and_threshold_that_changed() -> None:
    """The changed rule set differs from the shipped one in its version and high_value's threshold only."""
    shipped = shipped_ruleset("clickstream")
    changed = compile_ruleset(changed_rules(shipped))
    diff = definition_diff(shipped.definition, changed.definition)
    assert diff == ["segments[high_value].when.value: 100 (legacy) -> 50 (stream)", "version: 1 (legacy) -> 2 (stream)"]


def test_first_failing_layer_and_exit_codes() -> None:
    """The first failing layer in order is named (exit 1); thin alone is inconclusive (3); suspect is 0."""
    def v(layer: str, verdict: str) -> LayerVerdict:
        return LayerVerdict(layer, verdict, f"{layer} {verdict}")

    assert diagnose([v("ingest", "ok"), v("logic", "ok"), v("state", "failing"), v("sink", "failing")]).first_failing \
        == "state"
    assert diagnose([v("ingest", "ok"), v("logic", "thin"), v("state", "ok"), v("sink", "failing")]).exit_code == 1
    assert diagnose([v("ingest", "ok"), v("logic", "thin"), v("state", "ok"), v("sink", "ok")]).exit_code == 3
    assert diagnose([v("ingest", "suspect"), v("logic", "ok"), v("state", "ok"), v("sink", "ok")]).exit_code == 0
    with pytest.raises(ValueError):
        diagnose([v("logic", "ok"), v("ingest", "ok"), v("state", "ok"), v("sink", "ok")])


def test_sink_fails_on_failed_bundles_and_on_a_per_write_latency_that_grew_and_shows_the_quantiles() -> None:
    """The replay's per-write figures are shown; a growth past 1 ms a write, or a failed bundle, fails the sink."""
    from compare.doctor import SinkInputs, sink_layer

    bundle = {"count": 40, "sum": 400, "mean": 10.0, "max": 30, "min": 2}
    steady = {"writes": 4_000, "ms_per_write_p99_at_most": 0.2, "grew": False, "ms_per_write_first_third": 0.1,
              "ms_per_write_last_third": 0.1}
    ok = sink_layer(SinkInputs({"redis_bundle_ms": bundle, "redis_write": steady}, {"redis_writes": 4_000}, {}))
    assert ok.verdict == "ok" and "p99 at most 0.2 ms" in ok.summary
    assert ok.figures["redis_write_latency"]["writes"] == 4_000 and ok.figures["redis_failures"] == 0
    grew = steady | {"grew": True, "ms_per_write_last_third": 2.5}
    slow = sink_layer(SinkInputs({"redis_bundle_ms": bundle, "redis_write": grew}, {"redis_writes": 4_000}, {}))
    assert slow.verdict == "failing" and "grew during the run: 0.1 ms" in slow.summary
    small = steady | {"grew": True, "ms_per_write_last_third": 0.4}  # grew, still far under 1 ms a write
    assert sink_layer(SinkInputs({"redis_bundle_ms": bundle, "redis_write": small}, {"redis_writes": 1}, {})).verdict \
        == "ok"
    failed = sink_layer(SinkInputs({"redis_bundle_ms": bundle}, {"redis_writes": 4_000, "redis_failures": 2}, {}))
    assert failed.verdict == "failing" and "2 Redis sink bundles failed" in failed.summary
