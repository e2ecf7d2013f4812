"""Admission: parse, validate, dedup, watermark and too-late, in arrival order, before any shuffle.

The stream's only sequential step. It turns arrival-ordered raw lines into
``Applied`` events routed to shards (each carrying the watermark that held just
before it) and dead-letter records. Routing uses a stable hash of the user id, so
a user's events always reach the same shard.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from segments.events import Event, Rejection, too_late
from segments.lateness import Gate, GateParams, Verdict
from streaming.segmenter import Applied, Row


def shard_of(user_id: str, shards: int) -> int:
    """The shard that owns ``user_id``: stable across runs, processes and machines."""
    return zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % shards


@dataclass
class AdmissionCounts:
    """What admission did with its input; every line lands in exactly one bucket."""

    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "too_late": self.too_late,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
        }


class Admission:
    """Judges arrival-ordered events with a ``Gate``; keeps counts; pure."""

    def __init__(self, params: GateParams, gate: Gate | None = None) -> None:
        self.params = params
        self.gate = gate or Gate(params)
        self.counts = AdmissionCounts()

    def admit(self, event: Event) -> Applied | Rejection | None:
        """``Applied`` (with the watermark before it), a too-late ``Rejection``, or None for a duplicate."""
        result = self.admit_row(event)
        if result is None or isinstance(result, Rejection):
            return result
        return Applied._make(result)

    def admit_row(self, event: Event) -> Row | Rejection | None:
        """``admit`` for the pipeline: an applied event as a plain ``Row`` (what batches carry)."""
        gate = self.gate
        watermark = gate.watermark
        verdict = gate.admit(event)
        if verdict is Verdict.APPLIED:
            self.counts.applied += 1
            return (
                event.user_id,
                event.event_time,
                event.kind,
                event.amount_micros,
                event.merchant,
                event.arrival_time,
                watermark,
            )
        if verdict is Verdict.DUPLICATE:
            self.counts.duplicates += 1
            return None
        self.counts.too_late += 1
        horizon = self.gate.horizon
        return too_late(event, horizon, f"event_time {event.event_time} < watermark - allowed lateness {horizon}")

    def reject(self, rejection: Rejection) -> Rejection:
        self.counts.reject(rejection.reason)
        return rejection


def admit_all(events: Iterable[Event], params: GateParams) -> tuple[list[Applied], list[Rejection], Admission]:
    """Admit valid events already in arrival order (tests and tools; the pipeline streams them)."""
    admission = Admission(params)
    out: list[Applied] = []
    dead: list[Rejection] = []
    for event in events:
        result = admission.admit(event)
        if type(result) is Applied:
            out.append(result)
        elif result is not None:
            dead.append(result)  # type: ignore[arg-type]
    return out, dead, admission
