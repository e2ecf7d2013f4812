"""The stream's settings and names, importable without loading Beam (the command line starts fast)."""

from __future__ import annotations

from dataclasses import dataclass, field

from segments.lateness import GateParams
from segments.rules import RuleSet

EVENTS_STREAM = "segshadow:events"
"""The Redis Stream the live stream reads by default; each entry holds event lines (``streaming.eventlog``)."""
GROUP = "segshadow-stream"
FIELD = "e"
"""An entry's field holding exactly one event's JSON line (any producer may write these)."""
BATCH_FIELD = "b"
"""An entry's field holding several event lines joined by newlines (the dual-writer's entries)."""


@dataclass(frozen=True)
class StreamConfig:
    """Everything the pipeline needs, validated before it is built."""

    ruleset: RuleSet
    params: GateParams = field(default_factory=GateParams)
    shards: int = 8
    batch_events: int = 20_000
    live: bool = False  # live: stamp emitted_at with the wall clock; replay: with the arrival clock

    def __post_init__(self) -> None:
        if self.shards < 1 or self.batch_events < 1:
            raise ValueError("shards and batch size must be at least 1")
