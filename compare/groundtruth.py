"""Each side against ground truth, for labelled data such as the ``risk`` workload.

Definition (stated in ``parity.json`` too). The units are (user, as-of) cells:
a user is **present** at as-of ``t`` when at least one of their valid events of a
kind the rules read lies in ``(t - span, t]`` (event time; whether or when it
arrived does not matter: truth is what happened). A present user is
**fraudulent** at ``t`` when any of those events carries ``attrs.fraud`` true,
**legitimate** otherwise. The tiers are the segments of the rule set's first
exclusive group, highest first (rule order: ``risk_high``, ``risk_medium``,
``risk_low``). For each side and tier X:

- ``false_positive_rate``: legitimate cells the side assigned X / legitimate cells;
- ``false_positive_rate_at_or_above``: legitimate cells assigned X or a higher tier / legitimate cells;
- ``detection_rate``: fraudulent cells assigned X or a higher tier / fraudulent cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compare.alignment import Alignment, first_at_or_after
from compare.frames import SegmentCodec
from compare.stats import rate
from segments.rules import RuleSet

DEFINITION = (
    "units are (user, as-of) cells where the user has an event of a kind the rules read in (t - span, t]; "
    "fraudulent when any of those events has attrs.fraud true, else legitimate; "
    "false_positive_rate = legitimate cells assigned the tier / legitimate cells; "
    "false_positive_rate_at_or_above = legitimate cells assigned the tier or a higher one / legitimate cells; "
    "detection_rate = fraudulent cells assigned the tier or a higher one / fraudulent cells"
)


def tiers(ruleset: RuleSet) -> tuple[str, ...]:
    """The segments of the rule set's first exclusive group, highest first; empty when it has no group."""
    groups = [s.group for s in ruleset.segments if s.group is not None]
    if not groups:
        return ()
    return tuple(s.name for s in ruleset.segments if s.group == groups[0])


@dataclass(frozen=True)
class TierRates:
    false_positive_rate: float
    false_positive_rate_at_or_above: float
    detection_rate: float
    legitimate_assigned: int
    fraudulent_detected: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "false_positive_rate": self.false_positive_rate,
            "false_positive_rate_at_or_above": self.false_positive_rate_at_or_above,
            "detection_rate": self.detection_rate,
            "legitimate_assigned": self.legitimate_assigned,
            "fraudulent_detected": self.fraudulent_detected,
        }


@dataclass(frozen=True)
class GroundTruth:
    cells: int
    fraudulent: int
    legitimate: int
    legacy: dict[str, TierRates]
    stream: dict[str, TierRates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "definition": DEFINITION,
            "cells": self.cells,
            "fraudulent": self.fraudulent,
            "legitimate": self.legitimate,
            "legacy": {tier: r.to_dict() for tier, r in self.legacy.items()},
            "stream": {tier: r.to_dict() for tier, r in self.stream.items()},
        }


def present_cells(
    schedule: np.ndarray,
    event_user: np.ndarray,
    event_time: np.ndarray,
    fraud: np.ndarray,
    relevant: np.ndarray,
    span_ms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, as-of index, fraudulent) for every cell where a user is present."""
    pick = np.flatnonzero(relevant)
    et = event_time[pick]
    lo = first_at_or_after(schedule, et)
    hi = first_at_or_after(schedule, et + span_ms)
    counts = hi - lo
    rows = np.repeat(np.arange(len(pick)), counts)
    starts = np.zeros(len(pick), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    as_idx = lo[rows] + (np.arange(int(counts.sum()), dtype=np.int64) - starts[rows])
    n = len(schedule)
    keys = event_user[pick][rows].astype(np.int64) * n + as_idx
    order = np.argsort(keys)
    keys = keys[order]
    if len(keys) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.bool_)
    starts_of = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    flagged = np.maximum.reduceat(fraud[pick][rows][order].astype(np.int8), starts_of).astype(np.bool_)
    cells = keys[starts_of]
    return cells // n, cells % n, flagged


def evaluate(
    alignment: Alignment,
    codec: SegmentCodec,
    tier_names: tuple[str, ...],
    user: np.ndarray,
    as_idx: np.ndarray,
    fraudulent: np.ndarray,
) -> GroundTruth:
    """Both sides' rates per tier over the present cells (``present_cells``)."""
    left, right = alignment.lookup(user, as_idx)
    legit = ~fraudulent
    n_legit = int(np.count_nonzero(legit))
    n_fraud = int(np.count_nonzero(fraudulent))
    sides = {}
    for name, masks in (("legacy", left), ("stream", right)):
        above = np.zeros(len(masks), dtype=np.bool_)
        rates = {}
        for tier in tier_names:
            assigned = (masks & masks.dtype.type(codec.bit(tier))) != 0
            above |= assigned
            legit_assigned = int(np.count_nonzero(assigned & legit))
            detected = int(np.count_nonzero(above & fraudulent))
            rates[tier] = TierRates(
                rate(legit_assigned, n_legit),
                rate(int(np.count_nonzero(above & legit)), n_legit),
                rate(detected, n_fraud),
                legit_assigned,
                detected,
            )
        sides[name] = rates
    return GroundTruth(len(user), n_fraud, n_legit, sides["legacy"], sides["stream"])
