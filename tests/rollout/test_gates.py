"""Each gate's pass / fail / inconclusive boundaries, and how results combine."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rollout.gates import (
    CLOCK_SKEW_MS,
    FAIL,
    INCONCLUSIVE,
    PASS,
    GateResult,
    dead_letter_gate,
    evaluate,
    evidence_age_gate,
    false_positive_gate,
    freshness_gate,
    ruleset_gate,
    segment_psi_gate,
    time_in_stage_gate,
    unexplained_gate,
    verdict,
)
from rollout.plan import load_plan
from tests.rollout.helpers import MINUTE, T0, good_evidence

PLAN = load_plan("default")
Z2 = 1.959963984540054**2


def by_name(results: tuple[GateResult, ...]) -> dict[str, GateResult]:
    return {r.name: r for r in results}


def test_good_evidence_passes_every_gate_of_the_shipped_plan() -> None:
    step = PLAN.steps[0]
    results = evaluate(PLAN, step.gates, good_evidence(T0), T0, in_stage_ms=step.gates.min_time_in_stage_ms)
    assert {r.name for r in results} >= {
        "ruleset",
        "evidence_age",
        "min_pairs",
        "unexplained",
        "stream_freshness",
    }
    assert verdict(results) == PASS, [r for r in results if r.status != PASS]


def test_ruleset_gate_fails_on_another_version_or_name_and_is_inconclusive_without_one() -> None:
    assert ruleset_gate(PLAN, good_evidence(T0)).status == PASS
    other_version = ruleset_gate(PLAN, good_evidence(T0, ruleset={"name": "clickstream", "version": 2}))
    assert other_version.status == FAIL and "clickstream@v2" in other_version.reason
    assert ruleset_gate(PLAN, good_evidence(T0, ruleset={"name": "risk", "version": 1})).status == FAIL
    assert ruleset_gate(PLAN, good_evidence(T0, ruleset=None)).status == INCONCLUSIVE


def test_ruleset_gate_checks_the_digest_when_the_plan_pins_one() -> None:
    pinned = dataclasses.replace(PLAN, ruleset_digest="ef" * 32)
    assert ruleset_gate(pinned, good_evidence(T0)).status == FAIL
    same = good_evidence(T0, ruleset={"name": "clickstream", "version": 1, "digest": "ef" * 32})
    assert ruleset_gate(pinned, same).status == PASS


def test_evidence_at_exactly_the_max_age_passes_and_one_ms_older_is_inconclusive() -> None:
    limit = PLAN.evidence_max_age_ms
    assert evidence_age_gate(PLAN, good_evidence(T0), T0 + limit).status == PASS
    stale = evidence_age_gate(PLAN, good_evidence(T0), T0 + limit + 1)
    assert stale.status == INCONCLUSIVE and "stale" in stale.reason


def test_evidence_from_the_future_is_inconclusive_beyond_the_clock_skew() -> None:
    assert evidence_age_gate(PLAN, good_evidence(T0 + CLOCK_SKEW_MS), T0).status == PASS
    assert evidence_age_gate(PLAN, good_evidence(T0 + CLOCK_SKEW_MS + 1), T0).status == INCONCLUSIVE


@pytest.mark.parametrize("generated", [None, 17, "yesterday", "2024-12-01T00:00:00"])
def test_missing_or_unreadable_generated_at_is_inconclusive(generated: object) -> None:
    assert evidence_age_gate(PLAN, good_evidence(T0, generated_at=generated), T0).status == INCONCLUSIVE


@pytest.mark.parametrize(("key", "gate"), [("pairs", "min_pairs"), ("as_of_rounds", "min_as_of_rounds")])
def test_minimum_counts_pass_at_the_minimum_and_are_inconclusive_below(key: str, gate: str) -> None:
    gates = PLAN.steps[0].gates
    minimum = getattr(gates, gate)
    at = by_name(evaluate(PLAN, gates, good_evidence(T0, **{key: minimum}), T0))[gate]
    below = by_name(evaluate(PLAN, gates, good_evidence(T0, **{key: minimum - 1}), T0))[gate]
    missing = by_name(evaluate(PLAN, gates, good_evidence(T0, **{key: "many"}), T0))[gate]
    assert (at.status, below.status, missing.status) == (PASS, INCONCLUSIVE, INCONCLUSIVE)
    assert below.observed == minimum - 1 and below.threshold == minimum


def _unexplained(unexplained: int, pairs: int, threshold: float) -> GateResult:
    cause = {"late_arrival": 0, "dropped_too_late": 0, "mixed": 0, "unexplained": unexplained}
    return unexplained_gate(good_evidence(T0, pairs=pairs, by_cause=cause), threshold)


def test_no_unexplained_passes_once_the_wilson_upper_bound_is_below_the_threshold() -> None:
    # With no unexplained pair the upper bound is z²/(n + z²): below t exactly when n > z²(1 - t)/t.
    threshold = 0.001
    first = math.floor(Z2 * (1 - threshold) / threshold) + 1
    assert _unexplained(0, first, threshold).status == PASS
    assert _unexplained(0, first - 1, threshold).status == INCONCLUSIVE


def test_an_unexplained_rate_at_the_threshold_fails_and_just_below_it_needs_more_data() -> None:
    assert _unexplained(1, 1000, 0.001).status == FAIL
    assert _unexplained(1, 1001, 0.001).status == INCONCLUSIVE
    assert _unexplained(10, 100_000, 0.001).status == PASS


def test_unexplained_gate_is_inconclusive_without_pairs_or_with_inconsistent_counts() -> None:
    assert _unexplained(0, 0, 0.001).status == INCONCLUSIVE
    assert _unexplained(5, 4, 0.001).status == INCONCLUSIVE
    assert unexplained_gate(good_evidence(T0, by_cause={}), 0.001).status == INCONCLUSIVE


def _latency(p99: object, count: object = 100) -> dict[str, object]:
    return {"stream": {"p50_ms": 1, "p95_ms": 2, "p99_ms": p99, "max_ms": 99, "count": count}}


def test_freshness_p99_at_the_bound_passes_and_above_it_fails() -> None:
    assert freshness_gate(good_evidence(T0, latency=_latency(50)), 50).status == PASS
    failed = freshness_gate(good_evidence(T0, latency=_latency(50.001)), 50)
    assert failed.status == FAIL and failed.observed == 50.001
    assert freshness_gate(good_evidence(T0, latency=_latency(None)), 50).status == INCONCLUSIVE
    assert freshness_gate(good_evidence(T0, latency=_latency(3, count=0)), 50).status == INCONCLUSIVE


def test_freshness_from_a_replay_is_inconclusive_not_a_pass() -> None:
    """A replay's arrival clock says nothing of processing latency, however small its numbers."""
    replay = {"stream": {"p50_ms": 0, "p95_ms": 0, "p99_ms": 0, "max_ms": 0, "count": 100, "source": "replay"}}
    assert freshness_gate(good_evidence(T0, latency=replay), 50).status == INCONCLUSIVE
    live = {"stream": {**replay["stream"], "source": "live"}}
    assert freshness_gate(good_evidence(T0, latency=live), 50).status == PASS


def _dead(legacy: int, rejected: int, too_late: int, received: int = 1000) -> dict[str, object]:
    """Both sides received ``received`` events; ``events`` is what each applied."""
    return {
        "legacy": {"rejected": legacy, "events": received - legacy},
        "stream": {"rejected": rejected, "too_late": too_late, "events": received - rejected - too_late},
    }


def test_dead_letter_rate_exactly_legacy_plus_tolerance_passes_and_one_more_fails() -> None:
    # legacy 10 of 1000; stream 10 + 10 of 1000 is exactly 0.01 more: at the tolerance, exact arithmetic.
    assert dead_letter_gate(good_evidence(T0, dead_letter=_dead(10, 10, 10)), 0.01).status == PASS
    assert dead_letter_gate(good_evidence(T0, dead_letter=_dead(10, 10, 11)), 0.01).status == FAIL
    assert dead_letter_gate(good_evidence(T0, dead_letter=_dead(10, 10, 0)), 0.0).status == PASS
    assert dead_letter_gate(good_evidence(T0, dead_letter=_dead(10, 10, 1)), 0.0).status == FAIL


def test_dead_letter_gate_is_inconclusive_without_events_or_counts() -> None:
    assert (
        dead_letter_gate(good_evidence(T0, dead_letter=_dead(0, 0, 0, received=0)), 0.01).status
        == INCONCLUSIVE
    )
    assert dead_letter_gate(good_evidence(T0, dead_letter={"legacy": {}}), 0.01).status == INCONCLUSIVE


def _truth(legacy_fpr: float | None, stream_fpr: float | None) -> dict[str, object]:
    def side(rate: float | None) -> dict[str, object]:
        return {
            "risk_high": {"false_positive_rate": rate, "detection_rate": 0.9},
            "risk_low": {"false_positive_rate": 0.01, "detection_rate": 0.5},
        }

    return {"legacy": side(legacy_fpr), "stream": side(stream_fpr)}


def test_false_positive_rate_per_tier_may_reach_legacy_plus_tolerance_but_not_exceed_it() -> None:
    risk = {"name": "risk", "version": 1}
    at = false_positive_gate(good_evidence(T0, ruleset=risk, ground_truth=_truth(0.02, 0.025)), 0.005)
    over = false_positive_gate(good_evidence(T0, ruleset=risk, ground_truth=_truth(0.02, 0.0251)), 0.005)
    assert at is not None and at.status == PASS
    assert over is not None and over.status == FAIL and "risk_high" in over.reason


def test_false_positive_gate_applies_to_risk_evidence_only() -> None:
    assert false_positive_gate(good_evidence(T0), 0.0) is None
    missing = false_positive_gate(good_evidence(T0, ruleset={"name": "risk", "version": 1}), 0.0)
    assert missing is not None and missing.status == INCONCLUSIVE
    one_side = false_positive_gate(good_evidence(T0, ground_truth=_truth(0.02, None)), 0.0)
    assert one_side is not None and one_side.status == INCONCLUSIVE


def test_time_in_stage_at_the_minimum_passes_and_less_or_unknown_is_inconclusive() -> None:
    assert time_in_stage_gate(10 * MINUTE, 10 * MINUTE).status == PASS
    assert time_in_stage_gate(10 * MINUTE - 1, 10 * MINUTE).status == INCONCLUSIVE
    assert time_in_stage_gate(None, 10 * MINUTE).status == INCONCLUSIVE


def test_verdict_fail_beats_inconclusive_beats_pass() -> None:
    def r(status: str) -> GateResult:
        return GateResult("g", status, None, None, "")  # type: ignore[arg-type]

    assert verdict([]) == PASS
    assert verdict([r(PASS), r(INCONCLUSIVE)]) == INCONCLUSIVE
    assert verdict([r(INCONCLUSIVE), r(FAIL), r(PASS)]) == FAIL


def test_a_gate_set_to_none_is_not_evaluated() -> None:
    gates = dataclasses.replace(PLAN.gates, min_pairs=None, max_stream_p99_ms=None, min_time_in_stage_ms=None)
    names = {r.name for r in evaluate(PLAN, gates, good_evidence(T0, pairs=1, latency={}), T0)}
    assert "min_pairs" not in names and "stream_freshness" not in names and "min_time_in_stage" not in names
    assert "unexplained" in names


def test_results_name_the_numbers_they_compared() -> None:
    result = _unexplained(3, 1000, 0.001)
    assert result.status == FAIL
    assert "3 unexplained in 1000 pairs" in result.reason and result.threshold == 0.001
    assert isinstance(result.observed, float) and result.observed > 0.003


def drifted(max_psi: object, rows: object = None) -> dict:
    return good_evidence(T0, segment_drift=None if max_psi is None else {"max_psi": max_psi, "per_as_of": rows or []})


def test_segment_psi_gate_passes_at_or_below_the_threshold_fails_above_and_is_inconclusive_without_the_figure() -> None:
    rows = [{"segment": "high_value", "psi_sides": 0.2}, {"segment": "window_shopper", "psi_sides": 0.01}]
    assert segment_psi_gate(drifted(0.05), 0.1).status == PASS
    assert segment_psi_gate(drifted(0.1), 0.1).status == PASS
    above = segment_psi_gate(drifted(0.2, rows), 0.1)
    assert above.status == FAIL and above.observed == 0.2 and "in high_value" in above.reason, above
    for absent in (None, "0.2", -1.0, math.nan, True):
        assert segment_psi_gate(drifted(absent), 0.1).status == INCONCLUSIVE, absent


def test_the_segment_psi_gate_runs_only_when_the_plan_sets_it() -> None:
    step = PLAN.steps[0]
    off = by_name(evaluate(PLAN, step.gates, drifted(0.9), T0, in_stage_ms=step.gates.min_time_in_stage_ms))
    assert "max_segment_psi" not in off
    on = dataclasses.replace(step.gates, max_segment_psi=0.25)
    results = by_name(evaluate(PLAN, on, drifted(0.9), T0, in_stage_ms=step.gates.min_time_in_stage_ms))
    assert results["max_segment_psi"].status == FAIL and verdict(tuple(results.values())) == FAIL


def test_duration_gates_observe_readable_durations_not_raw_milliseconds() -> None:
    """'observed 425855ms, threshold 1h' read badly: the observed time is rounded for people like its threshold."""
    stage = time_in_stage_gate(425_855, 3_600_000)
    assert (stage.observed, stage.threshold) == ("7m 6s", "1h")
    assert "7m 6s in the current stage" in stage.reason or "only 7m 6s" in stage.reason
    fresh = freshness_gate({"latency": {"stream": {"source": "live", "p99_ms": 1234.5, "count": 10}}}, 2_000)
    assert fresh.reason == "stream p99 1.2s (at most 2s)" and fresh.observed == 1234.5
