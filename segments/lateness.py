"""The stream's admission gate (SPEC §4): dedup, the watermark, and the too-late rule.

Everything that depends on arrival order is decided here, before any shuffle,
where the order is known. The gate is pure and deterministic: the stream runs it
on its input, and the comparator re-runs it on the same event log to know which
events the stream dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from segments.durations import format_duration_ms
from segments.errors import UsageError
from segments.events import Deduper, Event

DEFAULT_MAX_OUT_OF_ORDERNESS_MS = 5_000
DEFAULT_ALLOWED_LATENESS_MS = 60_000
MAX_OUT_OF_ORDERNESS_MS = 86_400_000  # 1 day
MAX_ALLOWED_LATENESS_MS = 31 * 86_400_000  # 31 days, the longest rule window
NO_WATERMARK = -(2**62)
END_OF_TIME = 2**62


class Verdict(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"


@dataclass(frozen=True)
class GateParams:
    """The stream's lateness contract; validated once at the edge.

    ``UsageError`` (exit 2) unless ``0 <= max_out_of_orderness_ms <= MAX_OUT_OF_ORDERNESS_MS``
    (1 day) and ``0 <= allowed_lateness_ms <= MAX_ALLOWED_LATENESS_MS`` (31 days): beyond
    them the watermark would sit before any sane event time (bounded work).
    """

    max_out_of_orderness_ms: int = DEFAULT_MAX_OUT_OF_ORDERNESS_MS
    allowed_lateness_ms: int = DEFAULT_ALLOWED_LATENESS_MS

    def __post_init__(self) -> None:
        for flag, value, limit in (
            ("--max-out-of-orderness", self.max_out_of_orderness_ms, MAX_OUT_OF_ORDERNESS_MS),
            ("--allowed-lateness", self.allowed_lateness_ms, MAX_ALLOWED_LATENESS_MS),
        ):
            if not 0 <= value <= limit:
                shown = format_duration_ms(value) if value >= 0 else f"{value}ms"
                raise UsageError(f"{flag} must be between 0 and {format_duration_ms(limit)}, not {shown}")


class Gate:
    """Admits events in arrival order.

    ``watermark`` is the largest event time applied so far minus the max
    out-of-orderness (``NO_WATERMARK`` before the first). An event earlier than
    ``watermark - allowed_lateness`` is too late. The first arrival of an id is
    the one judged; later arrivals are duplicates whatever their payload.
    """

    __slots__ = ("_dedup", "_lateness", "_ooo", "max_event_time")

    def __init__(self, params: GateParams, max_event_time: int | None = None):
        self._ooo = params.max_out_of_orderness_ms
        self._lateness = params.allowed_lateness_ms
        self._dedup = Deduper()
        self.max_event_time = max_event_time

    @property
    def watermark(self) -> int:
        if self.max_event_time is None:
            return NO_WATERMARK
        return self.max_event_time - self._ooo

    @property
    def horizon(self) -> int:
        """Events with ``event_time`` below this are too late now."""
        return self.watermark - self._lateness if self.max_event_time is not None else NO_WATERMARK

    def reserve(self, events: int) -> None:
        """Size the dedup for ``events`` arrivals before the first (``SeenIds.reserve``)."""
        self._dedup.seen.reserve(events)

    @property
    def duplicates(self) -> int:
        return self._dedup.duplicates

    def admit(self, event: Event) -> Verdict:
        """Judge one event (in arrival order) and advance the watermark when it is applied."""
        if not self._dedup.seen.add_if_new(event.event_id):
            self._dedup.duplicates += 1
            return Verdict.DUPLICATE
        met = self.max_event_time
        event_time = event.event_time
        if met is None or event_time > met:
            self.max_event_time = event_time
        elif event_time < met - self._ooo - self._lateness:
            return Verdict.TOO_LATE
        return Verdict.APPLIED


def too_late_ids(events: list[Event], params: GateParams) -> set[str]:
    """The ids of the events (deduplicated, in arrival order) that the stream drops as too late."""
    gate = Gate(params)
    return {e.event_id for e in events if gate.admit(e) is Verdict.TOO_LATE}
