"""Cutover decisions: choose the target of an advance, gate it, and record it (or a rollback).

The pure part (``choose_target``, ``propose``) decides; ``advance`` and ``rollback``
read the state, decide, and record through the store with optimistic concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollout.evidence import Evidence
from rollout.gates import PASS, GateResult, Status, evaluate, verdict
from rollout.plan import Plan
from rollout.stages import (
    IllegalTransition,
    Position,
    Stage,
    check_advance,
    check_rollback,
    needs_gates,
    next_stage,
    parse_stage,
)
from rollout.store import Decision, Draft, RolloutState, RolloutStore
from segments.errors import CheckFailed, UsageError


class GatesFailed(CheckFailed):
    """An advance refused because a gate did not pass (exit 1); ``results`` holds every gate."""

    def __init__(self, source: Position, target: Position, results: tuple[GateResult, ...]) -> None:
        bad = [f"{r.name} {r.status}: {r.reason}" for r in results if r.status != PASS]
        super().__init__(f"refusing to advance from {source} to {target}: " + "; ".join(bad))
        self.source = source
        self.target = target
        self.results = results


@dataclass(frozen=True)
class Proposal:
    """What an advance would do: from where, to where, and what the gates say (empty when ungated)."""

    state: RolloutState
    target: Position
    gated: bool
    results: tuple[GateResult, ...]

    @property
    def verdict(self) -> Status:
        return verdict(self.results)

    @property
    def allowed(self) -> bool:
        return not self.gated or self.verdict == PASS


def choose_target(
    plan: Plan, current: Position, to: Stage | str | None = None, percent: float | None = None
) -> Position:
    """The position an advance goes to; ``IllegalTransition`` when it is not one legal step.

    With neither ``to`` nor ``percent``: the next stage up to shadow, then the plan's
    next step. ``percent`` alone means a canary of that size. ``to=canary`` without a
    percentage takes the plan's next canary step.
    """
    if to is None and percent is not None:
        to = Stage.CANARY
    if to is None:
        step = plan.next_step(current)
        if step is not None:
            target = step.position
        else:
            following = next_stage(current.stage)
            if following is None:
                raise IllegalTransition("the rollout is complete; there is nothing to advance to")
            target = Position.at(following)
    else:
        stage = parse_stage(to)
        if stage is Stage.CANARY:
            if percent is None:
                step = plan.next_step(current)
                if step is None or step.position.stage is not Stage.CANARY:
                    raise IllegalTransition(f"the plan has no canary step after {current}: give --percent")
                percent = step.position.percent
            target = Position.at(stage, percent)
        elif percent is not None:
            raise UsageError(f"--percent is for canary steps, not {stage}")
        else:
            target = Position.at(stage)
    check_advance(current, target)
    return target


def propose(
    plan: Plan,
    state: RolloutState,
    evidence: Evidence | None,
    now_ms: int,
    to: Stage | str | None = None,
    percent: float | None = None,
) -> Proposal:
    """Choose the target and, past shadow, evaluate the target step's gates on ``evidence``.

    Raises ``IllegalTransition`` for an illegal move and ``UsageError`` when gates apply
    but there is no evidence.
    """
    target = choose_target(plan, state.position, to, percent)
    if not needs_gates(state.position):
        return Proposal(state, target, False, ())
    if evidence is None:
        raise UsageError(
            f"advancing from {state.position} is past shadow: give the evidence (--evidence DIR)"
        )
    results = evaluate(plan, plan.gates_for(target), evidence.data, now_ms, state.in_stage_ms(now_ms))
    return Proposal(state, target, True, results)


def advance(
    store: RolloutStore,
    plan: Plan,
    evidence: Evidence | None,
    *,
    actor: str,
    to: Stage | str | None = None,
    percent: float | None = None,
    force: bool = False,
    reason: str | None = None,
) -> tuple[Decision, Proposal]:
    """Advance one step if every gate passes, or when forced with a reason (recorded as forced).

    Raises ``GatesFailed`` (exit 1) with every gate's result when a gate does not pass
    and ``force`` is off; ``UsageError`` for ``force`` without a reason; ``ConflictError``
    when another writer moved the rollout meanwhile. With ``force``, evidence past
    shadow may be missing (then no gate is recorded).
    """
    if force and not (reason and reason.strip()):
        raise UsageError("--force needs --reason TEXT: an override is recorded with why")
    state = store.state()
    now = store.clock()
    if force and evidence is None and needs_gates(state.position):
        proposal = Proposal(state, choose_target(plan, state.position, to, percent), True, ())
    else:
        proposal = propose(plan, state, evidence, now, to, percent)
    forced = force and proposal.gated and (proposal.verdict != PASS or not proposal.results)
    if not proposal.allowed and not force:
        raise GatesFailed(state.position, proposal.target, proposal.results)
    draft = Draft(
        actor,
        "advance",
        state.position,
        proposal.target,
        tuple(r.to_dict() for r in proposal.results),
        proposal.verdict if proposal.gated and proposal.results else None,
        evidence.path if evidence else None,
        evidence.sha256 if evidence else None,
        reason,
        forced,
    )
    return store.record(state.version, draft), proposal


def rollback(
    store: RolloutStore,
    *,
    actor: str,
    reason: str,
    evidence: Evidence | None = None,
    results: tuple[GateResult, ...] = (),
    expected: RolloutState | None = None,
) -> Decision:
    """Roll back to shadow from canary or live, with a reason; ``expected`` pins the state decided on."""
    if not reason.strip():
        raise UsageError("a rollback needs --reason TEXT")
    state = expected or store.state()
    check_rollback(state.position)
    draft = Draft(
        actor,
        "rollback",
        state.position,
        Position.at(Stage.SHADOW),
        tuple(r.to_dict() for r in results),
        verdict(results) if results else None,
        evidence.path if evidence else None,
        evidence.sha256 if evidence else None,
        reason,
        False,
    )
    return store.record(state.version, draft)
