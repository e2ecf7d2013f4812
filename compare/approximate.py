"""The ``approximate`` cause: a mismatch the declared Count-Min bound can explain (``streaming.approx``).

For a rule set with ``approx: cms`` aggregates, the stream's value of such an
aggregate for user ``u`` at ``t`` lies in a known range (with the sketches'
confidence), over the events the stream applied:

- **low**: the exact count over ``(t - window, t]`` (the sketch never under-counts);
- **high**: over ``u``'s buckets that overlap the window (``b <= t < b + bucket +
  window``) and in which ``u`` has events of the aggregate's kinds, the weighted
  count of all those events plus ``CmsParams.slack`` of the bucket's total
  weight. The total is taken over every shard's events of those kinds in the
  bucket, which is at least the one shard's total: the bound is conservative.

Every other aggregate is exact. A mismatch whose cause would otherwise be
``unexplained`` becomes ``approximate`` when some value in each approximate
aggregate's range makes ``RuleSet.classify`` give exactly the stream's set. The
classification only changes where a value crosses a threshold, so the values
tried are the range's ends and each threshold ``c`` of the aggregate (``c - 1``,
``c``, ``c + 1``) inside it: the test is exact, not sampled. Timing causes
(late arrival, dropped too late, mixed) keep their cause. A defect the bound
cannot explain (a set no value in range gives) stays ``unexplained``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from compare.causes import APPROXIMATE, UNEXPLAINED
from segments.events import Event
from segments.rules import AllOf, AnyOf, Compare, Condition, Fact, RuleSet
from segments.sketches import bucket_of


@dataclass(frozen=True)
class Range:
    """One approximate aggregate's possible stream values for one (user, as-of)."""

    aggregate: str
    low: int
    high: int


def _thresholds(condition: Condition, name: str) -> set[int]:
    if isinstance(condition, Compare):
        return {condition.value} if condition.agg == name else set()
    assert isinstance(condition, AllOf | AnyOf)
    return set().union(*(_thresholds(part, name) for part in condition.parts))


class ApproxBounds:
    """The applied events by user and the bucket totals; ``ranges`` and ``explains`` per (user, as-of)."""

    def __init__(self, ruleset: RuleSet, events: Iterable[Event], too_late: Iterable[str]) -> None:
        dropped = set(too_late)
        self.ruleset = ruleset
        by_user: dict[str, list[Fact]] = defaultdict(list)
        self.totals: dict[str, dict[int, int]] = {a.name: defaultdict(int) for a in ruleset.approximate}
        kinds = ruleset.kinds
        for e in events:
            if e.event_id in dropped or e.kind not in kinds:
                continue
            by_user[e.user_id].append(Fact(e.event_time, e.kind, e.amount_micros, e.merchant))
            for a in ruleset.approximate:
                weight = a.weights.get(e.kind)
                if weight is not None:
                    assert a.approx is not None
                    self.totals[a.name][bucket_of(e.event_time, a.approx.bucket_ms)] += weight
        self.facts = {u: sorted(fs, key=lambda f: f[0]) for u, fs in by_user.items()}
        self.times = {u: [f[0] for f in fs] for u, fs in self.facts.items()}
        self.thresholds = {
            a.name: sorted(set().union(*(_thresholds(s.when, a.name) for s in ruleset.segments)))
            for a in ruleset.approximate
        }
        self._approx_kinds = frozenset(k for a in ruleset.approximate for k in a.weights)

    def ranges(self, user_id: str, t: int) -> tuple[dict[str, int], tuple[Range, ...]]:
        """The exact aggregate values at ``t`` and each approximate aggregate's range."""
        facts = self.facts.get(user_id, [])
        times = self.times.get(user_id, [])
        exact = self.ruleset.aggregate(facts, t)
        out = []
        for a in self.ruleset.approximate:
            params = a.approx
            assert params is not None
            exit_ms = params.bucket_ms + a.window_ms
            # the stream marks a bucket for any approximate kind; only buckets overlapping the window count
            lo = bisect_left(times, t - exit_ms - params.bucket_ms)
            hi = bisect_right(times, t + params.bucket_ms)
            marked: dict[int, int] = {}
            for f in facts[lo:hi]:
                if f[1] not in self._approx_kinds:
                    continue
                start = bucket_of(f[0], params.bucket_ms)
                if start <= t < start + exit_ms:
                    marked[start] = marked.get(start, 0) + a.weights.get(f[1], 0)
            high = sum(count + params.slack(self.totals[a.name].get(b, 0)) for b, count in marked.items())
            out.append(Range(a.name, exact[a.name], max(high, exact[a.name])))
        return exact, tuple(out)

    def explains(self, user_id: str, t: int, stream: frozenset[str]) -> bool:
        """Whether some value in each approximate aggregate's range gives the stream's set ``stream``."""
        exact, ranges = self.ranges(user_id, t)
        choices = []
        for r in ranges:
            candidates = {r.low, r.high}
            for c in self.thresholds[r.aggregate]:
                candidates.update(v for v in (c - 1, c, c + 1) if r.low <= v <= r.high)
            choices.append(sorted(candidates))
        values = dict(exact)
        for picked in product(*choices):
            for r, v in zip(ranges, picked, strict=True):
                values[r.aggregate] = v
            if self.ruleset.classify(values) == stream:
                return True
        return False


def reclassify(
    code: np.ndarray,
    bounds: ApproxBounds,
    users: Sequence[str],
    times: np.ndarray,
    stream_sets: Sequence[frozenset[str]],
) -> np.ndarray:
    """``code`` with each ``unexplained`` mismatch the bound explains turned ``approximate`` (a new array)."""
    out = code.copy()
    for i in np.flatnonzero(code == UNEXPLAINED).tolist():
        if bounds.explains(users[i], int(times[i]), stream_sets[i]):
            out[i] = APPROXIMATE
    return out


def bound_summary(ruleset: RuleSet) -> dict[str, object]:
    """The declared sketches (shape, error, confidence, window), as ``sketches.json`` and the report show them."""
    return {
        a.name: {**a.approx.to_dict(), "window_ms": a.window_ms}  # type: ignore[union-attr]
        for a in ruleset.approximate
    }
