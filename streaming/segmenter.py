"""Per-user event-time segmentation for the users of one shard: the stream's pure core (SPEC §4).

The shard receives its users' applied events in arrival order, each with the
watermark that held just before it, plus watermark advances. It keeps, per user,
the retained facts and the *published* timeline (what it has emitted), and emits
a ``Transition`` wherever the published timeline disagrees with the rules
evaluated over the applied events at a *due* instant:

- every event time of an applied event is due at once (the set changes when the
  event is applied);
- every other change point (an event leaving a window, at ``e + width``) is due
  when the watermark reaches it: that is expiry, driven by the watermark carried
  in the data, so it is correct on any runner, whatever its timer semantics;
- a late event re-evaluates the due instants in ``[e, e + span]`` and emits
  corrections with higher revisions where the past changed.

Invariant after each step: at every due instant the published timeline equals
the rules over the applied events, and between change points both are constant.
At the end of a bounded input the watermark goes to the end of time, so the
settled timeline equals the rules everywhere. State is bounded: facts that no
admissible event can bring back into a window are dropped, and a user whose
timeline has gone back to empty for good is forgotten.
"""

from __future__ import annotations

import heapq
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

from segments.lateness import END_OF_TIME, NO_WATERMARK, GateParams
from segments.outputs import Transition
from segments.rules import Fact, RuleSet
from streaming.evaluate import Evaluator

EMPTY: frozenset[str] = frozenset()
PRUNE_EVERY_MS = 300_000  # event time between two sweeps of a shard's state (each sweep visits every user)


def part_of(user_id: str, parts: int) -> int:
    """The part of its shard a user's state is snapshotted with: stable, and independent of the shard
    (``shard_of`` takes the CRC's low bits modulo the shard count; this takes bits 16 and up)."""
    return (zlib.crc32(user_id.encode("utf-8", "surrogatepass")) >> 16) % parts


class Applied(NamedTuple):
    """An applied event as the shard needs it; ``watermark`` is the gate's watermark just before it."""

    user_id: str
    event_time: int
    kind: str
    amount_micros: int
    merchant: str | None
    arrival_time: int
    watermark: int


# An applied event as batches carry it: ``Applied``'s fields in a plain tuple.
Row = tuple[str, int, str, int, str | None, int, int]


class UserWindow:
    """One user's retained facts (sorted by event time) and published timeline."""

    __slots__ = ("facts", "part", "pub_times", "pub_values", "revision", "sums", "times")

    def __init__(self, additive: int, part: int = 0) -> None:
        self.part = part  # which part of the shard it is snapshotted with (``part_of``)
        self.times: list[int] = []
        self.facts: list[Fact] = []
        self.sums: list[list[int]] = [[0] for _ in range(additive)]
        self.pub_times: list[int] = []
        self.pub_values: list[frozenset[str]] = []
        self.revision = 0

    def published_at(self, t: int) -> frozenset[str]:
        index = bisect_right(self.pub_times, t)
        return self.pub_values[index - 1] if index else EMPTY

    def publish(self, t: int, value: frozenset[str]) -> None:
        index = bisect_left(self.pub_times, t)
        if index < len(self.pub_times) and self.pub_times[index] == t:
            self.pub_values[index] = value
        else:
            self.pub_times.insert(index, t)
            self.pub_values.insert(index, value)

    def insert(self, fact: Fact, deltas: tuple[int, ...]) -> int:
        """Insert in event-time order (after equal times) and keep the prefix sums; returns the index."""
        times = self.times
        event_time = fact[0]
        if not times or times[-1] <= event_time:  # in order: the common case
            times.append(event_time)
            self.facts.append(fact)
            for column, delta in zip(self.sums, deltas):  # noqa: B905 (equal lengths by construction)
                column.append(column[-1] + delta)
            return len(times) - 1
        index = bisect_right(times, event_time)
        times.insert(index, event_time)
        self.facts.insert(index, fact)
        for column, delta in zip(self.sums, deltas):  # noqa: B905
            column.insert(index + 1, column[index] + delta)
            if delta:
                for j in range(index + 2, len(column)):
                    column[j] += delta
        return index

    def drop_before(self, cut: int) -> None:
        """Forget the first ``cut`` facts (prefix sums stay differences of the same totals)."""
        del self.times[:cut]
        del self.facts[:cut]
        for column in self.sums:
            del column[:cut]

    def to_plain(self) -> tuple[object, ...]:
        return (self.times, self.facts, self.sums, self.pub_times, self.pub_values, self.revision)

    @classmethod
    def from_plain(cls, plain: tuple[object, ...]) -> UserWindow:
        user = cls.__new__(cls)
        (user.times, user.facts, user.sums, user.pub_times, user.pub_values, user.revision) = plain  # type: ignore[assignment]
        user.part = 0
        return user


# A shard's users as flat columns (see ``ShardSegmenter.__getstate__``): ids, fact counts, the facts' times,
# kinds, amounts and merchants, the prefix-sum columns (a user's run is its count plus one), published
# counts, times and values, revisions.
Columns = tuple[
    list[str],
    list[int],
    list[int],
    list[str],
    list[int],
    list[str | None],
    list[list[int]],
    list[int],
    list[int],
    list[frozenset[str]],
    list[int],
]


def users_from_columns(columns: Columns, parts: int = 1) -> dict[str, UserWindow]:
    """The inverse of the columns ``ShardSegmenter._snapshot`` writes (each user's part out of ``parts``)."""
    ids, counts, times, kinds, micros, merchants, sums, pub_counts, pub_times, pub_values, revisions = columns
    users: dict[str, UserWindow] = {}
    fact = point = 0
    for index, user_id in enumerate(ids):
        user = UserWindow.__new__(UserWindow)
        n = counts[index]
        end = fact + n
        user.times = times[fact:end]
        user.facts = list(zip(user.times, kinds[fact:end], micros[fact:end], merchants[fact:end]))  # type: ignore[arg-type]  # noqa: B905
        user.sums = [column[fact + index : end + index + 1] for column in sums]
        q = pub_counts[index]
        user.pub_times = pub_times[point : point + q]
        user.pub_values = pub_values[point : point + q]
        user.revision = revisions[index]
        user.part = part_of(user_id, parts) if parts > 1 else 0
        users[user_id] = user
        fact = end
        point += q
    return users


class ShardSegmenter:
    """The users of one shard. Deterministic: the same inputs in the same order give the same output."""

    def __init__(self, ruleset: RuleSet, params: GateParams, parts: int = 1, prune_phase_ms: int = 0) -> None:
        self.ruleset = ruleset
        self.params = params
        self.users: dict[str, UserWindow] = {}
        # Change points not yet due, (point, user_id): those that come in order (the common case) queue
        # in ``ordered``, the rest in the heap ``pending``; popping merges the two in (point, user_id) order.
        self.pending: list[tuple[int, str]] = []
        self.ordered: deque[tuple[int, str]] = deque()
        self.watermark = NO_WATERMARK
        self._evaluator = Evaluator(ruleset)
        self._widths = ruleset.widths
        self._span = ruleset.span_ms
        self._kinds = ruleset.kinds
        # Sweeps are due each time the watermark passes a multiple of PRUNE_EVERY_MS plus the phase: shards
        # given different phases sweep at different times, not all in the same batch.
        self._prune_phase = prune_phase_ms % PRUNE_EVERY_MS
        self._next_prune = NO_WATERMARK
        self._names: dict[frozenset[str], tuple[str, ...]] = {}  # a set's names, sorted, as transitions carry them
        # While a shard is rebuilt from part snapshots taken at different batches: the parts whose users are
        # already past the batch being replayed (their events are skipped and sweeps leave them alone).
        self._frozen: frozenset[int] = frozenset()
        self._parts = parts  # users are split into parts for snapshots (``snapshot_part``)

    def __getstate__(self) -> dict[str, object]:
        """A snapshot of the whole shard in columns (see ``snapshot_part``)."""
        return self._snapshot(list(self.users.items()))

    def snapshot_part(self, part: int, parts: int) -> dict[str, object]:
        """A snapshot of the users of ``part`` (of ``parts``, by ``part_of``) and the shard-wide fields.

        A few flat lists pickle an order of magnitude faster than a user's
        objects. The queue of change points is left out: it is exactly the
        window edges of the retained facts that the watermark has not reached, so
        loading rebuilds it. ``from_parts`` puts snapshots of every part, taken
        at different batches, back together.
        """
        if parts != self._parts:
            raise ValueError(f"this shard is split into {self._parts} parts, not {parts}")
        return self._snapshot([(u, w) for u, w in self.users.items() if w.part == part])

    def _snapshot(self, items: list[tuple[str, UserWindow]]) -> dict[str, object]:
        if self._frozen:
            raise RuntimeError("a shard is snapshotted only once its rebuild has finished")
        state = dict(self.__dict__)
        for derived in ("_evaluator", "_names", "users", "pending", "ordered", "_frozen"):
            del state[derived]
        canon = {kind: kind for kind in self._kinds}  # one object per kind: pickle writes the rest as references
        users = [user for _, user in items]
        flat = chain.from_iterable  # each column is one C-level pass over the users (or the facts)
        counts = [len(user.times) for user in users]
        times = list(flat(user.times for user in users))
        facts = list(flat(user.facts for user in users))
        kinds = list(map(canon.__getitem__, map(itemgetter(1), facts)))
        micros = list(map(itemgetter(2), facts))
        merchants = list(map(itemgetter(3), facts))
        sums = [list(flat(user.sums[slot] for user in users)) for slot in range(self._evaluator.additive_count)]
        pub_counts = [len(user.pub_times) for user in users]
        pub_times = list(flat(user.pub_times for user in users))
        pub_values = list(flat(user.pub_values for user in users))
        revisions = [user.revision for user in users]
        columns: Columns = (
            [user_id for user_id, _ in items],
            counts,
            times,
            kinds,
            micros,
            merchants,
            sums,
            pub_counts,
            pub_times,
            pub_values,
            revisions,
        )
        state["columns"] = columns
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        columns: Columns = state.pop("columns")  # type: ignore[assignment]
        self.__dict__.update(state)
        self._evaluator = Evaluator(self.ruleset)
        self._names = {}
        self._frozen = frozenset()
        self.users = users_from_columns(columns, self._parts)
        self.pending = []
        self.ordered = deque(self._edges(self.users, self.watermark))

    def _edges(self, users: dict[str, UserWindow], watermark: int) -> list[tuple[int, str]]:
        """The queued change points of ``users`` as of ``watermark``: their window edges not yet reached."""
        widths = self._widths
        return sorted(
            (t + width, user_id)
            for user_id, user in users.items()
            for t in user.times
            for width in widths
            if t + width > watermark
        )

    @classmethod
    def from_parts(
        cls,
        snapshots: Sequence[dict[str, object] | None],
        base: int,
        ruleset: RuleSet,
        params: GateParams,
        prune_phase_ms: int = 0,
    ) -> ShardSegmenter:
        """A shard from one snapshot per part (``snapshot_part``; None: the part's empty initial state).

        ``base`` is a part whose snapshot is the oldest (None if some part has
        none): the shard-wide fields (the watermark, the sweep schedule) come
        from it, and replaying the batches since then brings them forward. Every
        other part starts frozen, since its users are already as of some later
        batch; ``thaw`` each once that batch has been replayed.
        """
        first = snapshots[base]
        if first is None:
            shard = cls(ruleset, params, len(snapshots), prune_phase_ms)
        else:
            shard = cls.__new__(cls)
            shard.__setstate__(dict(first))
        edges = list(shard.ordered)
        for part, snapshot in enumerate(snapshots):
            if snapshot is None or part == base:
                continue
            users = users_from_columns(snapshot["columns"], len(snapshots))  # type: ignore[arg-type]
            shard.users.update(users)
            edges.extend(shard._edges(users, snapshot["watermark"]))  # type: ignore[arg-type]
        edges.sort()
        shard.ordered = deque(edges)
        shard._frozen = frozenset(part for part in range(len(snapshots)) if part != base)
        return shard

    def _new_part(self, user_id: str) -> int:
        return part_of(user_id, self._parts) if self._parts > 1 else 0

    def thaw(self, part: int) -> None:
        """The replay has reached the batch ``part`` was snapshotted at: its users take part from now on."""
        self._frozen = self._frozen - {part}

    # ---- the two inputs -------------------------------------------------------------------------

    def apply(self, event: Row, emitted_at: int) -> list[Transition]:
        """Apply one event (after ``advance`` to its watermark) and return the transitions it causes.

        ``event`` may be an ``Applied`` or the plain tuple of its fields (as batches carry it).
        """
        user_id, _, kind, _, _, _, event_watermark = event
        out = self.advance(event_watermark, emitted_at) if event_watermark > self.watermark else []
        if kind not in self._kinds:
            return out  # no aggregate reads this kind: it cannot change any set
        user = self.users.get(user_id)
        if self._frozen and (user.part if user is not None else part_of(user_id, self._parts)) in self._frozen:
            return out  # rebuilding: this user's state is already past this event
        if user is None:
            user = self.users[user_id] = UserWindow(self._evaluator.additive_count, self._new_part(user_id))
        self._apply_to(user_id, user, event, emitted_at, out)
        return out

    def _apply_to(self, user_id: str, user: UserWindow, event: Row, emitted_at: int, out: list[Transition]) -> None:
        """Insert the event's fact, queue its window edges, settle every instant it changed."""
        _, event_time, kind, micros, merchant, _, _ = event
        # A plain tuple with Fact's fields: it pickles several times faster than the NamedTuple (state commits).
        fact: Fact = (event_time, kind, micros, merchant)  # type: ignore[assignment]
        index = user.insert(fact, self._evaluator.deltas(kind, micros))
        watermark = self.watermark
        for width in self._widths:
            point = event_time + width
            if point > watermark:
                self._push_point((point, user_id))
        if index == len(user.times) - 1 and event_time > watermark:
            # In order and ahead of the watermark: the event's own instant is the only due one it changes.
            self._settle(user_id, user, event_time, emitted_at, "event", out)
        else:
            # Late (behind the user's later events or the watermark): re-settle everything after it.
            self._settle_from(user_id, user, event_time, emitted_at, "correction", out)

    def advance(self, watermark: int, emitted_at: int, out: list[Transition] | None = None) -> list[Transition]:
        """Move the watermark forward; emit every expiry that became due (appended to ``out`` if
        given). Never moves it back."""
        if out is None:
            out = []
        if watermark <= self.watermark:
            return out
        users = self.users
        ordered = self.ordered
        pending = self.pending
        evaluator = self._evaluator
        width = evaluator.single_width
        frozen = self._frozen
        while True:  # pop due points in (point, user_id) order: ``_pop_point``, inlined (the hot loop)
            if ordered and (not pending or ordered[0] <= pending[0]):
                if ordered[0][0] > watermark:
                    break
                point, user_id = ordered.popleft()
            elif pending and pending[0][0] <= watermark:
                point, user_id = heapq.heappop(pending)
            else:
                break
            user = users.get(user_id)
            if user is None or (frozen and user.part in frozen):
                continue
            # Most expiries change nothing: compare before settling (``_settle``'s test, inlined).
            pub_times = user.pub_times
            if pub_times and pub_times[-1] <= point:
                published = user.pub_values[-1]
            else:
                index = bisect_right(pub_times, point)
                published = user.pub_values[index - 1] if index else EMPTY
            if width is None:
                desired = evaluator.at(user, point)
            else:
                times = user.times
                hi = bisect_right(times, point)
                lo = bisect_right(times, point - width, 0, hi)
                desired = evaluator.classify(tuple([column[hi] - column[lo] for column in user.sums]))
            if desired != published and self._settle(user_id, user, point, emitted_at, "expiry", out):
                self.watermark = point
                self._settle_after_expiry(user_id, user, point, emitted_at, out)
        self.watermark = watermark
        if watermark >= self._next_prune:
            self._next_prune = watermark + PRUNE_EVERY_MS - (watermark - self._prune_phase) % PRUNE_EVERY_MS
            self.prune()
        return out

    def finish(self, emitted_at_of: int) -> list[Transition]:
        """End of a bounded input: the watermark passes every instant; emit all remaining expiries.

        Each expiry is stamped as emitted when a live watermark would have passed
        it (its instant plus the max out-of-orderness), and never before ``emitted_at_of``.
        """
        out: list[Transition] = []
        ooo = self.params.max_out_of_orderness_ms
        while (entry := self._pop_point(END_OF_TIME)) is not None:
            point, user_id = entry
            user = self.users.get(user_id)
            if user is None or (self._frozen and user.part in self._frozen):
                continue
            stamp = max(point + ooo, emitted_at_of)
            if self._settle(user_id, user, point, stamp, "expiry", out):
                self.watermark = point
                self._settle_after_expiry(user_id, user, point, stamp, out)
        self.watermark = END_OF_TIME
        return out

    def apply_batch(self, events: Iterable[Row], clock: Callable[[], int] | None = None) -> list[Transition]:
        """``apply`` each event in order, stamped with its arrival time (or ``clock()``, live): the batch path.

        The same transitions in the same order as ``apply`` per event (a property
        test pins the two together). It inlines the common case, under a rule set
        of one window width: an event in order for its user, ahead of the
        watermark, after everything published for the user. Any other event
        takes ``apply``'s general path.
        """
        out: list[Transition] = []
        evaluator = self._evaluator
        width = evaluator.single_width
        if width is None or self._widths != (width,):
            for event in events:
                out.extend(self.apply(event, clock() if clock is not None else event[5]))
            return out
        users = self.users
        kinds = self._kinds
        ordered = self.ordered
        pending = self.pending
        deltas_of = evaluator.deltas
        classify = evaluator.classify
        additive = evaluator.additive_count
        names = self._names
        for event in events:
            user_id, event_time, kind, micros, merchant, arrival, event_watermark = event
            emitted_at = clock() if clock is not None else arrival
            if event_watermark > self.watermark:
                if (
                    (ordered and ordered[0][0] <= event_watermark)
                    or (pending and pending[0][0] <= event_watermark)
                    or event_watermark >= self._next_prune
                ):
                    self.advance(event_watermark, emitted_at, out)
                else:
                    self.watermark = event_watermark
            if kind not in kinds:
                continue
            user = users.get(user_id)
            if self._frozen and (user.part if user is not None else part_of(user_id, self._parts)) in self._frozen:
                continue  # rebuilding: this user's state is already past this event
            if user is None:
                user = users[user_id] = UserWindow(additive, self._new_part(user_id))
            times = user.times
            pub_times = user.pub_times
            if not (
                event_time > self.watermark
                and (not times or times[-1] <= event_time)
                and (not pub_times or pub_times[-1] <= event_time)
            ):
                self._apply_to(user_id, user, event, emitted_at, out)
                continue
            # In order: append the fact and its prefix sums, queue its window edge, settle its instant.
            times.append(event_time)
            user.facts.append((event_time, kind, micros, merchant))  # type: ignore[arg-type]  # Fact's fields
            sums = user.sums
            for column, delta in zip(sums, deltas_of(kind, micros)):  # noqa: B905 (equal lengths by construction)
                column.append(column[-1] + delta)
            entry = (event_time + width, user_id)
            if not ordered or ordered[-1] <= entry:
                ordered.append(entry)
            else:
                heapq.heappush(pending, entry)
            hi = len(times)
            lo = bisect_right(times, event_time - width, 0, hi)
            desired = classify(tuple([column[hi] - column[lo] for column in sums]))
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

    # ---- internals --------------------------------------------------------------------------------

    def _push_point(self, entry: tuple[int, str]) -> None:
        ordered = self.ordered
        if not ordered or ordered[-1] <= entry:
            ordered.append(entry)
        else:
            heapq.heappush(self.pending, entry)

    def _pop_point(self, limit: int) -> tuple[int, str] | None:
        """The least queued (point, user_id) if its point is at or before ``limit``, removed; else None."""
        ordered = self.ordered
        pending = self.pending
        if ordered and (not pending or ordered[0] <= pending[0]):
            return ordered.popleft() if ordered[0][0] <= limit else None
        if pending and pending[0][0] <= limit:
            return heapq.heappop(pending)
        return None

    def _due_points(self, user: UserWindow, start: int) -> list[int]:
        """The due change points of ``user`` at or after ``start``, ascending.

        Due: every event instant, and every window edge ``e + width`` the
        watermark has reached. Only instants at or after ``start`` can be changed
        by an event at ``start`` or by a publish at ``start - 1``.
        """
        times = user.times
        watermark = self.watermark
        points: set[int] = set()
        for i in range(bisect_left(times, start - self._span), len(times)):
            t = times[i]
            if t >= start:
                points.add(t)
            for width in self._widths:
                p = t + width
                if start <= p <= watermark:
                    points.add(p)
        return sorted(points)

    def _settle_from(
        self,
        user_id: str,
        user: UserWindow,
        start: int,
        emitted_at: int,
        cause: str,
        out: list[Transition],
    ) -> None:
        """Make the published timeline equal the rules at every due instant at or after ``start``."""
        for point in self._due_points(user, start):
            self._settle(user_id, user, point, emitted_at, cause, out)

    def _settle_after_expiry(
        self, user_id: str, user: UserWindow, point: int, emitted_at: int, out: list[Transition]
    ) -> None:
        """After an expiry published a change at ``point``: settle the due instants it can have made wrong.

        An expiry changes no fact, so the rules' value stays what it was at every
        instant; only the published timeline changed, and only up to its next
        change after ``point`` (those later changes were settled against the same
        facts and still hold). So just the due instants in between are re-settled,
        not every later event of the user (with a full ten-minute window, ~120 of
        them, for every expiry that changes a set).
        """
        pub_times = user.pub_times
        index = bisect_right(pub_times, point)
        end = pub_times[index] if index < len(pub_times) else END_OF_TIME
        # The due instants in (point, end): with the watermark at ``point`` (both callers set it) no window
        # edge after it is due yet, so they are the user's event instants there.
        times = user.times
        for due in sorted(set(times[bisect_right(times, point) : bisect_left(times, end)])):
            self._settle(user_id, user, due, emitted_at, "expiry", out)

    def _settle(
        self, user_id: str, user: UserWindow, point: int, emitted_at: int, cause: str, out: list[Transition]
    ) -> bool:
        """Publish the rules' value at ``point`` if the published timeline differs there; True if it did."""
        desired = self._evaluator.at(user, point)
        if desired == user.published_at(point):
            return False
        user.publish(point, desired)
        user.revision += 1
        segments = self._names.get(desired)
        if segments is None:
            segments = self._names[desired] = tuple(sorted(desired))
        out.append(Transition(user_id, segments, point, user.revision, emitted_at, cause))
        return True

    def prune(self) -> None:
        """Drop what no admissible event can need again; forget users whose timeline ended empty."""
        horizon = self.watermark - self.params.allowed_lateness_ms
        if horizon <= NO_WATERMARK:
            return
        keep_after = horizon - self._span
        gone: list[str] = []
        frozen = self._frozen
        for user_id, user in self.users.items():
            if frozen and user.part in frozen:
                continue  # rebuilding: already swept as of a later batch
            cut = bisect_right(user.times, keep_after)
            if cut:
                user.drop_before(cut)
            last = bisect_right(user.pub_times, horizon) - 1
            if last > 0:
                del user.pub_times[:last]
                del user.pub_values[:last]
            ended_empty = not user.pub_times or (user.pub_times[-1] < horizon and not user.pub_values[-1])
            if not user.times and ended_empty:
                gone.append(user_id)
        for user_id in gone:
            del self.users[user_id]

    @property
    def retained_facts(self) -> int:
        return sum(len(u.times) for u in self.users.values())


def run_shard(
    ruleset: RuleSet, params: GateParams, events: Iterable[Applied], final_emitted_at: int
) -> list[Transition]:
    """Apply events in order, then finish: the whole stream for one shard, without Beam (tests, oracle)."""
    shard = ShardSegmenter(ruleset, params)
    out = shard.apply_batch(events)
    out.extend(shard.finish(final_emitted_at))
    return out
