"""Rollout stages, what each means, which moves between them are legal, and the canary cohort.

The stages are LaunchDarkly's migration-flag stages with a canary inserted between
``shadow`` and ``live``. A ``Position`` is a stage with its percentage of users
served by the stream (0 before canary, 100 from live on). Everything here is pure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

from segments.errors import UsageError


class Stage(StrEnum):
    OFF = "off"
    DUAL_WRITE = "dual_write"
    SHADOW = "shadow"
    CANARY = "canary"
    LIVE = "live"
    RAMPDOWN = "rampdown"
    COMPLETE = "complete"


ORDER: tuple[Stage, ...] = tuple(Stage)
ROLLBACK_FROM = frozenset({Stage.CANARY, Stage.LIVE})
"""Stages a failed gate (or an operator) rolls back from, always to ``shadow``."""
GATED_FROM = frozenset({Stage.SHADOW, Stage.CANARY, Stage.LIVE, Stage.RAMPDOWN})
"""Advancing out of these stages ("past shadow") needs every gate of the plan to pass."""

ServingRule = Literal["legacy", "cohort", "stream"]


@dataclass(frozen=True)
class Meaning:
    """What a stage means for the three parts of the flow.

    ``ingest``: where events are written; ``computes``: which sides' segmenters run;
    ``compared``: whether the comparator produces evidence; ``serves``: who answers
    the router (``cohort``: the stream for users whose cohort is below the percentage,
    legacy for the others); ``fallback``: whether the router falls back to legacy when
    the stream's value is missing or stale.
    """

    stage: Stage
    ingest: str
    computes: str
    compared: bool
    serves: ServingRule
    fallback: bool


MEANINGS = MappingProxyType(
    {
        Stage.OFF: Meaning(Stage.OFF, "legacy (SQL events table)", "legacy", False, "legacy", False),
        Stage.DUAL_WRITE: Meaning(
            Stage.DUAL_WRITE,
            "both (dual-write)",
            "legacy; the stream warms up, unread",
            False,
            "legacy",
            False,
        ),
        Stage.SHADOW: Meaning(Stage.SHADOW, "both (dual-write)", "both", True, "legacy", False),
        Stage.CANARY: Meaning(Stage.CANARY, "both (dual-write)", "both", True, "cohort", True),
        Stage.LIVE: Meaning(Stage.LIVE, "both (dual-write)", "both", True, "stream", True),
        Stage.RAMPDOWN: Meaning(
            Stage.RAMPDOWN, "both (dual-write)", "both; legacy only for the comparison", True, "stream", False
        ),
        Stage.COMPLETE: Meaning(Stage.COMPLETE, "stream (Redis Stream)", "stream", False, "stream", False),
    }
)


class IllegalTransition(UsageError):
    """A move the stage table does not allow (e.g. skipping a stage, lowering a canary)."""


@dataclass(frozen=True)
class Position:
    """A stage and the percentage of users the stream serves there.

    ``percent`` is 0 up to ``shadow``, in ``(0, 100)`` for ``canary`` and 100 from
    ``live`` on; construction refuses anything else (``IllegalTransition``). Build one
    with ``Position.at(stage, percent)``, which fills in the percentage a stage implies.
    """

    stage: Stage
    percent: float

    def __post_init__(self) -> None:
        if self.stage is Stage.CANARY:
            if not 0 < self.percent < 100:
                raise IllegalTransition(
                    f"canary needs a percentage above 0 and below 100, not {self.percent:g}"
                )
        elif self.percent != _implied_percent(self.stage):
            raise IllegalTransition(
                f"{self.stage} serves {_implied_percent(self.stage):g}% of users from the stream, "
                f"not {self.percent:g}%"
            )

    @classmethod
    def at(cls, stage: Stage | str, percent: float | None = None) -> Position:
        """The position of ``stage``; ``percent`` is required for canary and optional elsewhere."""
        stage = parse_stage(stage)
        if percent is None:
            if stage is Stage.CANARY:
                raise IllegalTransition("canary needs a percentage")
            percent = _implied_percent(stage)
        return cls(stage, float(percent))

    @property
    def key(self) -> tuple[int, float]:
        """Sort key along the rollout: stage order, then percentage."""
        return ORDER.index(self.stage), self.percent

    @property
    def meaning(self) -> Meaning:
        return MEANINGS[self.stage]

    def __str__(self) -> str:
        return f"canary {self.percent:g}%" if self.stage is Stage.CANARY else str(self.stage)


def _implied_percent(stage: Stage) -> float:
    return 0.0 if ORDER.index(stage) < ORDER.index(Stage.CANARY) else 100.0


START = Position(Stage.OFF, 0.0)


def parse_stage(text: str | Stage) -> Stage:
    """The stage named ``text``; ``UsageError`` listing the stages otherwise."""
    try:
        return Stage(text)
    except ValueError:
        raise UsageError(f"unknown stage {text!r}: stages are {', '.join(ORDER)}") from None


def next_stage(stage: Stage) -> Stage | None:
    """The stage one step after ``stage`` (None after ``complete``)."""
    index = ORDER.index(stage)
    return ORDER[index + 1] if index + 1 < len(ORDER) else None


def check_advance(current: Position, target: Position) -> None:
    """Raise ``IllegalTransition`` unless ``target`` is one legal step forward from ``current``.

    Legal: the next stage in ``ORDER``; or, within canary, a larger percentage.
    """
    if current.stage is Stage.CANARY and target.stage is Stage.CANARY:
        if target.percent <= current.percent:
            raise IllegalTransition(
                f"a canary only grows: {target.percent:g}% is not above the current {current.percent:g}% "
                "(use rollback to go back)"
            )
        return
    following = next_stage(current.stage)
    if following is None:
        raise IllegalTransition("the rollout is complete; there is nothing to advance to")
    if target.stage is not following:
        raise IllegalTransition(f"from {current} the next stage is {following}, not {target.stage}")


def check_rollback(current: Position) -> None:
    """Raise ``IllegalTransition`` unless ``current`` can roll back to ``shadow`` (from canary or live)."""
    if current.stage not in ROLLBACK_FROM:
        raise IllegalTransition(
            f"rollback goes to shadow from canary or live only; the rollout is at {current}"
        )


def needs_gates(current: Position) -> bool:
    """Whether advancing from ``current`` is past shadow, so every gate must pass first."""
    return current.stage in GATED_FROM


def cohort(user_id: str, salt: str = "segshadow") -> float:
    """The user's stable place in ``[0, 100)``: SHA-256 of ``salt``, NUL, the UTF-8 user id.

    The first 8 bytes as a big-endian fraction of 2**64 (kept to 53 bits), scaled to 100. A user is
    in a canary of ``p`` percent when ``cohort(user) < p``, so raising ``p`` only adds
    users and never moves one out. Independent of the process (no ``hash()``).
    """
    digest = hashlib.sha256(salt.encode() + b"\x00" + user_id.encode("utf-8", "surrogatepass")).digest()
    # 53 bits make a float in [0, 1) exactly; scaling the largest by 100 still rounds below 100.
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53 * 100


def stream_serves(position: Position, user_id: str, salt: str = "segshadow") -> bool:
    """Whether the stage table says the stream answers for ``user_id`` at ``position``."""
    rule = position.meaning.serves
    if rule == "cohort":
        return cohort(user_id, salt) < position.percent
    return rule == "stream"
