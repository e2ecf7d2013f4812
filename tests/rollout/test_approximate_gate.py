"""The `approximate` gate: Count-Min mismatches under their own threshold, apart from defects."""

from __future__ import annotations

from rollout.gates import FAIL, INCONCLUSIVE, PASS, evaluate
from rollout.plan import load_plan, parse_plan_text
from tests.rollout.helpers import T0, good_evidence

PLAN_TEXT = """
name: approx
ruleset: {name: clickstream, version: 1}
evidence_max_age: 1h
gates: {min_pairs: 10, min_as_of_rounds: 1, max_unexplained_rate: 0.001, max_approximate_rate: 0.05,
        max_stream_p99: null, dead_letter_tolerance: null, false_positive_tolerance: null, min_time_in_stage: null}
steps:
  - {stage: canary, percent: 1}
  - {stage: live}
  - {stage: rampdown}
  - {stage: complete}
"""


def _gate(approximate: int, pairs: int = 10_000) -> str:
    plan = parse_plan_text(PLAN_TEXT, "test")
    causes = {"late_arrival": 0, "dropped_too_late": 0, "mixed": 0, "unexplained": 0, "approximate": approximate}
    evidence = good_evidence(T0, pairs=pairs, by_cause=causes)
    results = {r.name: r for r in evaluate(plan, plan.gates, evidence, T0)}
    assert results["unexplained"].status == PASS  # approximate mismatches are not defects
    return results["approximate"].status


def test_approximate_rate_has_its_own_threshold() -> None:
    """Below 5% passes, at 5% fails, near it is inconclusive, while the unexplained gate still passes."""
    assert _gate(100) == PASS
    assert _gate(500) == FAIL
    assert _gate(480) == INCONCLUSIVE


def test_the_gate_is_off_unless_the_plan_sets_it() -> None:
    plan = load_plan("default")
    assert plan.gates.max_approximate_rate is None
    assert "approximate" not in {r.name for r in evaluate(plan, plan.gates, good_evidence(T0), T0)}
