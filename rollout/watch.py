"""The watch: while canary or live, re-evaluate the gates on fresh evidence and roll back on a fail.

Each tick reads the state and the latest evidence, evaluates the gates that
admitted the current position under the plan in force (without the time-in-stage
gate: that one is about promotion, not health) and acts as an Argo Rollouts
analysis would, in ``canary`` and in ``live`` alike:

- a gate **fails** → roll back to ``shadow`` at once, recorded as actor ``auto`` with
  the gate results, the evidence file and its hash;
- a gate is **inconclusive** (stale or too little evidence) → hold, change nothing;
- evidence generated before the rollout reached its current position is not yet
  about that position → wait for newer evidence.

Time and sleeping are injected; the number of ticks is bounded by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rollout.cutover import position_gate, rollback
from rollout.evidence import Evidence
from rollout.gates import FAIL, INCONCLUSIVE, PASS, GateResult, evaluate
from rollout.plan import Plan
from rollout.stages import ROLLBACK_FROM, Position
from rollout.store import AUTO, Decision, RolloutStore
from segments.errors import ConflictError, InputError

Action = Literal["idle", "waiting", "hold", "ok", "rolled_back", "conflict"]


@dataclass(frozen=True)
class Tick:
    """What one look did: the position seen, the action taken, the gate results and why."""

    at_ms: int
    position: Position
    action: Action
    reason: str
    results: tuple[GateResult, ...] = ()
    decision: Decision | None = None


def watch_once(store: RolloutStore, plan: Plan, load: Callable[[], Evidence]) -> Tick:
    """One look: evaluate and, on a failed gate in canary or live, roll back to shadow."""
    state = store.state()
    now = store.clock()
    if state.position.stage not in ROLLBACK_FROM:
        return Tick(now, state.position, "idle", f"nothing to watch at {state.position}")
    try:
        evidence = load()
    except InputError as exc:
        return Tick(now, state.position, "waiting", f"no evidence: {exc}")
    about = position_gate(state, evidence)
    if about.status != PASS:
        return Tick(now, state.position, "waiting", f"evidence not about this position: {about.reason}")
    results = evaluate(plan, plan.gates_for(state.position), evidence.data, now, time_in_stage=False)
    failed = [r for r in results if r.status == FAIL]
    if failed:
        reason = "automatic rollback: " + "; ".join(f"{r.name} failed: {r.reason}" for r in failed)
        try:
            decision = rollback(
                store, actor=AUTO, reason=reason, evidence=evidence, results=results, expected=state
            )
        except ConflictError as exc:
            return Tick(now, state.position, "conflict", str(exc), results)
        return Tick(now, state.position, "rolled_back", reason, results, decision)
    if any(r.status == INCONCLUSIVE for r in results):
        held = "; ".join(f"{r.name}: {r.reason}" for r in results if r.status == INCONCLUSIVE)
        return Tick(now, state.position, "hold", f"inconclusive, holding: {held}", results)
    return Tick(now, state.position, "ok", "every gate passes", results)


def watch(
    store: RolloutStore,
    plan: Plan,
    load: Callable[[], Evidence],
    *,
    iterations: int | None,
    interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    on_tick: Callable[[Tick], None] | None = None,
) -> list[Tick]:
    """Tick ``iterations`` times (forever when None), ``interval_s`` apart; returns the ticks.

    A tick that raises (the SQL store down) ends the watch with that error; nothing
    is half-applied (see ``RolloutStore.record``).
    """
    ticks: list[Tick] = []
    count = 0
    while iterations is None or count < iterations:
        if count:
            sleep(interval_s)
        tick = watch_once(store, plan, load)
        count += 1
        if iterations is not None:
            ticks.append(tick)
        if on_tick is not None:
            on_tick(tick)
    return ticks
