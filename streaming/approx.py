"""Approximate counts from Count-Min sketches: the stream's opt-in trade of accuracy for state.

A rule set may declare a ``count`` aggregate ``approx: cms`` (``segments.rules``).
The exact path is untouched: ``segmenter_class`` picks ``ApproxShardSegmenter``
only for a rule set with such an aggregate. There, per shard and per
approximate aggregate, a ring of Count-Min sketches, one per time bucket
(``CmsParams.bucket_ms``, a minute by default), counts each user's events of the
aggregate's kinds by event time. Per user, instead of one fact per event of
those kinds, the shard keeps the set of buckets in which the user has such
events (**marks**: at most window / bucket + lateness / bucket + 2 of them).

**Value.** The aggregate at instant ``t`` is the sum, over the user's marked
buckets ``b`` that overlap ``(t - window, t]`` (``b <= t < b + bucket + window``),
of the bucket's estimate for the user. The sketch never under-estimates, and
whole buckets are counted (events of the bucket later than ``t``, and those of
the first bucket before the window), so the value is one-sided: never below
the exact count over the applied events, and (with probability ``confidence``
per bucket) at most the user's events in those buckets plus
``relative_error`` times each bucket's total weight. ``compare.approximate``
checks every mismatch against exactly that range.

**Due instants.** An event's own instant is settled when it arrives (as on the
exact path); a marked bucket's exit ``b + bucket + window`` is queued once per
(user, bucket) and settled when the watermark reaches it; a late event
re-settles every due instant from its time on, every published instant, and the
bucket edges the watermark has passed. Events of kinds an exact aggregate also
reads are kept as facts as before.

Snapshots (``snapshot_part``) carry the marks with each user and the rings,
serialized, with the shard-wide fields; ``from_parts`` puts them back.
"""

from __future__ import annotations

import base64
import heapq
import zlib
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import datasketches as ds

from segments.lateness import END_OF_TIME, GateParams
from segments.outputs import Transition
from segments.rules import Aggregate, RuleSet
from segments.sketches import CmsParams, bucket_of
from streaming.evaluate import Evaluator
from streaming.segmenter import EMPTY, Row, ShardSegmenter, UserWindow, part_of


class CmsRing:
    """Per-bucket Count-Min sketches of one approximate aggregate in one shard.

    Two things are kept per bucket beside its sketch, each a pure function of the
    sketch's counters and so dropped whenever the bucket takes an update: the
    estimates read from it since (``estimates``: user id to ``get_estimate``) and
    its serialized, compressed bytes (``to_plain``). A settle reads every covering
    marked bucket of the user, but only the newest one or two take updates in
    order; the older ones answer from the cache, exactly as the sketch would. A
    part snapshot carries every bucket; only those updated since the last one are
    serialized again.
    """

    __slots__ = ("buckets", "estimates", "params", "plain", "weights")

    def __init__(self, params: CmsParams, weights: Mapping[str, int]) -> None:
        self.params = params
        self.weights = dict(weights)
        self.buckets: dict[int, ds.count_min_sketch] = {}
        self.estimates: dict[int, dict[str, float]] = {}  # bucket start -> user id -> the sketch's estimate
        self.plain: dict[int, bytes] = {}  # bucket start -> ``to_plain``'s bytes of the bucket as it is

    def add(self, user_id: str, event_time: int, kind: str) -> int | None:
        """Count the event if the aggregate reads its kind; returns its bucket (None if not read)."""
        weight = self.weights.get(kind)
        if weight is None:
            return None
        start = bucket_of(event_time, self.params.bucket_ms)
        self.update(start, user_id, float(weight))  # a float: nanobind's first overload pass takes it (int: ~8x)
        return start

    def update(self, start: int, user_id: str, weight: float) -> None:
        """Add ``weight`` for the user to bucket ``start`` (made if new); forget what was derived from it."""
        sketch = self.buckets.get(start)
        if sketch is None:
            sketch = self.buckets[start] = self.params.new()
            self.estimates[start] = {}
        sketch.update(user_id, weight)
        read = self.estimates[start]
        if read:
            read.clear()
        self.plain.pop(start, None)

    def estimate(self, user_id: str, buckets: Sequence[int]) -> int:
        """The sum of the user's estimates over ``buckets`` (starts; missing buckets count 0)."""
        total = 0.0
        for start in buckets:
            read = self.estimates.get(start)
            if read is not None:
                value = read.get(user_id)
                if value is None:
                    value = read[user_id] = self.buckets[start].get_estimate(user_id)
                total += value
        return round(total)

    def total_weight(self, start: int) -> int:
        sketch = self.buckets.get(start)
        return 0 if sketch is None else round(sketch.total_weight)

    def drop_before(self, start: int) -> None:
        for old in [b for b in self.buckets if b < start]:
            del self.buckets[old]
            del self.estimates[old]
            self.plain.pop(old, None)

    def state_bytes(self) -> int:
        return sum(s.get_serialized_size_bytes() for s in self.buckets.values())

    def to_plain(self) -> dict[int, bytes]:
        """Each bucket's sketch, serialized and zlib-compressed (its counters are mostly small: 4-6x less)."""
        plain = self.plain
        for start, sketch in self.buckets.items():
            if start not in plain:
                plain[start] = zlib.compress(sketch.serialize(), 1)
        return {b: plain[b] for b in self.buckets}

    def load_plain(self, plain: Mapping[int, bytes | str]) -> None:
        """From ``to_plain`` (or the earlier base64 text of the uncompressed bytes)."""
        self.buckets = {
            int(b): ds.count_min_sketch.deserialize(
                base64.b64decode(t) if isinstance(t, str) else zlib.decompress(t)
            )
            for b, t in plain.items()
        }
        self.estimates = {b: {} for b in self.buckets}
        self.plain = {}


class ApproxUser(UserWindow):
    """A user's window plus its id (the sketches' key) and its marked buckets (sorted starts)."""

    __slots__ = ("marks", "user_id")

    def __init__(self, additive: int, part: int, user_id: str, detail: bool = True) -> None:
        super().__init__(additive, part, detail)
        self.user_id = user_id
        self.marks: list[int] = []


def _adopt(user: UserWindow, user_id: str, marks: list[int]) -> ApproxUser:
    adopted = ApproxUser.__new__(ApproxUser)
    for slot in UserWindow.__slots__:
        setattr(adopted, slot, getattr(user, slot))
    adopted.user_id = user_id
    adopted.marks = list(marks)
    return adopted


class ApproxEvaluator(Evaluator):
    """``Evaluator`` with each approximate aggregate's value read from its ring (never the fast path)."""

    __slots__ = ("_rings", "_zeros", "reach", "width")

    def __init__(self, ruleset: RuleSet, rings: Sequence[tuple[int, Aggregate, CmsRing]]) -> None:
        super().__init__(ruleset)
        # The exact evaluator's single width (one window, additive aggregates in slot order): the values are then
        # the prefix-sum differences. Kept here; ``single_width`` is None so the segmenter never takes the exact
        # fast path, which knows nothing of the rings.
        self.width = self._single_width
        self._single_width = None
        self._rings = tuple(rings)
        # Per ring: its aggregate's index, how long a marked bucket counts (its width + the window), the ring.
        self.reach = tuple(
            (index, ring.params.bucket_ms + aggregate.window_ms, ring)
            for index, aggregate, ring in rings
        )
        self._zeros = [0] * len(ruleset.aggregates)

    def values(self, user: Any, t: int) -> list[int]:
        """The exact aggregates' values at ``t`` (the approximate ones' slots hold 0, their facts are not kept)."""
        times = user.times
        if not times:
            return list(self._zeros)
        hi = bisect_right(times, t)
        width = self.width
        if width is None:
            return list(self._values(user, t, hi))
        lo = bisect_right(times, t - width, 0, hi)
        return [column[hi] - column[lo] for column in user.sums]

    def at(self, user: Any, t: int) -> frozenset[str]:
        times = user.times
        width = self.width
        if width is not None:  # ``values``, inlined (an empty user's columns are [0]: zeros)
            hi = bisect_right(times, t)
            lo = bisect_right(times, t - width, 0, hi)
            values = [column[hi] - column[lo] for column in user.sums]
        else:
            values = self.values(user, t)
        marks: list[int] = user.marks
        for index, reach_ms, ring in self.reach:
            # The marks b with b <= t < b + reach, in order (marks are sorted and distinct).
            hi = bisect_right(marks, t)
            values[index] = ring.estimate(user.user_id, marks[bisect_right(marks, t - reach_ms, 0, hi) : hi])
        by_mask = self._by_mask  # ``classify``, inlined
        return self.classify(values) if by_mask is None else by_mask[self._mask_of(values)]


class ApproxShardSegmenter(ShardSegmenter):
    """``ShardSegmenter`` for a rule set with ``approx: cms`` aggregates (see the module doc)."""

    def __init__(self, ruleset: RuleSet, params: GateParams, parts: int = 1, prune_phase_ms: int = 0) -> None:
        super().__init__(ruleset, params, parts, prune_phase_ms)
        self._setup_approx()

    def _setup_approx(self) -> None:
        ruleset = self.ruleset
        approx = ruleset.approximate
        self._rings = [
            (ruleset.aggregates.index(a), a, CmsRing(a.approx, a.weights))  # type: ignore[arg-type]
            for a in approx
        ]
        self._evaluator = ApproxEvaluator(ruleset, self._rings)
        self._approx_kinds = frozenset(k for a in approx for k in a.weights)
        self._exact_kinds = frozenset(k for a in ruleset.aggregates if a.approx is None for k in a.weights)
        self._bucket_ms = min(a.approx.bucket_ms for a in approx)  # type: ignore[union-attr]
        self._exit_ms = max(a.approx.bucket_ms + a.window_ms for a in approx)  # type: ignore[union-attr]
        # Marked buckets' exits not yet due, by point: (point, user id) entries that ``advance`` merges into the
        # shard's queue in order once the watermark reaches their point (``_queue_exits``), and the least point.
        self._exits: dict[int, list[str]] = {}
        self._exits_next = END_OF_TIME + 1

    # ---- snapshots -------------------------------------------------------------------------------

    def _snapshot(self, items: list[tuple[str, UserWindow]]) -> dict[str, object]:
        state = super()._snapshot(items)
        for derived in ("_rings", "_approx_kinds", "_exact_kinds", "_bucket_ms", "_exit_ms", "_exits", "_exits_next"):
            state.pop(derived, None)
        # Marks in columns beside the users' (same order): a count per user, then every mark as buckets after
        # the least one (small integers, a byte or two each pickled), not a list keyed by a second copy of the id.
        marks = [getattr(u, "marks", ()) for _, u in items]
        base = min((m[0] for m in marks if m), default=0)
        bucket_ms = self._bucket_ms
        state["approx_marks"] = (
            base,
            [len(m) for m in marks],
            [(b - base) // bucket_ms for m in marks for b in m],
        )
        state["approx_rings"] = [ring.to_plain() for _, _, ring in self._rings]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        marks = _marks_of(state, self._bucket_ms_of(state))
        state.pop("approx_marks")
        rings: list[dict[int, bytes | str]] = state.pop("approx_rings")  # type: ignore[assignment]
        super().__setstate__(state)
        self._setup_approx()
        for (_, _, ring), plain in zip(self._rings, rings, strict=True):
            ring.load_plain(plain)
        self._adopt_all(marks, self.watermark)
        for user_id, user in list(self.users.items()):
            if not isinstance(user, ApproxUser):
                self.users[user_id] = _adopt(user, user_id, [])

    @staticmethod
    def _bucket_ms_of(state: Mapping[str, object]) -> int:
        ruleset: RuleSet = state["ruleset"]  # type: ignore[assignment]
        return min(a.approx.bucket_ms for a in ruleset.approximate)  # type: ignore[union-attr]

    def _adopt_all(self, marks: Mapping[str, list[int]], watermark: int) -> None:
        """Make ``users`` named in ``marks`` ``ApproxUser``s and queue their marked buckets' exits."""
        for user_id, user_marks in marks.items():
            user = self.users.get(user_id)
            if user is None or isinstance(user, ApproxUser):
                continue
            self.users[user_id] = _adopt(user, user_id, user_marks)
            for start in user_marks:
                if start + self._exit_ms > watermark:
                    self._exit_at(start + self._exit_ms, user_id)

    @classmethod
    def from_parts(
        cls,
        snapshots: Sequence[dict[str, object] | None],
        base: int,
        ruleset: RuleSet,
        params: GateParams,
        prune_phase_ms: int = 0,
    ) -> ShardSegmenter:
        shard = super().from_parts(snapshots, base, ruleset, params, prune_phase_ms)
        assert isinstance(shard, ApproxShardSegmenter)
        for part, snapshot in enumerate(snapshots):
            if snapshot is not None and part != base:
                marks = _marks_of(snapshot, shard._bucket_ms)
                shard._adopt_all(marks, snapshot["watermark"])  # type: ignore[arg-type]
        for user_id, user in list(shard.users.items()):
            if not isinstance(user, ApproxUser):
                shard.users[user_id] = _adopt(user, user_id, [])
        return shard

    # ---- the marked buckets' exits ------------------------------------------------------------------

    def _exit_at(self, point: int, user_id: str) -> None:
        """Queue the change point of a marked bucket's exit (as ``_push_point`` would, see ``_queue_exits``)."""
        run = self._exits.get(point)
        if run is None:
            run = self._exits[point] = []
            if point < self._exits_next:
                self._exits_next = point
        run.append(user_id)

    @property
    def pending_edges(self) -> int:
        """The queued change points and the marked buckets' exits held by point until due."""
        return super().pending_edges + sum(len(run) for run in self._exits.values())

    def _queue_exits(self, watermark: int) -> None:
        """Merge the exits due by ``watermark`` into the queue (``ordered``), in (point, user id) order.

        A bucket's exits share one point, so most would come out of order (by
        user id) and go through the heap, one push and one pop each. Held apart by
        point until due and merged here, a sorted run per point, they are popped
        in the same (point, user id) order, each from the queue's columns.
        """
        exits = self._exits
        ordered = self.ordered
        points = ordered.points
        ids = ordered.users
        for point in sorted(p for p in exits if p <= watermark):
            run = exits.pop(point)
            lo = bisect_left(points, point, ordered.head)
            hi = bisect_right(points, point, lo)
            run = sorted(ids[lo:hi] + run) if hi > lo else sorted(run)
            points[lo:hi] = array("q", [point]) * len(run)
            ids[lo:hi] = run
        self._exits_next = min(exits, default=END_OF_TIME + 1)

    def advance(self, watermark: int, emitted_at: int, out: list[Transition] | None = None) -> list[Transition]:
        if watermark >= self._exits_next and watermark > self.watermark:
            self._queue_exits(watermark)
        return super().advance(watermark, emitted_at, out)

    def finish(self, emitted_at_of: int) -> list[Transition]:
        self._queue_exits(END_OF_TIME)
        return super().finish(emitted_at_of)

    # ---- the inputs ------------------------------------------------------------------------------

    def apply(self, event: Row, emitted_at: int) -> list[Transition]:
        user_id, event_time, kind, _, _, _, event_watermark = event
        out = self.advance(event_watermark, emitted_at) if event_watermark > self.watermark else []
        if kind not in self._kinds:
            return out
        approx = kind in self._approx_kinds
        if approx:  # the rings are shard-wide: counted even while this user's part is being rebuilt
            for _, _, ring in self._rings:
                ring.add(user_id, event_time, kind)
        user = self.users.get(user_id)
        if self._frozen and (user.part if user is not None else part_of(user_id, self._parts)) in self._frozen:
            return out
        if user is None:
            user = self.users[user_id] = ApproxUser(
                self._evaluator.additive_count, self._new_part(user_id), user_id, self._detail
            )
        assert isinstance(user, ApproxUser)
        if approx:
            start = bucket_of(event_time, self._bucket_ms)
            index = bisect_right(user.marks, start)
            if not index or user.marks[index - 1] != start:
                insort(user.marks, start)
                if start + self._exit_ms > self.watermark:
                    self._exit_at(start + self._exit_ms, user_id)
        if kind in self._exact_kinds:
            self._apply_to(user_id, user, event, emitted_at, out)
            return out
        late = self._is_late(user, event_time)
        if not late:
            self._settle(user_id, user, event_time, emitted_at, "event", out)
        else:
            self._resettle_from(user, event_time, emitted_at, out)
        return out

    def apply_batch(self, events: Iterable[Row], clock: Callable[[], int] | None = None) -> list[Transition]:
        """``apply`` each event in order: the same transitions in the same order, with the common case inlined.

        Inlined: the watermark's step (as ``ShardSegmenter.apply_batch``), kinds no
        aggregate reads, and an event ahead of the watermark and in order for its
        user (after its facts, its published instants and its marked buckets) of a
        kind read only by approximate aggregates (counted in the rings, its bucket
        marked, the exit queued once) or only by exact ones (appended as a fact,
        its window edges queued); either settles its own instant, the marked
        buckets' estimates summed as ``ApproxEvaluator.at`` does (through the
        rings' caches, as ``CmsRing.estimate``). Anything else (late, a kind read
        by both, a rebuild under way) takes ``apply``.
        """
        out: list[Transition] = []
        users = self.users
        kinds = self._kinds
        approx_kinds = self._approx_kinds
        exact_kinds = self._exact_kinds
        ordered = self.ordered
        points = ordered.points
        ids = ordered.users
        pending = self.pending
        evaluator = self._evaluator
        assert isinstance(evaluator, ApproxEvaluator)
        values_of = evaluator.values
        width = evaluator.width  # the exact aggregates' one window (None: ``values`` works it out)
        classify = evaluator.classify
        classifier = evaluator.classifier
        additive = evaluator.additive_count
        detail = self._detail
        deltas_of = evaluator.deltas
        constant = evaluator.constant_deltas
        widths = self._widths
        bucket_ms = self._bucket_ms
        exit_ms = self._exit_ms
        names = self._names
        exits = self._exits
        # Per ring, to count an event: (the weight per kind, the bucket width, its sketches, its estimate caches and
        # its serialized bytes by bucket start, the ring). Weights as floats: ``count_min_sketch.update(str,
        # float)`` matches nanobind's first, exact overload pass; an int weight is only accepted in its second,
        # converting pass, at about 8x the cost per call.
        counting = [
            (
                {kind: float(weight) for kind, weight in ring.weights.items()},
                ring.params.bucket_ms,
                ring.buckets,
                ring.estimates,
                ring.plain,
                ring,
            )
            for _, _, ring in self._rings
        ]
        # Per ring, to read the user's value: (aggregate index, how long a marked bucket counts, its sketches and
        # its estimate caches by bucket start).
        reading = [(index, reach_ms, ring.buckets, ring.estimates) for index, reach_ms, ring in evaluator.reach]
        for event in events:
            user_id, event_time, kind, micros, _, arrival, event_watermark = event
            emitted_at = clock() if clock is not None else arrival
            if self._frozen:
                out.extend(self.apply(event, emitted_at))
                continue
            if event_watermark > self.watermark:
                if (
                    (ordered.head < len(ids) and points[ordered.head] <= event_watermark)
                    or (pending and pending[0][0] <= event_watermark)
                    or event_watermark >= self._next_prune
                    or event_watermark >= self._exits_next
                ):
                    self.advance(event_watermark, emitted_at, out)
                else:
                    self.watermark = event_watermark
            if kind not in kinds:
                continue
            approx = kind in approx_kinds
            if approx and kind in exact_kinds:
                out.extend(self.apply(event, emitted_at))  # the watermark is already there: no advance
                continue
            user = users.get(user_id)
            start = event_time - event_time % bucket_ms
            if user is not None:
                marks = user.marks  # type: ignore[attr-defined]  # every user of this shard is an ``ApproxUser``
                times = user.times
                pub_times = user.pub_times
                if not (
                    event_time > self.watermark
                    and (not times or times[-1] <= event_time)
                    and (not pub_times or pub_times[-1] <= event_time)
                    and (not marks or marks[-1] <= start)
                ):
                    out.extend(self.apply(event, emitted_at))
                    continue
            elif event_time <= self.watermark:
                out.extend(self.apply(event, emitted_at))
                continue
            else:
                user = users[user_id] = ApproxUser(additive, self._new_part(user_id), user_id, detail)
                marks = user.marks
                times = user.times
                pub_times = user.pub_times
            if approx:
                for weights, ring_bucket, buckets, estimates, plain, ring in counting:  # ``CmsRing.update``
                    weight = weights.get(kind)
                    if weight is not None:
                        ring_start = event_time - event_time % ring_bucket
                        sketch = buckets.get(ring_start)
                        if sketch is None:
                            ring.update(ring_start, user_id, weight)
                        else:
                            sketch.update(user_id, weight)
                            read = estimates[ring_start]
                            if read:
                                read.clear()
                            if plain:
                                plain.pop(ring_start, None)
                if not marks or marks[-1] != start:
                    marks.append(start)
                    if start + exit_ms > self.watermark:  # ``_exit_at``, inlined
                        run = exits.get(start + exit_ms)
                        if run is None:
                            self._exit_at(start + exit_ms, user_id)
                        else:
                            run.append(user_id)
            else:  # the exact path's in-order insert (``UserWindow.insert``'s append) and window edges
                deltas = constant.get(kind)
                if deltas is None:
                    deltas = deltas_of(kind, micros)
                user.insert(event_time, deltas, kind, event[4])  # in order: an append
                for edge in widths:
                    point = event_time + edge
                    if ordered.head == len(ids) or points[-1] < point or (points[-1] == point and ids[-1] <= user_id):
                        points.append(point)
                        ids.append(user_id)
                    else:
                        heapq.heappush(pending, (point, user_id))
            # Settle the event's instant (``_settle`` with ``ApproxEvaluator.at``, inlined). Every fact and mark is
            # at or before it here: the window's facts are those after ``event_time - width``, the covering marks
            # those after ``event_time - reach``.
            if width is not None:
                sums = user.sums
                lo = bisect_right(times, event_time - width)
                values = [column[-1] - column[lo] for column in sums]
            else:
                values = values_of(user, event_time)
            for index, reach_ms, buckets, estimates in reading:
                total = 0.0
                for mark in marks[bisect_right(marks, event_time - reach_ms) :]:
                    cached = estimates.get(mark)
                    if cached is not None:
                        value = cached.get(user_id)
                        if value is None:
                            value = cached[user_id] = buckets[mark].get_estimate(user_id)
                        total += value
                values[index] = round(total)
            desired = classify(values) if classifier is None else classifier[1][classifier[0](values)]
            if desired == (user.pub_values[-1] if pub_times else EMPTY):
                continue
            if pub_times and pub_times[-1] == event_time:
                user.pub_values[-1] = desired
            else:
                pub_times.append(event_time)
                user.pub_values.append(desired)
            user.revision += 1
            segments = names.get(desired)
            if segments is None:
                segments = names[desired] = tuple(sorted(desired))
            out.append(Transition(user_id, segments, event_time, user.revision, emitted_at, "event"))
        return out

    def _apply_to(self, user_id: str, user: UserWindow, event: Row, emitted_at: int, out: list[Transition]) -> None:
        """The exact path's insert and settle; a late event also re-settles the published and bucket instants."""
        event_time = event[1]
        late = self._is_late(user, event_time)
        super()._apply_to(user_id, user, event, emitted_at, out)
        if late:
            self._resettle_from(user, event_time, emitted_at, out)

    def _is_late(self, user: UserWindow, event_time: int) -> bool:
        """Behind the watermark, or behind anything the user has published, holds or has marked."""
        assert isinstance(user, ApproxUser)
        return (
            event_time <= self.watermark
            or bool(user.pub_times and user.pub_times[-1] > event_time)
            or bool(user.times and user.times[-1] > event_time)
            or bool(user.marks and user.marks[-1] > bucket_of(event_time, self._bucket_ms))
        )

    def _resettle_from(self, user: UserWindow, start: int, emitted_at: int, out: list[Transition]) -> None:
        """Settle, from ``start`` on: the due instants, the published ones, and the bucket edges passed."""
        assert isinstance(user, ApproxUser)
        points = set(self._due_points(user, start))
        points.add(start)
        points.update(p for p in user.pub_times if p >= start)
        edge = bucket_of(start, self._bucket_ms) + self._bucket_ms
        last = min(self.watermark, start + self._exit_ms + self._bucket_ms)
        while edge <= last:
            points.add(edge)
            edge += self._bucket_ms
        for mark in user.marks:
            exit_at = mark + self._exit_ms
            if start <= exit_at <= self.watermark:
                points.add(exit_at)
        for point in sorted(points):
            self._settle(user.user_id, user, point, emitted_at, "correction", out)

    _sweep_by_part = False  # the sketches' rings are the shard's, not a part's

    def prune(self, part: int | None = None) -> None:
        """The exact sweep, then marks and buckets no admissible event can need; keeps users with marks.
        Always every user (``_sweep_by_part``)."""
        horizon = self.watermark - self.params.allowed_lateness_ms
        keep_from = bucket_of(horizon - self._exit_ms, self._bucket_ms) if horizon > 0 else None
        kept: dict[str, UserWindow] = {}
        if keep_from is not None:
            for user_id, user in self.users.items():
                if isinstance(user, ApproxUser):
                    cut = bisect_right(user.marks, keep_from - 1)
                    if cut:
                        del user.marks[:cut]
                    if user.marks:
                        kept[user_id] = user
            for _, _, ring in self._rings:
                ring.drop_before(keep_from)
        super().prune()
        for user_id, user in kept.items():
            self.users.setdefault(user_id, user)

    def state_bytes(self) -> int:
        """The sketches' bytes (the shard-wide part of the approximate state)."""
        return sum(ring.state_bytes() for _, _, ring in self._rings)


def _marks_of(snapshot: Mapping[str, object], bucket_ms: int) -> dict[str, list[int]]:
    """A snapshot's marks by user id (``_snapshot``'s columns; also the earlier ``{user: marks}`` form)."""
    plain = snapshot["approx_marks"]
    if isinstance(plain, dict):
        return plain
    columns: tuple[int, list[int], list[int]] = plain  # type: ignore[assignment]
    base, counts, flat = columns
    user_ids: list[str] = snapshot["columns"][0]  # type: ignore[index]
    out: dict[str, list[int]] = {}
    at = 0
    for user_id, count in zip(user_ids, counts, strict=True):
        if count:
            out[user_id] = [base + b * bucket_ms for b in flat[at : at + count]]
            at += count
    return out


def segmenter_class(ruleset: RuleSet) -> type[ShardSegmenter]:
    """``ApproxShardSegmenter`` when the rule set declares an approximate aggregate, else the exact one."""
    return ApproxShardSegmenter if ruleset.approximate else ShardSegmenter
