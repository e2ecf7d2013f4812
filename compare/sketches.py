"""The sketch evidence of one comparison (``sketches.json``): reach, heavy hitters, Count-Min bounds.

- ``reach``: ``compare.reach`` (both sides, minute and hour, HLL and Redis beside exact).
- ``heavy_hitters``: a DataSketches frequent-items sketch (``lg_max_k`` 7: 96
  counters, whatever the stream's size) over who and what contributes most to
  ``mismatches`` (the events in each mismatch's window), ``dead_letters`` (the
  stream's too-late events, and rejected lines by reason) and ``late_events``
  (applied events that arrived more than the max out-of-orderness after their
  event time), by ``user``, ``merchant`` and ``kind``. Only items whose lower
  bound exceeds the sketch's error are listed (no false positives: a flat
  distribution lists none); each shows the sketch's estimate and bounds and,
  beside them, the exact count.
- ``approximate``: the rule set's Count-Min aggregates and their declared bounds
  (``compare.approximate``), when it has any.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa

from compare.approximate import bound_summary
from compare.frames import decoded
from compare.inputs import ComparisonInputs
from compare.mismatches import Mismatches
from compare.reach import Reach, ReachPort, build_reach

HH_LG_MAX_K = 7
TOP = 8
DIMENSIONS = ("user", "merchant", "kind")
SOURCES = ("mismatches", "dead_letters", "late_events")


@dataclass(frozen=True)
class HeavyHitter:
    item: str
    estimate: int
    lower: int
    upper: int
    exact: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "exact": self.exact,
        }


def heavy_hitters(items: Iterable[str], top: int = TOP) -> tuple[list[HeavyHitter], int, float]:
    """The ``top`` items by the sketch's estimate, with exact counts; also the total and the sketch's epsilon."""
    sketch = ds.frequent_strings_sketch(HH_LG_MAX_K)
    exact: Counter[str] = Counter()
    for item in items:
        sketch.update(item)
        exact[item] += 1
    # Only items whose lower bound clears the sketch's error: true heavy hitters, none made up of noise.
    found = sketch.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES)
    found.sort(key=lambda row: (-row[1], row[0]))
    rows = [HeavyHitter(item, int(est), int(lo), int(hi), exact[item]) for item, est, lo, hi in found[:top]]
    return rows, int(sketch.total_weight), float(sketch.epsilon)


@dataclass(frozen=True)
class SketchEvidence:
    reach: Reach | None
    heavy: Mapping[str, Mapping[str, Any]]
    approximate: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reach": self.reach.to_dict() if self.reach is not None else None,
            "heavy_hitters": self.heavy,
            "approximate": self.approximate,
        }


def _streams(inputs: ComparisonInputs, mismatches: Mismatches) -> dict[str, np.ndarray]:
    """Event positions (log order) behind each source."""
    frame = inputs.events
    windows = mismatches.causes.windows
    late = (~frame.too_late) & (frame.arrival_time - frame.event_time > inputs.params.max_out_of_orderness_ms)
    return {
        "mismatches": windows.events,
        "dead_letters": np.flatnonzero(frame.too_late),
        "late_events": np.flatnonzero(late),
    }


def build_heavy(inputs: ComparisonInputs, mismatches: Mismatches) -> dict[str, dict[str, Any]]:
    """Heavy hitters per source and dimension (see the module doc).

    Only the events behind a source become Python strings (a column's ``take``), never the whole log.
    """
    events = inputs.log.events if inputs.log is not None else None
    out: dict[str, dict[str, Any]] = {}
    rejected = [f"rejected:{r.reason}" for r in inputs.log.rejected] if inputs.log is not None else []
    for source, positions in _streams(inputs, mismatches).items():
        taken = pa.array(positions, pa.int64())
        per: dict[str, Any] = {}
        for dimension in DIMENSIONS:
            if dimension == "user":
                items: list[str] = decoded(inputs.events.user_id.take(taken)).to_pylist()
            elif dimension == "kind":
                items = decoded(inputs.events.kind.take(taken)).to_pylist()
                items += rejected if source == "dead_letters" else []
            else:
                merchants = [events[p].merchant for p in positions.tolist()] if events is not None else []
                items = [m for m in merchants if m is not None]
            rows, total, epsilon = heavy_hitters(items)
            per[dimension] = {"total": total, "epsilon": epsilon, "top": [r.to_dict() for r in rows]}
        out[source] = per
    return out


def build_sketch_evidence(
    inputs: ComparisonInputs, mismatches: Mismatches, store: ReachPort | None = None
) -> SketchEvidence:
    """Reach (with ``store``, kept in the serving store too), heavy hitters and the Count-Min bounds."""
    schedule = inputs.schedule.times
    horizon = int(schedule[-1]) if len(schedule) else 0
    reach = build_reach(inputs.legacy, inputs.stream, horizon, store)
    approximate = bound_summary(inputs.ruleset) if inputs.ruleset.approximate else None
    return SketchEvidence(reach, build_heavy(inputs, mismatches), approximate)
