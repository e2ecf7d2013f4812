"""Cutover decisions: choose the target of an advance, gate it, and record it (or a rollback, or a plan change).

The pure part (``choose_target``, ``plan_step``, ``position_gate``, ``propose``)
decides; ``advance``, ``rollback`` and ``set_plan`` read the state, decide, and
record through the store with optimistic concurrency. The rules they enforce:

- **The plan is pinned.** The first decision puts a plan in force (``--plan`` or the
  shipped default); from then on every decision is judged under that plan and records
  its digest. ``plan_in_force`` refuses a different ``--plan`` (``PlanMismatch``, exit 2)
  and points at ``set_plan``, itself a recorded decision. A plan that relaxes anything
  (``rollout.plan.weakenings``) needs a reason and marks every decision under it weakened.
- **Moves follow the plan.** A target that is not the plan's next step needs
  ``force`` with a reason and is recorded as forced (``OffPlan``, exit 2, otherwise).
  The gates checked are those of every step the move enters or skips
  (``Plan.gates_for_move``).
- **Evidence is about the current position and admits one move.** Evidence generated
  before the current position began (hence before the last rollback) makes the
  ``evidence_after_position`` gate inconclusive; evidence that admitted a move before is
  refused even when forced (``EvidenceReused``, exit 2), checked again inside the
  recording transaction.
- **One operator's intent, one move.** ``source`` (``--from``) and ``expected_version``
  (``--expect-version``) must match the state, and the record is a compare-and-set on
  the version read: a loser gets ``ConflictError`` (exit 2) and is never re-read and
  moved again. A move without evidence (before shadow, or forced without evidence) must
  say what it moves from (``IntentNeeded``, exit 2); a gated move is bound by its
  evidence, which must postdate the current position and be unused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rollout.evidence import Evidence
from rollout.gates import INCONCLUSIVE, PASS, GateResult, Status, evaluate, verdict
from rollout.plan import Plan, load_plan, parse_plan_text, weakenings
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
from rollout.store import Decision, Draft, EvidenceReused, PlanText, RolloutState, RolloutStore
from segments.errors import CheckFailed, ConflictError, UsageError
from segments.timeutil import TimestampError, format_ms, parse_rfc3339_ms


class GatesFailed(CheckFailed):
    """An advance refused because a gate did not pass (exit 1); ``results`` holds every gate."""

    def __init__(self, source: Position, target: Position, results: tuple[GateResult, ...]) -> None:
        bad = [f"{r.name} {r.status}: {r.reason}" for r in results if r.status != PASS]
        super().__init__(f"refusing to advance from {source} to {target}: " + "; ".join(bad))
        self.source = source
        self.target = target
        self.results = results


class PlanMismatch(UsageError):
    """``--plan`` names another plan than the one in force (exit 2); change it with ``cutover plan set``."""


class OffPlan(UsageError):
    """A target that is not the plan's next step, without ``--force --reason`` (exit 2)."""


class IntentNeeded(UsageError):
    """A move that no evidence binds, without ``--from`` or ``--expect-version`` (exit 2)."""


@dataclass(frozen=True)
class PlanInForce:
    """The plan a decision is judged under; ``installs``: this decision puts it in force."""

    plan: Plan
    installs: bool
    weakened: bool
    weakenings: tuple[str, ...] = ()

    def install(self) -> PlanText | None:
        return PlanText(self.plan.digest, self.plan.name, self.plan.text) if self.installs else None


@dataclass(frozen=True)
class Proposal:
    """What an advance would do: from where, to where, whether on plan, and what the gates say."""

    state: RolloutState
    target: Position
    gated: bool
    results: tuple[GateResult, ...]
    next_step: Position | None = None

    @property
    def verdict(self) -> Status:
        return verdict(self.results)

    @property
    def allowed(self) -> bool:
        return not self.gated or self.verdict == PASS

    @property
    def off_plan(self) -> bool:
        return self.next_step is not None and self.target != self.next_step


def parse_position(text: str) -> Position:
    """``STAGE`` or ``canary:PERCENT`` (also ``canary:5%``) as given to ``--from``; ``UsageError`` otherwise."""
    stage, _, percent = text.strip().partition(":")
    if not percent:
        return Position.at(parse_stage(stage))
    try:
        value = float(percent.rstrip("%"))
    except ValueError:
        raise UsageError(f"--from {text!r}: the percentage must be a number (canary:5)") from None
    return Position.at(parse_stage(stage), value)


def plan_in_force(store: RolloutStore, state: RolloutState, requested: Plan | None) -> PlanInForce:
    """The plan to judge a decision at ``state`` under.

    Pinned (the rollout has a plan): that plan, read back from the store; ``requested``
    must be it by digest, else ``PlanMismatch``. Not pinned (no decision yet, or a store
    of the previous version): ``requested`` or the shipped default, which the next
    decision installs, with what it relaxes against the shipped plan. ``CheckFailed``
    when the pinned plan's text is gone from the store.
    """
    if state.plan_digest is not None and state.version > 0:
        text = store.plan_text(state.plan_digest)
        if text is None:
            raise CheckFailed(
                f"the plan in force (sha256:{state.plan_digest[:12]}) is missing from the store; "
                "run `segshadow cutover history --verify`"
            )
        pinned = parse_plan_text(text, f"pinned sha256:{state.plan_digest[:12]}")
        if requested is not None and requested.digest != pinned.digest:
            raise PlanMismatch(
                f"the rollout runs plan {pinned.label}; --plan {requested.source} is another plan "
                f"(sha256:{requested.digest[:12]}): change it with `segshadow cutover plan set FILE --reason TEXT`"
            )
        return PlanInForce(pinned, False, state.plan_weakened)
    plan = requested or load_plan("default")
    relaxed = weakenings(plan, None)
    return PlanInForce(plan, True, bool(relaxed), relaxed)


def choose_target(
    plan: Plan, current: Position, to: Stage | str | None = None, percent: float | None = None
) -> Position:
    """The position an advance goes to; ``IllegalTransition`` when it is not one legal step.

    With neither ``to`` nor ``percent``: the next stage up to shadow, then the plan's
    next step. ``percent`` alone means a canary of that size. ``to=canary`` without a
    percentage takes the plan's next canary step. Whether the target is on plan is
    ``plan_step``'s question.
    """
    if to is None and percent is not None:
        to = Stage.CANARY
    if to is None:
        target = plan_step(plan, current)
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


def plan_step(plan: Plan, current: Position) -> Position:
    """The plan's next position from ``current``: the next stage up to shadow, then the plan's next step."""
    step = plan.next_step(current)
    if step is not None:
        return step.position
    following = next_stage(current.stage)
    if following is None:
        raise IllegalTransition("the rollout is complete; there is nothing to advance to")
    return Position.at(following)


def _generated_ms(evidence: Evidence) -> int | None:
    text = evidence.data.get("generated_at")
    try:
        return parse_rfc3339_ms(text) if isinstance(text, str) else None
    except TimestampError:
        return None


def position_gate(state: RolloutState, evidence: Evidence) -> GateResult:
    """``evidence_after_position``: the evidence was generated after the current position began.

    Evidence from before (another position, or before the last rollback) says nothing
    about where the rollout is now: inconclusive. Unknown generation time: inconclusive.
    """
    name = "evidence_after_position"
    since = format_ms(state.entered_at_ms) if state.entered_at_ms is not None else None
    generated = _generated_ms(evidence)
    if generated is None:
        return GateResult(name, INCONCLUSIVE, None, since, "the evidence has no usable generated_at")
    if state.entered_at_ms is None:
        return GateResult(name, PASS, format_ms(generated), since, "the rollout has not moved yet")
    if generated < state.entered_at_ms:
        return GateResult(
            name,
            INCONCLUSIVE,
            format_ms(generated),
            since,
            f"generated {format_ms(generated)}, before the rollout reached {state.position} at {since}: "
            "it says nothing about this position",
        )
    return GateResult(
        name, PASS, format_ms(generated), since, f"generated after the rollout reached {state.position} at {since}"
    )


def propose(
    plan: Plan,
    state: RolloutState,
    evidence: Evidence | None,
    now_ms: int,
    to: Stage | str | None = None,
    percent: float | None = None,
) -> Proposal:
    """Choose the target and, past shadow, evaluate the move's gates on ``evidence``.

    The gates are those of every plan step the move enters or skips, then
    ``evidence_after_position``. Raises ``IllegalTransition`` for an illegal move and
    ``UsageError`` when gates apply but there is no evidence.
    """
    target = choose_target(plan, state.position, to, percent)
    following = plan_step(plan, state.position)
    if not needs_gates(state.position):
        return Proposal(state, target, False, (), following)
    if evidence is None:
        raise UsageError(
            f"advancing from {state.position} is past shadow: give the evidence (--evidence DIR)"
        )
    gates = plan.gates_for_move(state.position, target)
    results = evaluate(plan, gates, evidence.data, now_ms, state.in_stage_ms(now_ms))
    return Proposal(state, target, True, (*results, position_gate(state, evidence)), following)


def check_intent(state: RolloutState, source: Position | None, expected_version: int | None) -> None:
    """``ConflictError`` unless the state is where the operator said it was (``--from``, ``--expect-version``)."""
    if expected_version is not None and expected_version != state.version:
        raise ConflictError(
            f"the rollout is at version {state.version} ({state.position}), not at version {expected_version}: "
            "someone else decided meanwhile; check `segshadow cutover status` and decide again"
        )
    if source is not None and source != state.position:
        raise ConflictError(
            f"the rollout is at {state.position} (version {state.version}), not at {source}: "
            "someone else decided meanwhile; check `segshadow cutover status` and decide again"
        )


def advance(
    store: RolloutStore,
    plan: Plan | None,
    evidence: Evidence | None,
    *,
    actor: str,
    to: Stage | str | None = None,
    percent: float | None = None,
    force: bool = False,
    reason: str | None = None,
    source: Position | None = None,
    expected_version: int | None = None,
) -> tuple[Decision, Proposal]:
    """Advance one step of the plan if every gate passes, or when forced with a reason (recorded as forced).

    ``plan`` None means the plan in force (or, for the first decision, the shipped
    default). Raises ``GatesFailed`` (exit 1) with every gate's result when a gate does
    not pass and ``force`` is off; ``OffPlan`` for a target that is not the plan's next
    step without ``force``; ``UsageError`` for ``force`` without a reason;
    ``IntentNeeded`` for a move no evidence binds without ``source`` or
    ``expected_version``; ``PlanMismatch`` for another plan than the pinned one;
    ``EvidenceReused`` for evidence that admitted a move before; ``ConflictError`` when
    the state is not what ``source``/``expected_version`` say or another writer moved
    it meanwhile. With ``force``, evidence past shadow may be missing (then no gate is
    recorded).
    """
    if force and not (reason and reason.strip()):
        raise UsageError("--force needs --reason TEXT: an override is recorded with why")
    state = store.state()
    check_intent(state, source, expected_version)
    in_force = plan_in_force(store, state, plan)
    the_plan = in_force.plan
    if in_force.installs and in_force.weakened and not (reason and reason.strip()):
        raise UsageError(
            f"plan {the_plan.label} weakens the shipped plan ({'; '.join(in_force.weakenings)}): "
            "give --reason TEXT to start the rollout with it (recorded, and marked weakened)"
        )
    now = store.clock()
    gated = needs_gates(state.position)
    if evidence is not None and gated:
        used = store.evidence_use(evidence.sha256)
        if used is not None:
            raise EvidenceReused(evidence.sha256, used)
    if force and evidence is None and gated:
        target = choose_target(the_plan, state.position, to, percent)
        proposal = Proposal(state, target, True, (), plan_step(the_plan, state.position))
    else:
        proposal = propose(the_plan, state, evidence, now, to, percent)
    if (evidence is None or not gated) and source is None and expected_version is None:
        raise IntentNeeded(
            f"say what you advance from: --from {spell(state.position)} (or --expect-version {state.version}), "
            "as `segshadow cutover status` shows; a move no evidence binds must name its starting point"
        )
    if proposal.off_plan and not force:
        raise OffPlan(
            f"{proposal.target} is not the next step of plan {the_plan.name} from {state.position} "
            f"(that is {proposal.next_step}): to leave the plan give --force --reason TEXT (recorded as forced)"
        )
    if not proposal.allowed and not force:
        raise GatesFailed(state.position, proposal.target, proposal.results)
    forced = force and (proposal.off_plan or (proposal.gated and (proposal.verdict != PASS or not proposal.results)))
    notes: list[str] = []
    if proposal.off_plan:
        notes.append(f"off plan: the plan's next step was {proposal.next_step}")
    notes += [f"weakens: {w}" for w in in_force.weakenings]
    draft = Draft(
        actor,
        "advance",
        state.position,
        proposal.target,
        tuple(r.to_dict() for r in proposal.results),
        proposal.verdict if proposal.gated and proposal.results else None,
        _where(evidence),
        evidence.sha256 if evidence else None,
        reason,
        forced,
        the_plan.digest,
        in_force.weakened,
        tuple(notes),
        in_force.install(),
        uses_evidence=evidence is not None and gated,
    )
    return store.record(state.version, draft), proposal


def _where(evidence: Evidence | None) -> str | None:
    """The evidence's absolute path, so ``history --verify`` finds it from any directory."""
    return os.path.abspath(evidence.path) if evidence is not None else None


def spell(position: Position) -> str:
    """``position`` as ``--from`` reads it (``shadow``, ``canary:5``); ``parse_position`` inverts it."""
    return f"canary:{position.percent:g}" if position.stage is Stage.CANARY else position.stage.value


def set_plan(
    store: RolloutStore,
    plan: Plan,
    *,
    actor: str,
    reason: str | None,
    expected_version: int | None = None,
) -> tuple[Decision, tuple[str, ...]]:
    """Put ``plan`` in force as a decision of its own (action ``plan``; the rollout does not move).

    Returns the decision and what the plan relaxes against the plan before it and the
    shipped plan (non-empty: the decision and every later one under this plan are
    marked weakened). Raises ``UsageError`` without a reason or when ``plan`` is already
    in force, ``ConflictError`` when the version is not ``expected_version`` or another
    writer decided meanwhile.
    """
    if not (reason and reason.strip()):
        raise UsageError("a plan change needs --reason TEXT: it is recorded with why")
    state = store.state()
    check_intent(state, None, expected_version)
    previous = None
    if state.plan_digest is not None and state.version > 0:
        previous = plan_in_force(store, state, None).plan
        if previous.digest == plan.digest:
            raise UsageError(f"plan {plan.label} is already in force")
    relaxed = weakenings(plan, previous)
    draft = Draft(
        actor,
        "plan",
        state.position,
        state.position,
        reason=reason,
        plan_digest=plan.digest,
        weakened=bool(relaxed),
        notes=tuple(
            [f"plan {plan.label}" + (f", was {previous.label}" if previous else "")]
            + [f"weakens: {w}" for w in relaxed]
        ),
        install=PlanText(plan.digest, plan.name, plan.text),
    )
    return store.record(state.version, draft), relaxed


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
        _where(evidence),
        evidence.sha256 if evidence else None,
        reason,
        False,
        state.plan_digest,
        state.plan_weakened,
    )
    return store.record(state.version, draft)
