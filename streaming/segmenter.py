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
import sys
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from segments.lateness import END_OF_TIME, NO_WATERMARK, GateParams
from segments.outputs import Transition
from segments.rules import RuleSet
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


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _packed(values: Iterable[int] = ()) -> array[int]:
    return array("q", values)


_ZERO = _packed((0,))  # a prefix-sum column before any fact (copied per user: slicing is the cheapest copy)


class UserWindow:
    """One user's retained facts (sorted by event time) and published timeline, in packed columns.

    Per fact the state is its event time and, per additive aggregate, the
    running (prefix) sum after it: 8-byte integers in ``array('q')`` columns, no
    Python object per fact. An event's kind and amount matter only through what
    it adds to each sum, so they are not kept, except (``kinds``, ``merchants``;
    None otherwise) under a rule set with a distinct count, which reads them. A
    prefix-sum column that would leave the 64-bit range becomes a plain list of
    Python integers for that user (``_widen``), so sums stay exact whatever the
    amounts. The published timeline is its instants (packed) and their sets
    (references to shared frozensets).
    """

    __slots__ = ("key", "kinds", "merchants", "part", "pub_times", "pub_values", "revision", "sums", "times")

    def __init__(self, additive: int, part: int = 0, detail: bool = True) -> None:
        self.part = part  # which part of the shard it is snapshotted with (``part_of``)
        self.key: str | None = None  # the user's id as the shard's change points refer to it (one object)
        self.times: array[int] = array("q")
        self.sums: list[array[int] | list[int]] = [_ZERO[:] for _ in range(additive)]
        self.kinds: list[str] | None = [] if detail else None
        self.merchants: list[str | None] | None = [] if detail else None
        self.pub_times: array[int] = array("q")
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

    def insert(self, event_time: int, deltas: tuple[int, ...], kind: str, merchant: str | None) -> int:
        """Insert in event-time order (after equal times) and keep the prefix sums; returns the index."""
        times = self.times
        if not times or times[-1] <= event_time:  # in order: the common case
            times.append(event_time)
            if self.kinds is not None:
                self.kinds.append(kind)
                self.merchants.append(merchant)  # type: ignore[union-attr]
            for slot, delta in enumerate(deltas):
                column = self.sums[slot]
                try:
                    column.append(column[-1] + delta)
                except OverflowError:
                    self._widen(slot).append(column[-1] + delta)
            return len(times) - 1
        index = bisect_right(times, event_time)
        times.insert(index, event_time)
        if self.kinds is not None:
            self.kinds.insert(index, kind)
            self.merchants.insert(index, merchant)  # type: ignore[union-attr]
        for slot, delta in enumerate(deltas):
            column = self.sums[slot]
            if delta and type(column) is array and (
                min(column[index:]) + delta < INT64_MIN or max(column[index:]) + delta > INT64_MAX
            ):
                column = self._widen(slot)
            column.insert(index + 1, column[index] + delta)
            if delta:
                for j in range(index + 2, len(column)):
                    column[j] += delta
        return index

    def extend_sums(self, deltas: tuple[int, ...]) -> None:
        """Append the prefix sums of the last fact (already in ``times``) to the columns that lack them,
        widening any whose value would leave the 64-bit range."""
        for slot, delta in enumerate(deltas):
            column = self.sums[slot]
            if len(column) == len(self.times):  # (a column has one entry more than there are facts)
                try:
                    column.append(column[-1] + delta)
                except OverflowError:
                    self._widen(slot).append(column[-1] + delta)

    def _widen(self, slot: int) -> list[int]:
        """Make a prefix-sum column a list of Python integers (its values would leave the 64-bit range)."""
        widened = self.sums[slot] = list(self.sums[slot])
        return widened

    def drop_before(self, cut: int) -> None:
        """Forget the first ``cut`` facts (prefix sums stay differences of the same totals)."""
        del self.times[:cut]
        if self.kinds is not None:
            del self.kinds[:cut]
            del self.merchants[:cut]  # type: ignore[union-attr]
        for column in self.sums:
            del column[:cut]


_APPENDERS: dict[int, Callable[[list[array[int] | list[int]], tuple[int, ...]], None]] = {}


def _sum_appender(count: int) -> Callable[[list[array[int] | list[int]], tuple[int, ...]], None]:
    """``append_sums(sums, deltas)``: append to each of ``count`` prefix-sum columns its last value plus its
    delta, unrolled (a third of a loop's time on the in-order path). An ``OverflowError`` leaves the columns
    before the one that raised appended and the rest not (``UserWindow.extend_sums`` finishes them)."""
    found = _APPENDERS.get(count)
    if found is not None:
        return found
    lines = ["def append_sums(s, d):", "    pass"]
    for slot in range(count):
        lines.append(f"    c = s[{slot}]")
        lines.append(f"    c.append(c[-1] + d[{slot}])")
    namespace: dict[str, object] = {"__builtins__": {}}
    exec(compile("\n".join(lines), f"<prefix sums x{count}>", "exec"), namespace)
    append_sums: Callable[[list[array[int] | list[int]], tuple[int, ...]], None]
    append_sums = _APPENDERS[count] = namespace["append_sums"]  # type: ignore[assignment]
    return append_sums


class EdgeQueue:
    """Change points queued in (point, user_id) order, as two packed columns read from ``head`` on.

    The in-order change points of a shard (one per retained fact and window
    width) in a FIFO: an ``array('q')`` of points and a list of references to the
    users' ids (each user's one id object), 16 bytes an entry where a deque of
    tuples took ~100. Popped entries stay until a quarter of the columns is
    behind ``head``; then they are cut (``compact``).
    """

    __slots__ = ("head", "points", "users")

    def __init__(self, entries: Iterable[tuple[int, str]] = ()) -> None:
        self.points: array[int] = _packed()
        self.users: list[str] = []
        self.head = 0
        for point, user_id in entries:
            self.points.append(point)
            self.users.append(user_id)

    def __len__(self) -> int:
        return len(self.users) - self.head

    def __bool__(self) -> bool:
        return len(self.users) > self.head

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return zip(self.points[self.head :], self.users[self.head :])  # noqa: B905 (equal lengths)

    def last(self) -> tuple[int, str]:
        return (self.points[-1], self.users[-1])

    def append(self, entry: tuple[int, str]) -> None:
        self.points.append(entry[0])
        self.users.append(entry[1])

    def compact(self) -> None:
        head = self.head
        if head >= 4096 and 4 * head >= len(self.users):
            del self.points[:head]
            del self.users[:head]
            self.head = 0


# A shard's users as flat columns (see ``ShardSegmenter._snapshot``): the users' ids; then packed (the bytes of
# ``array('q')`` columns, users one after another, zlib-compressed at level 1) their fact counts, the facts'
# times, the prefix-sum columns (a user's run is its count plus one), published counts and times, revisions;
# the published sets; the facts' kinds and merchants (None unless the rule set reads them); and the prefix-sum
# columns of users whose sums left the 64-bit range ({user's index: its columns as lists}; zeros stand in for
# them in the packed columns).
Columns = tuple[
    list[str],
    bytes,
    bytes,
    list[bytes],
    bytes,
    bytes,
    bytes,
    list[frozenset[str]],
    "tuple[list[str], list[str | None]] | None",
    dict[int, list[list[int]]],
]


def _compressed(data: bytes) -> bytes:
    """A packed column as a snapshot carries it: times and prefix sums repeat their high bytes, so even the
    fastest level takes them from 32 bytes a fact (clickstream) to 5-12, for about 1 ms a part."""
    return zlib.compress(data, 1)


def _unpacked(data: bytes | memoryview) -> array[int]:
    column = _packed()
    column.frombytes(data)
    return column


def users_from_columns(columns: Columns, parts: int = 1) -> dict[str, UserWindow]:
    """The inverse of the columns ``ShardSegmenter._snapshot`` writes (each user's part out of ``parts``)."""
    ids, counts_b, times_b, sums_b, pub_counts_b, pub_times_b, revisions_b, pub_values, detail, wide = columns
    unzip = zlib.decompress
    counts, pub_counts = _unpacked(unzip(counts_b)), _unpacked(unzip(pub_counts_b))
    revisions = _unpacked(unzip(revisions_b))
    times, pub_times = memoryview(unzip(times_b)), memoryview(unzip(pub_times_b))
    sums = [memoryview(unzip(column)) for column in sums_b]
    users: dict[str, UserWindow] = {}
    fact = point = 0
    for index, user_id in enumerate(ids):
        user = UserWindow.__new__(UserWindow)
        n = counts[index]
        end = fact + n
        user.key = user_id
        user.times = _unpacked(times[8 * fact : 8 * end])
        user.sums = [_unpacked(column[8 * (fact + index) : 8 * (end + index + 1)]) for column in sums]
        if index in wide:
            user.sums = list(wide[index])
        if detail is None:
            user.kinds = user.merchants = None
        else:
            user.kinds = detail[0][fact:end]
            user.merchants = detail[1][fact:end]
        q = pub_counts[index]
        user.pub_times = _unpacked(pub_times[8 * point : 8 * (point + q)])
        user.pub_values = pub_values[point : point + q]
        user.revision = revisions[index]
        user.part = part_of(user_id, parts) if parts > 1 else 0
        users[user_id] = user
        fact = end
        point += q
    return users


class ShardSegmenter:
    """The users of one shard. Deterministic: the same inputs in the same order give the same output."""

    _sweep_by_part = True  # sweep one part at a time (``_sweep``); the approximate shard sweeps whole

    def __init__(self, ruleset: RuleSet, params: GateParams, parts: int = 1, prune_phase_ms: int = 0) -> None:
        self.ruleset = ruleset
        self.params = params
        self.users: dict[str, UserWindow] = {}
        # Change points not yet due, (point, user_id): those that come in order (the common case) queue
        # in ``ordered``, the rest in the heap ``pending``; popping merges the two in (point, user_id) order.
        self.pending: list[tuple[int, str]] = []
        self.ordered = EdgeQueue()
        self.watermark = NO_WATERMARK
        self._evaluator = Evaluator(ruleset)
        self._widths = ruleset.widths
        self._span = ruleset.span_ms
        self._kinds = ruleset.kinds
        self._detail = self._evaluator.reads_facts  # whether users keep their facts' kinds and merchants
        self._canon_kinds = {kind: kind for kind in self._kinds}
        # Sweeps are due each time the watermark passes a multiple of PRUNE_EVERY_MS plus the phase: shards
        # given different phases sweep at different times, not all in the same batch.
        self._prune_phase = prune_phase_ms % PRUNE_EVERY_MS
        self._next_prune = NO_WATERMARK
        self._swept: int | None = None  # the last sweep tick done (``_sweep``); None before the first sweep
        self._names: dict[frozenset[str], tuple[str, ...]] = {}  # a set's names, sorted, as transitions carry them
        # While a shard is rebuilt from part snapshots taken at different batches: the parts whose users are
        # already past the batch being replayed (their events are skipped and sweeps leave them alone).
        self._frozen: frozenset[int] = frozenset()
        self._parts = parts  # users are split into parts for snapshots (``snapshot_part``)
        self._by_part: list[list[str]] | None = None  # the users of each part as of the last bucketing
        self._joined: list[dict[str, None]] = []  # per part: users created since, in the order ``users`` has them

    @property
    def pending_edges(self) -> int:
        """Change points queued and not yet due (the health field ``state_edges_shard<N>``)."""
        return len(self.ordered) + len(self.pending)

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
        return self._snapshot(self._part_items(part))

    def _part_items(self, part: int) -> list[tuple[str, UserWindow]]:
        """The users of ``part`` in the order ``users`` has them, without a pass over every user each time.

        The pipeline snapshots the parts in turn, one an epoch; a pass over all
        users for each part cost a few percent of the live path's CPU. The users
        are put in buckets by part once a turn (at part 0), and the users created
        since are kept aside in ``_joined``, by part too: a user removed and
        created again since comes from there, at its new place in ``users``.
        """
        users, by_part = self.users, self._by_part
        if by_part is None or part == 0:
            by_part = self._by_part = [[] for _ in range(self._parts)]
            for user_id, user in users.items():
                by_part[user.part].append(user_id)
            self._joined = [{} for _ in range(self._parts)]
        joined = self._joined[part]
        items = [(u, users[u]) for u in by_part[part] if u in users and u not in joined]
        if joined:
            items.extend((u, users[u]) for u in joined if u in users)
        return items

    def _snapshot(self, items: list[tuple[str, UserWindow]]) -> dict[str, object]:
        if self._frozen:
            raise RuntimeError("a shard is snapshotted only once its rebuild has finished")
        state = dict(self.__dict__)
        for derived in (
            "_evaluator", "_names", "users", "pending", "ordered", "_frozen", "_detail", "_canon_kinds", "_by_part",
            "_joined",
        ):  # fmt: skip
            del state[derived]
        users = [user for _, user in items]
        join = b"".join  # each column is one C-level pass over the users' packed columns
        wide: dict[int, list[list[int]]] = {}
        for index, user in enumerate(users):
            if any(type(column) is not array for column in user.sums):
                wide[index] = [list(column) for column in user.sums]
        sums: list[bytes] = []
        for slot in range(self._evaluator.additive_count):
            if wide:
                runs = [bytes(8 * len(u.sums[slot])) if i in wide else u.sums[slot] for i, u in enumerate(users)]
                sums.append(_compressed(join(runs)))  # type: ignore[arg-type]  # the lists are in ``wide``
            else:
                sums.append(_compressed(join([user.sums[slot] for user in users])))  # type: ignore[misc]
        detail: tuple[list[str], list[str | None]] | None = None
        if self._detail:
            canon = {kind: kind for kind in self._kinds}  # one object per kind: pickle writes the rest as references
            kinds = [canon.get(k, k) for user in users for k in (user.kinds or ())]
            merchants = [m for user in users for m in (user.merchants or ())]
            detail = (kinds, merchants)
        columns: Columns = (
            [user_id for user_id, _ in items],
            _compressed(_packed([len(user.times) for user in users]).tobytes()),
            _compressed(join([user.times for user in users])),
            sums,
            _compressed(_packed([len(user.pub_times) for user in users]).tobytes()),
            _compressed(join([user.pub_times for user in users])),
            _compressed(_packed([user.revision for user in users]).tobytes()),
            [value for user in users for value in user.pub_values],
            detail,
            wide,
        )
        state["columns"] = columns
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        columns: Columns = state.pop("columns")  # type: ignore[assignment]
        self._swept = None  # (a snapshot from before part sweeps has none: its next sweep is a whole one)
        self.__dict__.update(state)
        self._evaluator = Evaluator(self.ruleset)
        self._names = {}
        self._frozen = frozenset()
        self._detail = self._evaluator.reads_facts
        self._canon_kinds = {kind: kind for kind in self._kinds}
        self._by_part, self._joined = None, []
        self.users = users_from_columns(columns, self._parts)
        self.pending = []
        self.ordered = EdgeQueue(self._edges(self.users, self.watermark))

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
            shard._by_part = None  # users came in without ``_new_user``: bucket them afresh
            edges.extend(shard._edges(users, snapshot["watermark"]))  # type: ignore[arg-type]
        edges.sort()
        shard.ordered = EdgeQueue(edges)
        shard._frozen = frozenset(part for part in range(len(snapshots)) if part != base)
        return shard

    def _new_user(self, user_id: str) -> UserWindow:
        """A new user's window; the caller puts it in ``users`` (at the end, as a dict does)."""
        part = self._new_part(user_id)
        user = UserWindow(self._evaluator.additive_count, part, self._detail)
        user.key = user_id
        if self._by_part is not None:
            joined = self._joined[part]
            joined.pop(user_id, None)  # created again: it moved to the end of ``users``
            joined[user_id] = None
        return user

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
            user = self.users[user_id] = self._new_user(user_id)
        self._apply_to(user_id, user, event, emitted_at, out)
        return out

    def _apply_to(self, user_id: str, user: UserWindow, event: Row, emitted_at: int, out: list[Transition]) -> None:
        """Insert the event's fact, queue its window edges, settle every instant it changed."""
        _, event_time, kind, micros, merchant, _, _ = event
        if user.kinds is not None:  # one object per kind and per merchant name, not one per fact
            kind = self._canon_kinds.get(kind, kind)
            if merchant is not None:
                merchant = sys.intern(merchant)
        index = user.insert(event_time, self._evaluator.deltas(kind, micros), kind, merchant)
        key = user.key
        if key is None:
            key = user.key = user_id
        watermark = self.watermark
        for width in self._widths:
            point = event_time + width
            if point > watermark:
                self._push_point((point, key))
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
        self._expire(watermark, emitted_at, out)
        self.watermark = watermark
        if watermark >= self._next_prune:
            self._sweep(watermark)
        return out

    def _sweep(self, watermark: int) -> None:
        """The sweeps the watermark has reached. A shard of one part sweeps every user once a period
        (``PRUNE_EVERY_MS``, from its phase). A shard of ``parts`` parts sweeps one part at a time, part ``j %
        parts`` at tick ``j``'s instant ``phase + j * PRUNE_EVERY_MS // parts``: each user still once a
        period, but a sweep no longer visits every user of the shard in one batch (12.5K users at 240 facts
        each stalled the live loop for 170-350 ms). A part's sweeps depend on the watermark alone, so a
        rebuild from part snapshots sweeps as the run did. A first sweep, or a watermark that jumps a whole
        period, sweeps every part."""
        parts = self._parts if self._sweep_by_part else 1
        tick = ((watermark - self._prune_phase + 1) * parts - 1) // PRUNE_EVERY_MS  # the last instant reached
        last, self._swept = self._swept, tick
        self._next_prune = self._prune_phase + (tick + 1) * PRUNE_EVERY_MS // parts
        if last is None or tick - last >= parts:
            self.prune()
        else:
            for j in range(last + 1, tick + 1):
                self.prune(j % parts)

    def finish(self, emitted_at_of: int) -> list[Transition]:
        """End of a bounded input: the watermark passes every instant; emit all remaining expiries.

        Each expiry is stamped as emitted when a live watermark would have passed
        it (its instant plus the max out-of-orderness), and never before ``emitted_at_of``.
        """
        out: list[Transition] = []
        self._expire(END_OF_TIME, emitted_at_of, out, self.params.max_out_of_orderness_ms)
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
        window = evaluator.window_classifier
        if width is None or window is None or self._widths != (width,) or self._detail:
            for event in events:
                out.extend(self.apply(event, clock() if clock is not None else event[5]))
            return out
        window_mask, sets, _ = window
        users = self.users
        kinds = self._kinds
        ordered = self.ordered
        pending = self.pending
        deltas_of = evaluator.deltas
        constant = evaluator.constant_deltas
        names = self._names
        append_sums = _sum_appender(evaluator.additive_count)
        points = ordered.points
        ids = ordered.users
        frozen = self._frozen
        watermark = self.watermark
        due = self._next_due()  # the watermark at which ``advance`` has something to do
        for event in events:
            user_id, event_time, kind, micros, _, arrival, event_watermark = event
            emitted_at = clock() if clock is not None else arrival
            if event_watermark > watermark:
                watermark = event_watermark
                if watermark >= due:
                    self.advance(watermark, emitted_at, out)
                    due = self._next_due()
                else:
                    self.watermark = watermark
            if kind not in kinds:
                continue
            user = users.get(user_id)
            if frozen and (user.part if user is not None else part_of(user_id, self._parts)) in frozen:
                continue  # rebuilding: this user's state is already past this event
            if user is None:
                user = users[user_id] = self._new_user(user_id)
            times = user.times
            pub_times = user.pub_times
            if not (
                event_time > watermark
                and (not times or times[-1] <= event_time)
                and (not pub_times or pub_times[-1] <= event_time)
            ):
                self._apply_to(user_id, user, event, emitted_at, out)
                due = self._next_due()  # a late event's edges may be due sooner than any queued before
                continue
            # In order: append the fact and its prefix sums, queue its window edge, settle its instant.
            times.append(event_time)
            sums = user.sums
            deltas = constant.get(kind)
            if deltas is None:
                deltas = deltas_of(kind, micros)
            try:
                append_sums(sums, deltas)
            except OverflowError:  # a sum left the 64-bit range: the columns not appended yet, one at a time
                user.extend_sums(deltas)
            key = user.key
            if key is None:
                key = user.key = user_id
            point = event_time + width
            if ordered.head == len(ids) or points[-1] < point or (points[-1] == point and ids[-1] <= key):
                points.append(point)
                ids.append(key)
            else:
                heapq.heappush(pending, (point, key))
            if point < due:
                due = point
            hi = len(times)
            desired = sets[window_mask(sums, bisect_right(times, event_time - width, 0, hi), hi)]
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

    def _next_due(self) -> int:
        """The least watermark at which ``advance`` has something to do: the first queued change point, or the
        next sweep."""
        due = self._next_prune
        ordered = self.ordered
        if ordered and ordered.points[ordered.head] < due:
            due = ordered.points[ordered.head]
        if self.pending and self.pending[0][0] < due:
            due = self.pending[0][0]
        return due

    # ---- internals --------------------------------------------------------------------------------

    def _push_point(self, entry: tuple[int, str]) -> None:
        ordered = self.ordered
        if not ordered or ordered.last() <= entry:
            ordered.append(entry)
        else:
            heapq.heappush(self.pending, entry)

    def _expire(self, watermark: int, emitted_at: int, out: list[Transition], ooo: int | None = None) -> None:
        """Settle every queued change point at or before ``watermark``, in (point, user_id) order (expiry).

        The due points are one run: the queue's columns from ``head`` up to the
        watermark (one bisection), merged with the heap's due entries (rarely
        any). Settling never queues a point, so the run is fixed before it is
        walked. Most expiries change nothing, so each is compared before it is
        settled; a user none of whose facts is left in the window at the point
        is compared without a bisection. With ``ooo`` (``finish``) each expiry is
        stamped ``max(point + ooo, emitted_at)``.
        """
        ordered = self.ordered
        points = ordered.points
        ids = ordered.users
        head = ordered.head
        end = bisect_right(points, watermark, head)
        run: Iterable[tuple[int, str]] = zip(points[head:end], ids[head:end])  # noqa: B905 (equal lengths)
        pending = self.pending
        if pending and pending[0][0] <= watermark:
            late = []
            while pending and pending[0][0] <= watermark:
                late.append(heapq.heappop(pending))
            run = heapq.merge(run, late)
        ordered.head = end
        ordered.compact()
        users = self.users
        frozen = self._frozen
        evaluator = self._evaluator
        width = evaluator.single_width
        window = evaluator.window_classifier
        if window is not None:
            window_mask, sets, vacant = window  # vacant: the set of a window with no fact in it
        for point, user_id in run:
            user = users.get(user_id)
            if user is None or (frozen and user.part in frozen):
                continue
            pub_times = user.pub_times
            if pub_times and pub_times[-1] <= point:
                published = user.pub_values[-1]
            else:
                index = bisect_right(pub_times, point)
                published = user.pub_values[index - 1] if index else EMPTY
            if window is None:
                desired = evaluator.at(user, point)
            else:
                times = user.times
                start = point - width  # type: ignore[operator]  # a width whenever ``window`` is
                if not times or times[-1] <= start:
                    desired = vacant
                else:
                    hi = bisect_right(times, point)
                    desired = sets[window_mask(user.sums, bisect_right(times, start, 0, hi), hi)]
            if desired != published:
                stamp = emitted_at if ooo is None else max(point + ooo, emitted_at)
                if self._settle(user_id, user, point, stamp, "expiry", out):
                    self.watermark = point
                    self._settle_after_expiry(user_id, user, point, stamp, out)

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

    def prune(self, part: int | None = None) -> None:
        """Drop what no admissible event can need again; forget users whose timeline ended empty. Every user,
        or those of ``part`` alone."""
        horizon = self.watermark - self.params.allowed_lateness_ms
        if horizon <= NO_WATERMARK:
            return
        keep_after = horizon - self._span
        gone: list[str] = []
        frozen = self._frozen
        if part is not None and part in frozen:
            return  # rebuilding: already swept as of a later batch
        for user_id, user in self.users.items() if part is None else self._part_items(part):
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
