"""A rule set's evaluation specialised for the stream's hot path.

Same definition, same result as ``RuleSet.segments_at`` (a property test pins
the two together): the aggregates are folded in one pass over the window's facts
with a per-kind dispatch table, and ``RuleSet.classify`` is memoised on the tuple
of aggregate values, so equal results are the same frozenset object.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from segments.rules import Fact, RuleSet

_COUNT, _SUM, _DISTINCT = 0, 1, 2
_OP_CODES = {"count": _COUNT, "sum": _SUM, "count_distinct": _DISTINCT}
_CACHE_LIMIT = 1 << 16


class Evaluator:
    """Evaluates one rule set at instant ``t`` over facts sorted by event time."""

    __slots__ = ("_cache", "_dispatch", "_distinct", "_names", "_ruleset", "span")

    def __init__(self, ruleset: RuleSet) -> None:
        self._ruleset = ruleset
        self._names = tuple(a.name for a in ruleset.aggregates)
        self.span = ruleset.span_ms
        dispatch: dict[str, list[tuple[int, int, int, int]]] = {}
        for index, agg in enumerate(ruleset.aggregates):
            for kind, weight in agg.weights.items():
                dispatch.setdefault(kind, []).append((index, _OP_CODES[agg.op], weight, agg.window_ms))
        self._dispatch = {kind: tuple(actions) for kind, actions in dispatch.items()}
        self._distinct = tuple(i for i, a in enumerate(ruleset.aggregates) if a.op == "count_distinct")
        self._cache: dict[tuple[int, ...], frozenset[str]] = {}

    def at(self, times: Sequence[int], facts: Sequence[Fact], t: int) -> frozenset[str]:
        """The segments at ``t``; ``times`` are the facts' event times, ascending."""
        hi = bisect_right(times, t)
        lo = bisect_right(times, t - self.span, 0, hi)
        values = [0] * len(self._names)
        sets: dict[int, set[str]] | None = {i: set() for i in self._distinct} if self._distinct else None
        dispatch = self._dispatch
        for i in range(lo, hi):
            fact = facts[i]
            actions = dispatch.get(fact[1])
            if actions is None:
                continue
            event_time = fact[0]
            for index, op, weight, width in actions:
                if event_time <= t - width:
                    continue
                if op == _COUNT:
                    values[index] += 1
                elif op == _SUM:
                    values[index] += fact[2] * weight
                elif fact[3] is not None and sets is not None:
                    sets[index].add(fact[3])
        if sets:
            for index, members in sets.items():
                values[index] = len(members)
        key = tuple(values)
        found = self._cache.get(key)
        if found is None:
            found = self._ruleset.classify(dict(zip(self._names, key, strict=True)))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found
