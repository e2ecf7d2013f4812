"""The cutover end to end over a real store: the full walk, refusals, overrides, and the watch's rollback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rollout.cutover import (
    GatesFailed,
    IntentNeeded,
    OffPlan,
    PlanMismatch,
    advance,
    choose_target,
    rollback,
    set_plan,
)
from rollout.evidence import load_evidence
from rollout.gates import FAIL, PASS
from rollout.plan import load_plan
from rollout.stages import IllegalTransition, Position, Stage
from rollout.store import EvidenceReused, RolloutStore, replay
from rollout.watch import watch, watch_once
from segments.errors import ConflictError, InputError, UsageError
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


# ---- pinned plans, moves that follow them, evidence bound to one position and one move -----------


def lax_plan_text(name: str) -> str:
    """The shipped plan with every gate switched off, under ``name``."""
    import yaml

    from rollout.plan import shipped_plan_text

    raw = yaml.safe_load(shipped_plan_text("default"))
    raw["name"] = name
    raw["gates"] = dict.fromkeys(raw["gates"])
    for step in raw["steps"]:
        step.pop("gates", None)
    return yaml.safe_dump(raw)


def test_a_lax_plan_under_the_shipped_name_is_refused_and_default_always_means_the_shipped_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rollout.plan import PlanError, shipped_name

    spoof = tmp_path / "p.yaml"
    spoof.write_text(lax_plan_text("clickstream-default"), encoding="utf-8")
    with pytest.raises(PlanError, match="name: 'clickstream-default' is the name of a shipped plan"):
        load_plan(spoof)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text(lax_plan_text("clickstream-default"), encoding="utf-8")
    assert load_plan("default").digest == PLAN.digest and shipped_name(load_plan("default")) == "default"


def test_a_renamed_lax_plan_needs_a_reason_is_pinned_and_every_decision_under_it_is_weakened(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    path = tmp_path / "lax.yaml"
    path.write_text(lax_plan_text("lax"), encoding="utf-8")
    lax = load_plan(path)
    with pytest.raises(UsageError, match=r"weakens the shipped plan .*max_unexplained_rate"):
        advance(store, lax, None, actor="ana", expected_version=0)
    first, _ = advance(store, lax, None, actor="ana", expected_version=0, reason="demo only")
    assert first.weakened and first.plan_digest == lax.digest
    assert any("weakens: max_unexplained_rate" in n for n in first.notes)
    with pytest.raises(PlanMismatch, match="cutover plan set"):
        advance(store, PLAN, None, actor="ana", expected_version=1)
    advance(store, None, None, actor="ana", expected_version=1)
    clock.advance(MINUTE)
    decision, _ = advance(store, None, load_evidence(fresh(tmp_path, clock, bad=True)), actor="ana")
    assert decision.weakened and decision.plan_digest == lax.digest and not decision.forced
    assert all(d.weakened for d in store.history())


def test_changing_the_plan_is_a_recorded_decision_and_relaxing_it_is_marked(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    path = tmp_path / "lax.yaml"
    path.write_text(lax_plan_text("lax"), encoding="utf-8")
    with pytest.raises(UsageError, match="--reason"):
        set_plan(store, load_plan(path), actor="bo", reason=None)
    entered = store.state().entered_at_ms
    decision, relaxed = set_plan(store, load_plan(path), actor="bo", reason="CAB-9")
    assert decision.action == "plan" and decision.weakened and relaxed
    assert any("min_time_in_stage off (was 10m) to enter canary 1%, canary 5%" in r for r in relaxed)
    state = store.state()
    assert state.position == Position.at("shadow") and state.entered_at_ms == entered
    assert state.plan_digest == load_plan(path).digest and state.plan_weakened
    back, again = set_plan(store, PLAN, actor="bo", reason="back to the shipped plan")
    assert not back.weakened and not again and not store.state().plan_weakened
    assert replay(store.history()) == store.state()


@pytest.mark.parametrize(("start", "percent", "gate_pairs"), [("shadow", 25.0, 5000), ("canary 50", 99.9, 10_000)])
def test_off_plan_and_skipping_moves_need_force_and_meet_every_skipped_steps_gates(
    store: RolloutStore, clock: Clock, tmp_path: Path, start: str, percent: float, gate_pairs: int
) -> None:
    here = Position.at("shadow") if start == "shadow" else Position.at("canary", 50)
    walk_to(store, clock, tmp_path, here)
    clock.advance(60 * MINUTE)
    evidence = load_evidence(fresh(tmp_path, clock))
    with pytest.raises(OffPlan, match=f"canary {percent:g}% is not the next step"):
        advance(store, PLAN, evidence, actor="ana", percent=percent)
    assert store.state().position == here
    decision, _ = advance(store, PLAN, evidence, actor="ana", percent=percent, force=True, reason="skip")
    assert decision.forced and decision.target == Position.at("canary", percent)
    assert any(n.startswith("off plan: the plan's next step was") for n in decision.notes)
    [pairs] = [g for g in decision.gates if g["name"] == "min_pairs"]
    assert pairs["threshold"] == gate_pairs


def test_evidence_older_than_the_position_or_the_last_rollback_does_not_admit_a_move(
    store: RolloutStore, clock: Clock, tmp_path: Path
) -> None:
    walk_to(store, clock, tmp_path, Position.at("canary", 1))
    clock.advance(60 * MINUTE)
    before = write_evidence(tmp_path / "before", good_evidence(store.state().entered_at_ms - 1))
    with pytest.raises(GatesFailed, match=r"evidence_after_position inconclusive: generated .* before the rollout"):
        advance(store, PLAN, load_evidence(before), actor="ana")
    taken = fresh(tmp_path, clock)  # about canary 1%, then the rollout rolls back
    clock.advance(MINUTE)
    rollback(store, actor="auto", reason="pager")
    clock.advance(15 * MINUTE)
    with pytest.raises(GatesFailed, match="before the rollout reached shadow"):
        advance(store, PLAN, load_evidence(taken), actor="ana")
    assert store.state().position == Position.at("shadow")


def test_one_evidence_admits_one_move_even_when_forced(store: RolloutStore, clock: Clock, tmp_path: Path) -> None:
    walk_to(store, clock, tmp_path, Position.at("shadow"))
    clock.advance(60 * MINUTE)
    ahead = load_evidence(write_evidence(tmp_path / "ahead", good_evidence(clock.now + 50_000)))
    first, _ = advance(store, PLAN, ahead, actor="ana")
    assert first.target == Position.at("canary", 1)
    clock.advance(11 * MINUTE)  # past min_time_in_stage; still after the move, still young
    with pytest.raises(EvidenceReused, match=f"already admitted decision #{first.id}") as info:
        advance(store, PLAN, ahead, actor="ana")
    assert info.value.exit_code == 2
    with pytest.raises(EvidenceReused):
        advance(store, PLAN, ahead, actor="ana", force=True, reason="again")
    assert store.state().position == Position.at("canary", 1) and store.evidence_use(ahead.sha256) == first.id


def test_a_stated_intent_that_no_longer_holds_is_a_conflict(store: RolloutStore, clock: Clock, tmp_path: Path) -> None:
    walk_to(store, clock, tmp_path, Position.at("dual_write"))
    with pytest.raises(IntentNeeded, match=r"--from dual_write \(or --expect-version 1\)"):
        advance(store, PLAN, None, actor="ana")
    with pytest.raises(ConflictError, match="not at off"):
        advance(store, PLAN, None, actor="ana", source=Position.at("off"))
    with pytest.raises(ConflictError, match="not at version 0"):
        advance(store, PLAN, None, actor="ana", expected_version=0)
    assert store.state().version == 1
    advance(store, PLAN, None, actor="ana", source=Position.at("dual_write"), expected_version=1)
    assert store.state().position == Position.at("shadow")


def test_two_plain_advances_at_once_move_one_step(database_url: str, tmp_path: Path) -> None:
    """Threads on a real store, each with the evidence it saw: one moves, the other conflicts."""
    import threading

    with RolloutStore.open(database_url) as setup:
        advance(setup, None, None, actor="ana", expected_version=0)
        advance(setup, None, None, actor="ana", expected_version=1)
    quick = tmp_path / "quick.yaml"
    quick.write_text(
        load_plan("default").text.replace("min_time_in_stage: 10m", "min_time_in_stage: null").replace(
            "name: clickstream-default", "name: quick"
        ),
        encoding="utf-8",
    )
    stores = [RolloutStore.open(database_url) for _ in range(2)]
    try:
        set_plan(stores[0], load_plan(quick), actor="ana", reason="no waits in tests")
        seen = load_evidence(write_evidence(tmp_path / "seen", good_evidence(stores[0].clock())))
        barrier = threading.Barrier(2)
        outcomes: list[object] = [None, None]

        def operator(i: int) -> None:
            barrier.wait()
            try:
                outcomes[i] = advance(stores[i], None, seen, actor=f"op{i}")[0]
            except ConflictError as exc:
                outcomes[i] = exc

        threads = [threading.Thread(target=operator, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(type(o).__name__ for o in outcomes) in (
            ["ConflictError", "Decision"],
            ["Decision", "EvidenceReused"],
        )
        assert stores[0].state().position == Position.at("canary", 1)
    finally:
        for s in stores:
            s.close()


def test_watch_rolls_back_from_live_as_from_canary(store: RolloutStore, clock: Clock, tmp_path: Path) -> None:
    walk_to(store, clock, tmp_path, Position.at("live"))
    clock.advance(MINUTE)
    directory = write_evidence(tmp_path / "live-ev", bad_evidence(clock.now))
    tick = watch_once(store, PLAN, lambda: load_evidence(directory))
    assert tick.action == "rolled_back" and "unexplained failed" in tick.reason
    last = store.history()[-1]
    assert (last.actor, last.action, last.source, last.target) == (
        "auto",
        "rollback",
        Position.at("live"),
        Position.at("shadow"),
    )
    assert last.plan_digest == PLAN.digest and store.state().position == Position.at("shadow")
