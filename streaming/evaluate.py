"""A rule set's evaluation specialised for the stream's hot path.

Same definition, same result as ``RuleSet.segments_at`` (property tests pin the
two together), but O(log n) per instant for counts and sums: each user keeps,
per additive aggregate, the running (prefix) sum of that aggregate's per-event
contributions in event-time order, so a window's value is a difference of two
prefix sums found by bisection. Distinct counts (merchants) scan their window.
``RuleSet.classify`` is compiled once per rule set into one generated function
(aggregate values -> bit mask of segments), and equal results are the same
frozenset object.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Protocol

from segments.rules import AllOf, Compare, Condition, Fact, RuleSet

_OPS = frozenset((">", ">=", "<", "<=", "==", "!="))
MaskFunction = Callable[[Sequence[int]], int]
WindowMask = Callable[[Sequence[Sequence[int]], int, int], int]  # (prefix-sum columns, lo, hi) -> mask


def condition_source(condition: Condition, index_of: dict[str, int], value: str = "v[{}]") -> str:
    """The condition as a Python expression over ``v``, the tuple of aggregate values (``rules.holds``'s meaning).

    Only validated parts reach the text: an aggregate's index, one of six
    comparison operators and an integer threshold. ``value`` spells aggregate
    ``i``'s value (``v[i]``; ``v{}`` for locals ``v0``, ``v1``, ...).
    """
    if isinstance(condition, Compare):
        if condition.op not in _OPS:
            raise ValueError(f"unknown comparison {condition.op!r}")
        return f"({value.format(int(index_of[condition.agg]))} {condition.op} {int(condition.value)})"
    joiner = " and " if isinstance(condition, AllOf) else " or "
    return "(" + joiner.join(condition_source(part, index_of, value) for part in condition.parts) + ")"


def _mask_lines(ruleset: RuleSet, index_of: dict[str, int], value: str) -> list[str]:
    """The body of a generated classifier: the segments' tests in order, setting bits of ``m``."""
    flags = {group: f"g{i}" for i, group in enumerate(dict.fromkeys(s.group for s in ruleset.segments if s.group))}
    lines = ["    m = 0", *(f"    {flag} = False" for flag in flags.values())]
    for n, segment in enumerate(ruleset.segments):
        test = condition_source(segment.when, index_of, value)
        if segment.group is None:
            lines.append(f"    if {test}:")
            lines.append(f"        m |= {1 << n}")
        else:
            flag = flags[segment.group]
            lines.append(f"    if not {flag} and {test}:")
            lines.append(f"        m |= {1 << n}")
            lines.append(f"        {flag} = True")
    lines.append("    return m")
    return lines


def _aggregates_read(condition: Condition) -> set[str]:
    if isinstance(condition, Compare):
        return {condition.agg}
    return {name for part in condition.parts for name in _aggregates_read(part)}


def _generated(name: str, lines: list[str], ruleset: RuleSet) -> Callable[..., int]:
    namespace: dict[str, object] = {"__builtins__": {}}
    exec(compile("\n".join(lines), f"<rule set {ruleset.name}>", "exec"), namespace)
    return namespace[name]  # type: ignore[return-value]


def compile_classifier(ruleset: RuleSet, index_of: dict[str, int]) -> MaskFunction:
    """``RuleSet.classify`` as one generated function: aggregate values -> bit mask of the segments that hold.

    Segment ``n`` is bit ``1 << n``; within a group only the first segment that
    holds is taken. Generated once per rule set: on the stream's hot path one call
    with inline comparisons costs a fraction of walking the condition tree.
    """
    return _generated("classify", ["def classify(v):", *_mask_lines(ruleset, index_of, "v[{}]")], ruleset)


def compile_window_mask(ruleset: RuleSet, index_of: dict[str, int]) -> WindowMask:
    """For a rule set whose aggregates are all counts and sums over one width, in slot order: the mask of the
    window of facts ``lo`` to ``hi`` straight from the prefix-sum columns, ``classify``'s mask of the tuple
    ``(c[hi] - c[lo] for c in sums)`` without building the tuple (the stream's hot path: every event in order
    and every expiry). Only the aggregates a condition reads are computed."""
    read = sorted({index_of[name] for segment in ruleset.segments for name in _aggregates_read(segment.when)})
    lines = ["def window_mask(s, lo, hi):"]
    for i in read:
        lines.append(f"    c = s[{i}]")
        lines.append(f"    v{i} = c[hi] - c[lo]")
    lines.extend(_mask_lines(ruleset, index_of, "v{}"))
    return _generated("window_mask", lines, ruleset)


class Sets(Protocol):
    """Masks to their sets: a tuple of every mask's set, or ``_LazySets``."""

    def __getitem__(self, mask: int, /) -> frozenset[str]: ...


class _LazySets(dict[int, frozenset[str]]):
    """Masks to their sets, each made on first use (a rule set with too many segments to make them all)."""

    def __init__(self, make: Callable[[int], frozenset[str]]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, mask: int) -> frozenset[str]:
        return self._make(mask)  # (``_set_of`` keeps its own cache: one object per set)


class Indexed(Protocol):
    """A user's facts sorted by event time: their times, one prefix-sum column per additive aggregate, and
    (read only under a rule set with a distinct count, ``Evaluator.reads_facts``) their kinds and merchants."""

    @property
    def times(self) -> Sequence[int]: ...
    @property
    def sums(self) -> Sequence[Sequence[int]]: ...
    @property
    def kinds(self) -> Sequence[str] | None: ...
    @property
    def merchants(self) -> Sequence[str | None] | None: ...


class Evaluator:
    """Evaluates one rule set at instant ``t`` over an ``Indexed`` user."""

    __slots__ = (
        "_additive",
        "_by_mask",
        "_constant",
        "_contrib",
        "_distinct",
        "_mask_of",
        "_names",
        "_ruleset",
        "_sets",
        "_single_width",
        "_window",
        "additive_count",
        "span",
    )

    def __init__(self, ruleset: RuleSet) -> None:
        self._ruleset = ruleset
        self._names = tuple(a.name for a in ruleset.aggregates)
        self.span = ruleset.span_ms
        additive = [(i, a) for i, a in enumerate(ruleset.aggregates) if a.op in ("count", "sum")]
        self.additive_count = len(additive)
        # (aggregate index, width, slot in the user's sums)
        self._additive = tuple((i, a.window_ms, slot) for slot, (i, a) in enumerate(additive))
        # per kind: the constant part of one event's contribution, and the amount-weighted slots
        self._contrib: dict[str, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]] = {}
        for kind in ruleset.kinds:
            const = tuple(0 if a.op == "sum" else a.weights.get(kind, 0) for _, a in additive)
            weighted = tuple(
                (slot, a.weights[kind]) for slot, (_, a) in enumerate(additive) if a.op == "sum" and kind in a.weights
            )
            self._contrib[kind] = (const, weighted)
        # A kind's deltas when they do not depend on the amount (a count, or a kind no sum reads): one lookup.
        self._constant = {kind: const for kind, (const, weighted) in self._contrib.items() if not weighted}
        index_of = {name: i for i, name in enumerate(self._names)}
        self._mask_of = compile_classifier(ruleset, index_of)
        self._sets: dict[int, frozenset[str]] = {}
        # With few segments, every mask's set up front: classifying is then the mask function and one index.
        self._by_mask: tuple[frozenset[str], ...] | None = None
        if len(ruleset.segments) <= 10:
            self._by_mask = tuple(self._set_of(mask) for mask in range(1 << len(ruleset.segments)))
        self._distinct = tuple(
            (i, a.window_ms, frozenset(a.weights)) for i, a in enumerate(ruleset.aggregates) if a.op == "count_distinct"
        )
        # One window width, no distinct count, aggregates in slot order: the value tuple is the column differences.
        widths = {width for _, width, _ in self._additive}
        in_slot_order = all(index == slot for index, _, slot in self._additive)
        simple = len(widths) == 1 and not self._distinct and in_slot_order
        self._single_width: int | None = widths.pop() if simple else None
        self._window: tuple[WindowMask, Sets, frozenset[str]] | None = None
        if simple:
            sets: Sets = self._by_mask if self._by_mask is not None else _LazySets(self._set_of)
            vacant = self.classify((0,) * self.additive_count)
            self._window = (compile_window_mask(ruleset, index_of), sets, vacant)

    def deltas(self, kind: str, amount_micros: int) -> tuple[int, ...]:
        """What one event adds to each additive aggregate (zeros for a kind none of them reads)."""
        contrib = self._contrib.get(kind)
        if contrib is None:
            return (0,) * self.additive_count
        const, weighted = contrib
        if not weighted:
            return const
        values = list(const)
        for slot, weight in weighted:
            values[slot] = amount_micros * weight
        return tuple(values)

    def at(self, user: Indexed, t: int) -> frozenset[str]:
        """The segments at ``t`` for the user's facts."""
        times = user.times
        hi = bisect_right(times, t)
        if self._single_width is not None:
            lo = bisect_right(times, t - self._single_width, 0, hi)
            key = tuple([column[hi] - column[lo] for column in user.sums])
        else:
            key = self._values(user, t, hi)
        return self.classify(key)

    @property
    def single_width(self) -> int | None:
        """The one window width when the value tuple is just the prefix-sum differences (the fast path)."""
        return self._single_width

    @property
    def reads_facts(self) -> bool:
        """Whether evaluating reads the facts' kinds and merchants (a distinct count), not just the sums."""
        return bool(self._distinct)

    def classify(self, values: Sequence[int]) -> frozenset[str]:
        """``RuleSet.classify`` for a tuple of aggregate values; equal results are one frozenset object."""
        if self._by_mask is not None:
            return self._by_mask[self._mask_of(values)]
        return self._set_of(self._mask_of(values))

    def _set_of(self, mask: int) -> frozenset[str]:
        found = self._sets.get(mask)
        if found is None:
            found = self._sets[mask] = frozenset(
                s.name for n, s in enumerate(self._ruleset.segments) if mask & (1 << n)
            )
        return found

    @property
    def classifier(self) -> tuple[MaskFunction, tuple[frozenset[str], ...]] | None:
        """``classify`` in two parts for a hot loop, ``sets[mask_of(values)]`` (None with many segments)."""
        return None if self._by_mask is None else (self._mask_of, self._by_mask)

    @property
    def window_classifier(self) -> tuple[WindowMask, Sets, frozenset[str]] | None:
        """With ``single_width``: ``(window_mask, sets, vacant)``, the set of the facts ``lo`` to ``hi`` of a
        user being ``sets[window_mask(user.sums, lo, hi)]`` (``at`` without its tuple) and ``vacant`` the set of
        a window with no fact; else None."""
        return None if self._single_width is None else self._window  # (a subclass may clear the width)

    @property
    def constant_deltas(self) -> dict[str, tuple[int, ...]]:
        """``deltas`` of each kind whose deltas do not depend on its amount (counts; kinds no sum reads)."""
        return self._constant

    def _values(self, user: Indexed, t: int, hi: int) -> tuple[int, ...]:
        """Every aggregate's value when windows differ in width or a distinct count is needed."""
        times = user.times
        values = [0] * len(self._names)
        starts: dict[int, int] = {}
        sums = user.sums
        for index, width, slot in self._additive:
            lo = starts.get(width)
            if lo is None:
                lo = starts[width] = bisect_right(times, t - width, 0, hi)
            column = sums[slot]
            values[index] = column[hi] - column[lo]
        for index, width, kinds in self._distinct:
            lo = starts.get(width)
            if lo is None:
                lo = starts[width] = bisect_right(times, t - width, 0, hi)
            facts = zip(user.kinds[lo:hi], user.merchants[lo:hi])  # type: ignore[index]  # noqa: B905
            values[index] = len({merchant for kind, merchant in facts if merchant is not None and kind in kinds})
        return tuple(values)


class Window:
    """A plain ``Indexed`` built from facts at once (tests, tools)."""

    def __init__(self, evaluator: Evaluator, facts: Sequence[Fact]) -> None:
        ordered = sorted(facts, key=lambda f: f[0])
        self.times = [f[0] for f in ordered]
        self.kinds: list[str] | None = [f[1] for f in ordered]
        self.merchants: list[str | None] | None = [f[3] for f in ordered]
        self.sums = [[0] for _ in range(evaluator.additive_count)]
        for fact in ordered:
            for column, delta in zip(self.sums, evaluator.deltas(fact[1], fact[2]), strict=True):
                column.append(column[-1] + delta)
