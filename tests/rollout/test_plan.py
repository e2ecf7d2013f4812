"""Rollout plans: the shipped ones load, and bad plans fail naming the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.plan import PlanError, compile_plan, load_plan, shipped_plan_text
from rollout.stages import Position, Stage


def minimal(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "t",
        "ruleset": {"name": "clickstream", "version": 1},
        "steps": [
            {"stage": "canary", "percent": 10},
            {"stage": "live"},
            {"stage": "rampdown"},
            {"stage": "complete"},
        ],
    }
    raw.update(changes)
    return raw


def test_shipped_plans_load_with_their_steps() -> None:
    plan = load_plan()
    assert [str(s.position) for s in plan.steps] == [
        "canary 1%",
        "canary 5%",
        "canary 25%",
        "canary 50%",
        "live",
        "rampdown",
        "complete",
    ]
    assert (plan.ruleset_name, plan.ruleset_version) == ("clickstream", 1)
    assert plan.gates.max_stream_p99_ms == 50
    assert load_plan("risk").ruleset_name == "risk"


def test_step_gates_override_the_plan_gates_for_that_promotion_only() -> None:
    plan = compile_plan(
        minimal(
            steps=[
                {"stage": "canary", "percent": 10, "gates": {"min_pairs": 5, "max_stream_p99": None}},
                {"stage": "live"},
                {"stage": "rampdown"},
                {"stage": "complete"},
            ]
        )
    )
    first = plan.steps[0].gates
    assert first.min_pairs == 5 and first.max_stream_p99_ms is None
    assert first.min_as_of_rounds == plan.gates.min_as_of_rounds
    assert plan.steps[1].gates == plan.gates
    assert plan.gates_for(Position.at("canary", 10)) == first
    assert plan.gates_for(Position.at("canary", 7)) == plan.gates


def test_defaults_apply_when_the_plan_leaves_gates_out() -> None:
    plan = compile_plan(minimal())
    assert plan.gates.max_stream_p99_ms == 50 and plan.evidence_max_age_ms == 3_600_000


def test_next_step_walks_the_plan_from_shadow() -> None:
    plan = load_plan()
    assert plan.next_step(Position.at("dual_write")) is None
    walk, position = [], Position.at("shadow")
    while (step := plan.next_step(position)) is not None:
        walk.append(step.position)
        position = step.position
    assert walk == [s.position for s in plan.steps]
    step = plan.next_step(Position.at("canary", 7))
    assert step is not None and step.position == Position.at("canary", 25)


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        (minimal(gates={"max_unexplaned_rate": 0.1}), "gates.max_unexplaned_rate", "Extra inputs"),
        (minimal(gates={"max_unexplained_rate": 0}), "gates.max_unexplained_rate", "greater than 0"),
        (minimal(gates={"min_time_in_stage": "10 minutes"}), "gates.min_time_in_stage", "bad duration"),
        (minimal(evidence_max_age=5), "evidence_max_age", "duration"),
        (minimal(ruleset={"name": "clickstream"}), "ruleset.version", "Field required"),
        (minimal(steps=[{"stage": "canary", "percent": 100}]), "steps.0", "below 100"),
        (minimal(steps=[{"stage": "live", "percent": 5}]), "steps.0", "only for canary"),
        (minimal(steps=[{"stage": "warp"}]), "steps.0.stage", "Input should be"),
        (
            minimal(steps=[{"stage": "live"}, {"stage": "rampdown"}, {"stage": "complete"}]),
            "steps",
            "one or more canary",
        ),
        (
            minimal(
                steps=[
                    {"stage": "canary", "percent": 5},
                    {"stage": "canary", "percent": 5},
                    {"stage": "live"},
                    {"stage": "rampdown"},
                    {"stage": "complete"},
                ]
            ),
            "steps",
            "strictly grow",
        ),
        (minimal(steps=[{"stage": "canary", "percent": 5}, {"stage": "complete"}]), "steps", "in that order"),
        (minimal(name="has space"), "name", "pattern"),
    ],
)
def test_bad_plans_are_refused_naming_the_key(raw: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(PlanError) as info:
        compile_plan(raw, "p.yaml")
    assert info.value.key == key
    assert str(info.value).startswith(f"plan p.yaml: {key}: ") and words in str(info.value)


def test_unreadable_or_non_yaml_plan_files_are_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read"):
        load_plan(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [unclosed", encoding="utf-8")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(PlanError, match="not a mapping"):
        load_plan(listed)


def test_a_plan_file_round_trips_through_the_loader(tmp_path: Path) -> None:
    raw = yaml.safe_load(shipped_plan_text("default"))
    raw["steps"][0]["percent"] = 2
    raw["name"] = "mine"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    plan = load_plan(path)
    assert plan.steps[0].position == Position.at(Stage.CANARY, 2) and plan.source == str(path)


def test_max_segment_psi_is_off_by_default_and_dropping_or_raising_it_is_a_weakening() -> None:
    from rollout.plan import strictest, weakenings

    assert compile_plan(minimal()).gates.max_segment_psi is None
    strict = compile_plan(minimal(gates={"max_segment_psi": 0.1}))
    assert strict.gates.max_segment_psi == 0.1
    assert all(s.gates.max_segment_psi == 0.1 for s in strict.steps)
    dropped = compile_plan(minimal(gates={"max_segment_psi": None}))
    assert any(w.startswith("max_segment_psi off (was 0.1)") for w in weakenings(dropped, strict))
    laxer = compile_plan(minimal(gates={"max_segment_psi": 0.3}))
    assert any(w.startswith("max_segment_psi 0.3 (was 0.1)") for w in weakenings(laxer, strict))
    assert not [w for w in weakenings(strict, dropped) if "max_segment_psi" in w]  # turning it on is stricter
    assert strictest(dropped.gates, strict.gates).max_segment_psi == 0.1
    with pytest.raises(PlanError, match="max_segment_psi"):
        compile_plan(minimal(gates={"max_segment_psi": -1}))
