"""Hand-built inputs for comparator tests: tiny event logs and both sides' outputs with their sidecars."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from segments.events import Rejection, write_jsonl
from segments.lateness import GateParams
from segments.outputs import Assignment, Transition, file_sha256, write_meta
from segments.rules import RuleSet
from segments.timeutil import format_ms

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MIN = 60_000
SEC = 1_000


def event(
    eid: str,
    user: str,
    t: int,
    kind: str = "view",
    arrival: int | None = None,
    amount: str | None = None,
    attrs: dict[str, Any] | None = None,
) -> str:
    """One SPEC §1 line."""
    obj: dict[str, Any] = {"event_id": eid, "user_id": user, "event_time": t, "kind": kind}
    if arrival is not None:
        obj["arrival_time"] = arrival
    if amount is not None:
        obj["amount"] = amount
    if attrs is not None:
        obj["attrs"] = attrs
    return json.dumps(obj)


def write_events(path: Path, lines: Iterable[str]) -> Path:
    write_jsonl(path, lines)
    return path


def ruleset_meta(ruleset: RuleSet) -> dict[str, Any]:
    return {"name": ruleset.name, "version": ruleset.version, "digest": ruleset.digest}


def write_legacy(
    path: Path,
    rows: Sequence[tuple[int, str, Sequence[str]]],
    events: Path,
    ruleset: RuleSet,
    every_ms: int = 5 * MIN,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Legacy lines (as_of, user, segments) and a sidecar like ``legacy_batch.job`` writes."""
    write_jsonl(path, (Assignment(t, u, tuple(sorted(s))).to_json() for t, u, s in rows))
    sidecar: dict[str, Any] = {
        "kind": "legacy_assignments",
        "ruleset": ruleset_meta(ruleset),
        "events_sha256": file_sha256(events),
        "every_ms": every_ms,
        "assignments": len(rows),
    }
    sidecar.update(meta or {})
    write_meta(path, sidecar)
    return path


def write_stream(
    path: Path,
    rows: Sequence[tuple[str, Sequence[str], int, int, int, str]],
    events: Path,
    ruleset: RuleSet,
    params: GateParams | None = None,
    dead_letters: Sequence[Rejection] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Stream lines (user, segments, effective_time, revision, emitted_at, cause) and a sidecar."""
    write_jsonl(path, (Transition(u, tuple(sorted(s)), e, r, m, c).to_json() for u, s, e, r, m, c in rows))
    gate = params or GateParams()
    sidecar: dict[str, Any] = {
        "side": "stream",
        "ruleset": ruleset_meta(ruleset),
        "events_sha256": file_sha256(events),
        "max_out_of_orderness_ms": gate.max_out_of_orderness_ms,
        "allowed_lateness_ms": gate.allowed_lateness_ms,
        "counts": {"transitions": len(rows)},
    }
    if dead_letters is not None:
        dead = Path(f"{path}.deadletter.jsonl")
        write_jsonl(dead, (r.to_json() for r in dead_letters))
        sidecar["dead_letter_path"] = dead.name
    sidecar.update(meta or {})
    write_meta(path, sidecar)
    return path


def stamp(ms: int) -> str:
    return format_ms(ms)
