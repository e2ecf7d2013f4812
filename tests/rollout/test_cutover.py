"""The cutover end to end over a real store: the full walk, refusals, overrides, and the watch's rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.cutover import GatesFailed, advance, choose_target, rollback
from rollout.evidence import load_evidence
from rollout.gates import FAIL, PASS
from rollout.plan import load_plan
from rollout.stages import IllegalTransition, Position, Stage
from rollout.store import RolloutStore, replay
from rollout.watch import watch, watch_once
from segments.errors import InputError, UsageError
from tests.rollout.helpers import MINUTE, Clock, bad_evidence, good_evidence, write_evidence

PLAN = load_plan("default")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database_url: str, clock: Clock) -> Iterator[RolloutStore]:
    with RolloutStore.open(database_url, clock) as opened:
        yield opened


def fresh(tmp_path: Path, clock: Clock, bad: bool = False) -> Path:
    data = bad_evidence(clock.now) if bad else good_evidence(clock.now)
    return write_evidence(tmp_path / f"ev-{clock.now}", data)


def walk_to(store: RolloutStore, clock: Clock, tmp_path: Path, target: Position) -> None:
    """Advance along the plan on good evidence, waiting each step's minimum time, until ``target``."""
    while store.state().position != target:
        clock.advance(60 * MINUTE)
        version = store.state().version
        advance(store, PLAN, load_evidence(fresh(tmp_path, clock)), actor="ana", expected_version=version)


def test_the_full_walk_from_off_to_complete_on_good_evidence(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    seen = [store.state().position]
    while store.state().position.stage is not Stage.COMPLETE:
        clock.advance(60 * MINUTE)
        version = store.state().version
        decision, proposal = advance(
            store, PLAN, load_evidence(fresh(tmp_path, clock)), actor="ana", expected_version=version
        )
        assert proposal.allowed and not decision.forced
        seen.append(decision.target)
    assert [str(p) for p in seen] == [
        "off",
        "dual_write",
        "shadow",
        "canary 1%",
        "canary 5%",
        "canary 25%",
        "canary 50%",
        "live",
        "rampdown",
        "complete",
    ]
    history = store.history()
    assert replay(history) == store.state()
    gated = [d for d in history if d.source.key >= Position.at("shadow").key]
    assert gated and all(d.verdict == PASS and d.evidence_sha256 and d.gates for d in gated)
    assert all(not d.gates for d in history[:2])
    with pytest.raises(IllegalTransition, match="complete"):
        advance(store, PLAN, load_evidence(fresh(tmp_path, clock)), actor="ana")


def test_advancing_past_shadow_on_bad_evidence_is_refused_and_changes_nothing(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    before = store.state()
    clock.advance(60 * MINUTE)
    with pytest.raises(GatesFailed) as info:
        advance(store, PLAN, load_evidence(fresh(tmp_path, clock, bad=True)), actor="ana")
    assert info.value.exit_code == 1
    assert {r.name for r in info.value.results if r.status == FAIL} == {"unexplained"}
    assert "unexplained fail" in str(info.value)
    assert store.state() == before and len(store.history()) == before.version


def test_too_little_time_in_stage_or_stale_evidence_is_refused(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    clock.advance(MINUTE)
    with pytest.raises(GatesFailed, match="min_time_in_stage inconclusive"):
        advance(store, PLAN, load_evidence(fresh(tmp_path, clock)), actor="ana")
    old = fresh(tmp_path, clock)
    clock.advance(2 * 60 * MINUTE)
    with pytest.raises(GatesFailed, match="evidence_age inconclusive: stale"):
        advance(store, PLAN, load_evidence(old), actor="ana")


def test_evidence_from_another_rule_set_version_is_refused(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    clock.advance(60 * MINUTE)
    other = write_evidence(
        tmp_path / "v2", good_evidence(clock.now, ruleset={"name": "clickstream", "version": 2})
    )
    with pytest.raises(GatesFailed, match="ruleset fail: evidence comes from rule set clickstream@v2"):
        advance(store, PLAN, load_evidence(other), actor="ana")


def test_force_with_a_reason_overrides_failing_gates_and_is_recorded(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    evidence = load_evidence(fresh(tmp_path, clock, bad=True))
    with pytest.raises(UsageError, match="--reason"):
        advance(store, PLAN, evidence, actor="ana", force=True)
    decision, _ = advance(store, PLAN, evidence, actor="ana", force=True, reason="incident 42: known issue")
    assert decision.forced and decision.verdict == FAIL and decision.reason == "incident 42: known issue"
    assert decision.evidence_sha256 == evidence.sha256 and store.history()[-1] == decision


def test_past_shadow_evidence_is_required_unless_forced(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    with pytest.raises(UsageError, match="--evidence"):
        advance(store, PLAN, None, actor="ana")
    decision, _ = advance(
        store,
        PLAN,
        None,
        actor="ana",
        force=True,
        reason="comparator down, approved by cab",
        source=Position.at("shadow"),
    )
    assert decision.forced and decision.evidence_path is None and decision.target == Position.at("canary", 1)


def test_targets_follow_the_plan_or_the_operator(store: RolloutStore) -> None:
    shadow, canary5 = Position.at("shadow"), Position.at("canary", 5)
    assert choose_target(PLAN, shadow) == Position.at("canary", 1)
    assert choose_target(PLAN, shadow, percent=10) == Position.at("canary", 10)
    assert choose_target(PLAN, canary5, to="canary") == Position.at("canary", 25)
    assert choose_target(PLAN, canary5, to="live") == Position.at("live")
    with pytest.raises(IllegalTransition):
        choose_target(PLAN, shadow, to="live")
    with pytest.raises(IllegalTransition):
        choose_target(PLAN, canary5, percent=2)
    with pytest.raises(UsageError):
        choose_target(PLAN, canary5, to="live", percent=50)


def test_rollback_needs_a_reason_and_a_canary_or_live(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    with pytest.raises(IllegalTransition):
        rollback(store, actor="ana", reason="no")
    walk_to(store, clock, tmp_path, Position.at("canary", 5))
    with pytest.raises(UsageError):
        rollback(store, actor="ana", reason="  ")
    decision = rollback(store, actor="ana", reason="pager went off")
    assert (decision.source, decision.target, decision.action) == (
        Position.at("canary", 5),
        Position.at("shadow"),
        "rollback",
    )


def test_watch_rolls_back_from_canary_automatically_on_bad_evidence(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("canary", 5))
    directory = tmp_path / "live-evidence"
    sleeps: list[float] = []

    def load():  # the comparator's output dir, rewritten between ticks
        return load_evidence(directory)

    clock.advance(MINUTE)
    write_evidence(directory, good_evidence(clock.now))
    [ok] = watch(store, PLAN, load, iterations=1, interval_s=30, sleep=sleeps.append)
    assert ok.action == "ok" and store.state().position == Position.at("canary", 5)

    clock.advance(MINUTE)
    write_evidence(directory, bad_evidence(clock.now))
    rolled, idle = watch(store, PLAN, load, iterations=2, interval_s=30, sleep=sleeps.append)
    assert rolled.action == "rolled_back" and idle.action == "idle"
    assert sleeps == [30]
    state = store.state()
    assert state.position == Position.at("shadow")
    last = store.history()[-1]
    assert (last.actor, last.action, last.source, last.verdict) == (
        "auto",
        "rollback",
        Position.at("canary", 5),
        FAIL,
    )
    assert last.evidence_sha256 == load().sha256 and "unexplained failed" in (last.reason or "")
    assert replay(store.history()) == state


def test_watch_holds_on_inconclusive_and_waits_for_evidence_newer_than_the_stage(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("live"))
    entered = store.state().entered_at_ms
    assert entered is not None
    directory = tmp_path / "ev"
    write_evidence(directory, bad_evidence(entered - 1))
    assert watch_once(store, PLAN, lambda: load_evidence(directory)).action == "waiting"
    clock.advance(MINUTE)
    write_evidence(directory, good_evidence(clock.now, pairs=50, agree=50, by_cause={"unexplained": 0}))
    held = watch_once(store, PLAN, lambda: load_evidence(directory))
    assert held.action == "hold" and store.state().position == Position.at("live")
    missing = watch_once(store, PLAN, lambda: load_evidence(tmp_path / "nowhere"))
    assert missing.action == "waiting" and "no evidence" in missing.reason


def test_missing_or_broken_evidence_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no parity\.json"):
        load_evidence(tmp_path)
    (tmp_path / "parity.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not JSON"):
        load_evidence(tmp_path)
    (tmp_path / "parity.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(InputError, match="not a JSON object"):
        load_evidence(tmp_path / "parity.json")
