"""Segment reach over time: distinct users per segment per minute and hour, sketched and exact, both sides.

**Definition.** A user *reaches* segment X in bucket ``[b, b + grain)`` when the
side had the user in X at some instant of the bucket: for the stream, its
settled timeline (SPEC §4: per effective time the highest revision; a set holds
until the next one) overlaps the bucket with X in the set; for legacy, some
as-of in the bucket assigned X. Timelines are read up to the last as-of (the
comparison's horizon).

**Sketches beside the exact count.** Per (side, segment, grain, bucket) the
exact set is counted, and a DataSketches HLL (``segments.sketches``; hours are
the ``hll_union`` of their minutes, as shards or runs would be merged) gives the
estimate with its stated bound; ``within`` says whether the exact count lies
inside it. With a Redis client, each side's reach is also kept in the serving
store (``ReachStore``: ``PFADD`` per minute, ``PFMERGE`` of the minutes into
the hour, ``PFCOUNT``), under the side's namespace, and that count and its error
are recorded too. The evidence (``sketches.json``) carries every series with
the serialized sketches, so runs and shards can be merged later.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compare.frames import decoded, dictionary_parts
from segments.sketches import (
    GRAINS,
    HLL_LG_K,
    HLL_SIGMAS,
    HLL_TYPE,
    REDIS_HLL_BOUND,
    bucket_of,
    hll_bound,
    hll_to_text,
    merge_hll,
    new_hll,
    relative_error,
)
from segments.timeutil import format_ms

Key = tuple[str, str, str, int]  # side, segment, grain, bucket start (ms)


class ReachPort(Protocol):
    """Where a side's reach is kept in the serving store (``segments.reachstore.ReachStore``)."""

    def add(self, side: str, segment: str, grain: str, bucket_ms: int, users: Iterable[str]) -> None: ...
    def merge(
        self, side: str, segment: str, grain: str, bucket_ms: int, sources: Iterable[int], source_grain: str
    ) -> None: ...
    def count(self, side: str, segment: str, grain: str, bucket_ms: int) -> int: ...


def stream_reach(table: pa.Table, horizon_ms: int) -> dict[Key, set[str]]:
    """Exact minute reach of a stream output (its settled timelines up to ``horizon_ms``)."""
    minute = GRAINS["minute"]
    users = decoded(table.column("user_id")).to_pylist()
    segments = decoded(table.column("segments")).to_pylist()
    times = table.column("effective_time").to_pylist()
    revisions = decoded(table.column("revision")).to_pylist()
    latest: dict[tuple[str, int], tuple[int, list[str]]] = {}
    for user, segs, t, rev in zip(users, segments, times, revisions, strict=True):
        key = (user, t)
        held = latest.get(key)
        if held is None or rev > held[0]:
            latest[key] = (rev, segs)
    timeline: dict[str, list[tuple[int, list[str]]]] = defaultdict(list)
    for (user, t), (_, segs) in latest.items():
        timeline[user].append((t, segs))
    out: dict[Key, set[str]] = defaultdict(set)
    for user, steps in timeline.items():
        steps.sort(key=lambda step: step[0])
        for i, (start, segs) in enumerate(steps):
            if not segs or start > horizon_ms:
                continue
            end = min(steps[i + 1][0] if i + 1 < len(steps) else horizon_ms + 1, horizon_ms + 1)  # exclusive
            for b in range(bucket_of(start, minute), end, minute):
                for seg in segs:
                    out[("stream", seg, "minute", b)].add(user)
    return out


def legacy_reach(table: pa.Table) -> dict[Key, set[str]]:
    """Exact minute reach of a legacy output (the as-ofs that assigned each segment)."""
    minute = GRAINS["minute"]
    out: dict[Key, set[str]] = defaultdict(set)
    for t, user, segs in zip(
        table.column("as_of").to_pylist(),
        decoded(table.column("user_id")).to_pylist(),
        decoded(table.column("segments")).to_pylist(),
        strict=True,
    ):
        for seg in segs:
            out[("legacy", seg, "minute", bucket_of(t, minute))].add(user)
    return out


@dataclass(frozen=True)
class ReachRow:
    """One bucket of one side's reach of one segment: exact, HLL with its bound, and Redis' count."""

    side: str
    segment: str
    grain: str
    bucket_ms: int
    exact: int
    hll: float
    hll_error: float
    within: bool
    redis: int | None
    redis_error: float | None
    sketch: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "segment": self.segment,
            "grain": self.grain,
            "bucket": format_ms(self.bucket_ms),
            "exact": self.exact,
            "hll": round(self.hll, 2),
            "hll_error": round(self.hll_error, 6),
            "within_bound": self.within,
            "redis": self.redis,
            "redis_error": None if self.redis_error is None else round(self.redis_error, 6),
            "sketch": self.sketch,
        }


@dataclass(frozen=True)
class Reach:
    """Every reach series, and the bounds they were checked against."""

    rows: tuple[ReachRow, ...]
    minute_bound: float
    hour_bound: float

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        redis = [r.redis_error for r in rows if r.redis_error is not None]
        return {
            "buckets": len(rows),
            "outside_bound": sum(1 for r in rows if not r.within),
            "max_hll_error": round(max((r.hll_error for r in rows), default=0.0), 6),
            "max_redis_error": round(max(redis), 6) if redis else None,
            "hll": {
                "lg_k": HLL_LG_K,
                "sigmas": HLL_SIGMAS,
                "minute_bound": self.minute_bound,
                "hour_bound": self.hour_bound,
            },
            "redis_bound": REDIS_HLL_BOUND,
            "bytes_per_sketch_max": max((len(r.sketch) * 3 // 4 for r in rows), default=0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "series": [r.to_dict() for r in self.rows]}


# ---- the same reach as columns (what ``build_reach`` uses) ------------------------------------------------

_CHUNK_MINUTES = 64  # minute buckets expanded at once for one segment of a stream (bounds the memory)
_BITMAP_CELLS = 1 << 22  # (minute, user) cells marked at once: 4 MB of flags, 32 MB of a stream's span counts
_DENSE = 8  # a bitmap when it has at most this many cells per (bucket, user) row it marks, else a sort
Minute = tuple[Key, np.ndarray]
"""A minute bucket's key and its users' sorted codes."""


@dataclass(frozen=True)
class SideReach:
    """One side's exact minute reach as integer codes: ``minutes[key]`` holds the sorted codes of its users,
    ``names[code]`` is a user's id. The same sets as ``legacy_reach`` / ``stream_reach``, without a Python
    object per (bucket, user)."""

    names: list[str]
    minutes: dict[Key, np.ndarray]


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array of ``column``: its only chunk as it is (no copy of a 10M-row column), else the chunks joined."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _user_codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Each row's user as a code (codes in first-seen order) and the codes' ids; of a dictionary column
    from its codes alone (the same codes and ids as from its values)."""
    parts = dictionary_parts(column)
    if parts is not None and not column.null_count:
        rows, values = parts
        encoded = pc.dictionary_encode(pa.array(rows))
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        return codes, values.take(encoded.dictionary).to_pylist()
    encoded = pc.dictionary_encode(_combined(decoded(column)))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, encoded.dictionary.to_pylist()


def _segment_rows(column: pa.ChunkedArray | pa.Array) -> tuple[list[str], Callable[[int], np.ndarray]]:
    """The names a list column lists, and for a name's code the rows that list it (ascending; a row that
    lists a name twice may appear twice). Of a dictionary column, from the few distinct lists and the
    rows' codes, without flattening the rows."""
    parts = dictionary_parts(column)
    if parts is None:
        rows, segs, seg_names = _flat_segments(decoded(column))
        return seg_names, lambda code: rows[segs == code]
    codes, lists = parts
    at, listed, seg_names = _flat_segments(lists)
    has = np.zeros((len(seg_names), len(lists) + 1), dtype=np.bool_)  # the last column: a null row's (-1)
    has[listed, at] = True
    small = np.int32 if len(codes) < 2**31 else np.int64
    return seg_names, lambda code: np.flatnonzero(has[code].take(codes)).astype(small, copy=False)


def _flat_segments(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(row of each listed name, the name's code, the codes' names): every (row, segment) of a list column."""
    lists = _combined(column)
    rows = np.int32 if len(lists) < 2**31 else np.int64  # int32 when it fits: half the memory
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(rows)
    encoded = pc.dictionary_encode(pc.list_flatten(lists))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return parents, codes, encoded.dictionary.to_pylist()


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values (a sort and a comparison: several times faster here than ``np.unique``)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=np.bool_)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _group(side: str, segment: str, bucket: np.ndarray, user: np.ndarray, users: int) -> Iterator[Minute]:
    """The distinct users (sorted int32 codes) of each minute bucket among rows of bucket starts and user codes."""
    if not len(bucket):
        return
    minute = GRAINS["minute"]
    first = int(bucket.min())
    slot = (bucket - first) // minute
    slots = int(slot.max()) + 1
    if slots * users > _DENSE * len(slot):  # sparse: a sweep would mostly scan empty slots, sort instead
        yield from _sorted_groups(side, segment, first, slot, user, users)
        return
    yield from _sweep(side, segment, first, slot, None, user, users)


def _sweep(
    side: str,
    segment: str,
    start_ms: int,
    first: np.ndarray,
    last: np.ndarray | None,
    who: np.ndarray,
    users: int,
) -> Iterator[Minute]:
    """The minute buckets that spans of minute slots ``[first, last)`` (slot 0 starts at ``start_ms``;
    ``last`` None: each span is its first slot alone) of users ``who`` cover, each with its users in
    ascending code order: one pass over the slots with a count per user (+1 where a span opens, -1 where it
    closes), so memory is one count per user whatever the slots. Dense work: each slot scans every user, so
    callers take it only when the spans fill the slots."""
    minute = GRAINS["minute"]
    if not len(first):
        return
    slots = int(first.max()) + 1 if last is None else int(last.max())
    small = np.uint16 if slots < 1 << 16 else np.int64  # a 16-bit key sorts by radix, in linear time
    opens = np.argsort(first.astype(small), kind="stable")
    edges = np.arange(slots + 1)
    open_at = np.searchsorted(first[opens], edges).tolist()
    who_open = who[opens]
    del opens
    held = np.empty(users, dtype=np.bool_)
    if last is None:
        for k in range(int(first.min()), slots):
            a, b = open_at[k], open_at[k + 1]
            if b > a:
                held.fill(False)
                held[who_open[a:b]] = True
                yield (side, segment, "minute", start_ms + k * minute), np.flatnonzero(held).astype(np.int32)
        return
    closes = np.argsort(last.astype(small), kind="stable")
    close_at = np.searchsorted(last[closes], edges).tolist()
    who_close = who[closes]
    del closes
    count = np.zeros(users, dtype=np.int64)
    for k in range(int(first.min()), slots):
        a, b = open_at[k], open_at[k + 1]
        if b > a:
            count += np.bincount(who_open[a:b], minlength=users)
        a, b = close_at[k], close_at[k + 1]
        if b > a:
            count -= np.bincount(who_close[a:b], minlength=users)
        np.greater(count, 0, out=held)
        members = np.flatnonzero(held)
        if len(members):
            yield (side, segment, "minute", start_ms + k * minute), members.astype(np.int32)


def _bitmap_minutes(side: str, segment: str, start_ms: int, seen: np.ndarray) -> Iterator[Minute]:
    """Each non-empty row of a (minute slot, user) bitmap whose first slot starts at ``start_ms``: its bucket
    and the users set in it, in ascending code order."""
    minute = GRAINS["minute"]
    for i in np.flatnonzero(seen.any(axis=1)).tolist():
        yield (side, segment, "minute", start_ms + i * minute), np.flatnonzero(seen[i]).astype(np.int32)


def _sorted_groups(
    side: str, segment: str, first: int, slot: np.ndarray, user: np.ndarray, users: int
) -> Iterator[Minute]:
    """``_group`` by sorting (slot, user) keys: for buckets that hold few of the users."""
    minute = GRAINS["minute"]
    keys = _distinct(slot * users + user)
    slots = keys // users
    cuts = np.flatnonzero(np.diff(slots)) + 1
    for part in np.split(keys, cuts):
        b = first + int(part[0] // users) * minute
        yield (side, segment, "minute", b), (part % users).astype(np.int32)


def _legacy_groups(table: pa.Table) -> tuple[list[str], Iterator[Minute]]:
    minute = GRAINS["minute"]
    users, names = _user_codes(table.column("user_id"))
    seg_names, seg_rows = _segment_rows(table.column("segments"))
    column = table.column("as_of")
    parts = dictionary_parts(column) if not column.null_count else None
    if parts is None:
        as_of, buckets = decoded(column).to_numpy().astype(np.int64, copy=False), None
    else:  # each row's code, and the distinct as-ofs' buckets
        as_of, buckets = parts[0], parts[1].to_numpy().astype(np.int64)
        buckets -= buckets % minute

    def groups() -> Iterator[Minute]:
        for code, segment in enumerate(seg_names):
            if segment is None:
                continue
            mine = seg_rows(code)
            bucket = as_of[mine]
            if buckets is not None:
                bucket = buckets.take(bucket)
            else:
                bucket -= bucket % minute
            yield from _group("legacy", segment, bucket, users[mine], len(names))

    return names, groups()


def _spans(
    side: str, segment: str, s: np.ndarray, e: np.ndarray, who: np.ndarray, chunk: int, slots: int, users: int
) -> Iterator[Minute]:
    """The minute buckets of ``[chunk, chunk + slots minutes)`` that spans ``[s, e)`` (``s`` minute-aligned,
    within the chunk) of users ``who`` overlap, each with its users: a (slot, user) coverage count marked
    +1 where a span starts and -1 where it ends, summed along the slots."""
    minute = GRAINS["minute"]
    first = (s - chunk) // minute
    last = (e - chunk + minute - 1) // minute  # exclusive
    cells = (slots + 1) * users
    cover = np.bincount(first * users + who, minlength=cells)
    cover -= np.bincount(last * users + who, minlength=cells)
    cover = cover.reshape(slots + 1, users)
    np.cumsum(cover, axis=0, out=cover)
    yield from _bitmap_minutes(side, segment, chunk, cover[:slots] > 0)


def _settled(
    users: np.ndarray, times: np.ndarray, revisions: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (user, time), the row that wins (the highest revision, the first in input order among equals),
    as (winning rows, their users, their times) in (user, time) order. Packed into one int64 key and one
    ranking number when they fit (a sort and a segmented maximum), else a four-key lexsort."""
    n = len(times)
    floor = int(times.min())
    width = int(times.max()) - floor + 1
    low = int(revisions.min())
    if max(n_users, 1) * width < 1 << 62 and (int(revisions.max()) - low + 1) * n < 1 << 62:
        key = users.astype(np.int64)
        key *= width
        key += times
        key -= floor
        order = np.argsort(key)
        key = key.take(order)
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        rank = revisions.take(order).astype(np.int64, copy=False)  # higher revision, then earlier row, ranks higher
        rank -= low
        rank *= n
        rank += n - 1
        rank -= order
        del order
        best = np.maximum.reduceat(rank, starts)
        del rank
        best %= n
        winners = np.subtract(n - 1, best, out=best)
        key = key.take(starts)
        del starts
        time = key % width
        time += floor
        key //= width
        return winners, key.astype(users.dtype), time
    order = np.lexsort((np.arange(n), -revisions, times, users))
    u, t = users[order], times[order]
    first = np.ones(n, dtype=np.bool_)
    first[1:] = (u[1:] != u[:-1]) | (t[1:] != t[:-1])
    return order[first], u[first], t[first]


def _stream_groups(table: pa.Table, horizon_ms: int) -> tuple[list[str], Iterator[Minute]]:
    minute = GRAINS["minute"]
    users, names = _user_codes(table.column("user_id"))
    times = table.column("effective_time").to_numpy().astype(np.int64, copy=False)
    revisions = decoded(table.column("revision")).to_numpy().astype(np.int64, copy=False)
    n = len(times)
    if n == 0:
        return names, iter(())
    # per (user, time) the highest revision wins, the first in input order among equals
    winners, u, t = _settled(users, times, revisions, len(names))
    del revisions
    end = np.full(len(u), horizon_ms + 1, dtype=np.int64)
    same = u[1:] == u[:-1]
    end[:-1][same] = np.minimum(t[1:][same], horizon_ms + 1)
    start = t - t % minute
    live = (t <= horizon_ms) & (end > start)
    del users, times, same
    # each input row's place among the winners (-1: the row lost): no copy of the winners' lists, whose
    # names only the rows that won and are live keep
    place = np.full(n, -1, dtype=np.int32 if n < 2**31 else np.int64)
    place[winners] = np.arange(len(winners), dtype=place.dtype)
    del winners
    seg_names, seg_rows = _segment_rows(table.column("segments"))

    def groups() -> Iterator[Minute]:
        users_n = len(names)
        per = max(1, min(_CHUNK_MINUTES, _BITMAP_CELLS // max(users_n, 1)))
        chunk_ms = per * minute
        for code, segment in enumerate(seg_names):
            if segment is None:
                continue
            mine = place[seg_rows(code)]
            mine = mine[mine >= 0]
            mine = mine[live[mine]]
            s, e, who = start[mine], end[mine], u[mine]
            if not len(s):
                continue
            base = int(s.min())
            first = (s - base) // minute
            last = (e - base + minute - 1) // minute  # exclusive: buckets b = s, s + minute, ... below e
            if int(last.max()) * users_n <= _DENSE * int((last - first).sum()):
                if int(last.max()) < 1 << 16:  # held through the sweep: as narrow as they fit
                    first, last = first.astype(np.uint16), last.astype(np.uint16)
                del s, e, mine  # only the slots and users are swept
                yield from _sweep("stream", segment, base, first, last, who, users_n)
                continue
            del first, last
            for chunk in range(int(s.min()), int(e.max()), chunk_ms):  # each bucket falls in one chunk
                hit = (s < chunk + chunk_ms) & (e > chunk)
                cs = np.maximum(s[hit], chunk)
                ce = np.minimum(e[hit], chunk + chunk_ms)
                counts = (ce - cs + minute - 1) // minute  # buckets b = cs, cs + minute, ... below ce
                if per * users_n <= _DENSE * int(counts.sum()):
                    yield from _spans("stream", segment, cs, ce, who[hit], chunk, per, users_n)
                    continue
                spans = np.repeat(np.arange(len(cs)), counts)
                offsets = np.zeros(len(cs), dtype=np.int64)
                np.cumsum(counts[:-1], out=offsets[1:])
                step = np.arange(len(spans), dtype=np.int64) - offsets[spans]
                yield from _group("stream", segment, cs[spans] + step * minute, who[hit][spans], users_n)

    return names, groups()


def legacy_minutes(table: pa.Table) -> SideReach:
    """``legacy_reach`` as codes (see ``SideReach``)."""
    names, groups = _legacy_groups(table)
    return SideReach(names, dict(groups))


def stream_minutes(table: pa.Table, horizon_ms: int) -> SideReach:
    """``stream_reach`` as codes (see ``SideReach``): the settled timelines' spans, expanded into minutes."""
    names, groups = _stream_groups(table, horizon_ms)
    return SideReach(names, dict(groups))


def _sketch(members: list[str]) -> Any:
    """An HLL of ``members``, updated in their order (the estimate depends on the order)."""
    sketch = new_hll()
    deque(map(sketch.update, members), maxlen=0)
    return sketch


_FULL_HEAD = 1 << 11
"""Members a minute's HLL takes one by one before any is skipped: past them it has left its coupon list and
set (which keep every distinct coupon) for the register array, when it has seen about 3/4 of 2^(lg_k - 3)."""


def _coupon(user: str) -> int:
    """The coupon DataSketches makes of ``user`` (its hash's register address and value), read from a
    one-member sketch: in list mode that is an 8-byte preamble, then the coupon as a little-endian uint32."""
    sketch = new_hll()
    sketch.update(user)
    data = sketch.serialize_compact()
    if len(data) != 12 or data[7] & 3 != 0:
        raise AssertionError(f"unexpected one-member HLL serialization ({len(data)} bytes, mode byte {data[7]})")
    return int.from_bytes(data[8:12], "little")


class _Registers:
    """Each user's register (slot) and value in a ``HLL_LG_K`` HLL_8 sketch, from its coupon.

    In register mode an HLL_8 update whose value is not above its register's is a no-op (no register,
    HIP accumulator or kxq changes), and the register holds the largest value fed to it so far. So in a
    sequence of members only the running records of each register (a value above every earlier one in the
    same register) change the sketch; feeding only those, once the sketch is in register mode, leaves it
    byte for byte what feeding everyone would (the order-dependent HIP estimate included).
    """

    def __init__(self, names: list[str], known: dict[str, int]) -> None:
        """``known``: coupons already made (the other side's users, mostly the same), extended here."""

        def coupon(user: str) -> int:
            found = known.get(user)
            if found is None:
                found = known[user] = _coupon(user)
            return found

        coupons = np.fromiter(map(coupon, names), dtype=np.uint32, count=len(names))
        slot = (coupons & np.uint32((1 << HLL_LG_K) - 1)).astype(np.uint16 if HLL_LG_K <= 16 else np.uint32)
        value = (coupons >> np.uint32(26)).astype(np.int32)  # 1..63
        self.slot = slot
        key = slot.astype(np.int32)
        key <<= 6
        key |= value
        self.key = key  # per user: registers apart and ascending, so one running maximum serves them all

    def changes(self, codes: np.ndarray) -> np.ndarray:
        """For members ``codes`` (ascending: the order they are fed in): whether each raises its register
        above every member before it. The members in (register, code) order (a stable 16-bit radix sort of
        their registers), then a running maximum of their keys, each register's above every lower one's."""
        if not len(codes):
            return np.zeros(0, dtype=np.bool_)
        order = np.argsort(self.slot.take(codes), kind="stable")
        key = self.key.take(codes).take(order)
        top = np.maximum.accumulate(key)
        record = np.empty(len(key), dtype=np.bool_)
        record[0] = True
        np.greater(key[1:], top[:-1], out=record[1:])
        out = np.empty(len(key), dtype=np.bool_)
        out[order] = record
        return out


def _sketch_codes(codes: np.ndarray, ids: np.ndarray, registers: Callable[[], _Registers]) -> Any:
    """``_sketch(ids[codes])``, the same sketch byte for byte, feeding past the first ``_FULL_HEAD`` members
    only those that change it (``_Registers``); ``registers`` is called only when a minute is that big."""
    sketch = new_hll()
    head = codes[:_FULL_HEAD]
    deque(map(sketch.update, ids.take(head).tolist()), maxlen=0)
    if len(codes) == len(head):
        return sketch
    rest = codes[len(head) :]
    if HLL_TYPE == ds.tgt_hll_type.HLL_8 and sketch.serialize_compact()[7] & 3 == 2:  # in register mode
        rest = rest[registers().changes(codes)[len(head) :]]
    deque(map(sketch.update, ids.take(rest).tolist()), maxlen=0)
    return sketch


def build_reach(legacy: pa.Table, stream: pa.Table, horizon_ms: int, store: ReachPort | None = None) -> Reach:
    """Both sides' reach per minute and hour: exact, HLL, and (with ``store``) the serving store's count.

    The minutes are computed side by side and segment by segment (``_legacy_groups``, ``_stream_groups``)
    and each is dropped once counted and sketched: an hour's exact count comes from a bitmap of its users.
    """
    hour = GRAINS["hour"]
    hour_parts: dict[Key, list[int]] = defaultdict(list)
    exact: dict[Key, int] = {}
    minute_sketches = {}
    coupons: dict[str, int] = {}
    sides: tuple[tuple[str, Callable[[], tuple[list[str], Iterator[Minute]]]], ...] = (
        ("legacy", lambda: _legacy_groups(legacy)),
        ("stream", lambda: _stream_groups(stream, horizon_ms)),
    )
    for side, prepare in sides:  # one side at a time: the stream's settled spans only once legacy's are gone
        names, groups = prepare()
        ids = np.array(names, dtype=object)
        found: list[_Registers] = []

        def registers(names: list[str] = names, found: list[_Registers] = found) -> _Registers:
            if not found:
                found.append(_Registers(names, coupons))
            return found[0]

        hour_users: dict[Key, np.ndarray] = {}
        for key, codes in groups:
            _, seg, grain, b = key
            hour_key = (side, seg, "hour", bucket_of(b, hour))
            seen = hour_users.get(hour_key)
            if seen is None:
                seen = hour_users[hour_key] = np.zeros(len(names), dtype=np.bool_)
            seen[codes] = True
            hour_parts[hour_key].append(b)
            exact[key] = len(codes)
            minute_sketches[key] = _sketch_codes(codes, ids, registers)
            if store is not None:
                store.add(side, seg, grain, b, ids.take(codes).tolist())
        for hour_key, seen in hour_users.items():
            exact[hour_key] = int(np.count_nonzero(seen))
    bounds = {"minute": hll_bound(False), "hour": hll_bound(True)}
    redis_counts: dict[Key, int] = {}
    if store is not None:
        for (side, seg, grain, b), parts in hour_parts.items():
            store.merge(side, seg, grain, b, parts, "minute")
        for key in exact:
            redis_counts[key] = store.count(*key)
    rows: list[ReachRow] = []
    for key in sorted(exact):
        side, seg, grain, b = key
        if grain == "minute":
            sketch = minute_sketches[key]
        else:
            sketch = merge_hll(minute_sketches[(side, seg, "minute", part)] for part in hour_parts[key])
        estimate = sketch.get_estimate()
        error = relative_error(estimate, exact[key])
        redis = redis_counts.get(key)
        rows.append(
            ReachRow(
                side,
                seg,
                grain,
                b,
                exact[key],
                estimate,
                error,
                error <= bounds[grain],
                redis,
                None if redis is None else relative_error(redis, exact[key]),
                hll_to_text(sketch),
            )
        )
    return Reach(tuple(rows), bounds["minute"], bounds["hour"])


def series(reach: Mapping[str, Any], grain: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``sketches.json``'s reach rows of one grain as ``{segment: {side: [rows by bucket]}}`` (charts)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in reach.get("series", []):
        if row.get("grain") == grain:
            out[row["segment"]][row["side"]].append(row)
    return {seg: dict(sides) for seg, sides in out.items()}


# ---- the chart (geometry only; the report and the dashboard draw it) ---------------------------------


@dataclass(frozen=True)
class ReachLine:
    side: str
    line: str  # polyline points of the HLL estimate
    band: str  # polygon points of the estimate +- its stated bound
    exact: tuple[tuple[float, float, str], ...]  # (x, y, tooltip) of each exact count


@dataclass(frozen=True)
class ReachChart:
    segment: str
    grain: str
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    lines: tuple[ReachLine, ...]
    y_ticks: tuple[tuple[float, str], ...]
    x_ticks: tuple[tuple[float, str], ...]
    bound: float
    max_error: float


def reach_charts(
    evidence: Mapping[str, Any] | None, grain: str = "minute", width: int = 880, height: int = 200
) -> list[ReachChart]:
    """One chart per segment of ``sketches.json``'s reach: both sides' HLL estimate, its bound band, exact dots."""
    if not evidence:
        return []
    summary = evidence.get("summary") or {}
    bound = float((summary.get("hll") or {}).get(f"{grain}_bound") or 0.0)
    left, top, right, bottom = 56, 10, 12, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    charts = []
    for segment, sides in sorted(series(evidence, grain).items()):
        rows = [row for side_rows in sides.values() for row in side_rows]
        times = sorted({row["bucket"] for row in rows})
        if not times:
            continue
        index = {t: i for i, t in enumerate(times)}
        peak = max(max(row["hll"] * (1 + bound), row["exact"]) for row in rows) or 1.0

        def x(t: str, _index: dict[str, int] = index, _n: int = len(times)) -> float:
            return left + plot_w * (_index[t] / max(_n - 1, 1))

        def y(value: float, _peak: float = peak) -> float:
            return top + plot_h * (1 - value / _peak)

        lines = []
        for side in ("legacy", "stream"):
            side_rows = sorted(sides.get(side, []), key=lambda row: row["bucket"])
            if not side_rows:
                continue
            line = " ".join(f"{x(r['bucket']):.1f},{y(r['hll']):.1f}" for r in side_rows)
            upper = [f"{x(r['bucket']):.1f},{y(r['hll'] * (1 + bound)):.1f}" for r in side_rows]
            lower = [f"{x(r['bucket']):.1f},{y(max(r['hll'] * (1 - bound), 0)):.1f}" for r in reversed(side_rows)]
            exact = tuple(
                (
                    x(r["bucket"]),
                    y(r["exact"]),
                    f"{side} {r['bucket'][11:16]}: exact {r['exact']:,}, HLL {r['hll']:,.0f} "
                    f"(error {100 * r['hll_error']:.2f}%, bound {100 * bound:.2f}%)"
                    + (f", Redis {r['redis']:,}" if r.get("redis") is not None else ""),
                )
                for r in side_rows
            )
            lines.append(ReachLine(side, line, " ".join(upper + lower), exact))
        y_ticks = tuple((y(v), f"{v:,.0f}") for v in (0, peak / 2, peak))
        every = max(1, math.ceil(len(times) / 6))
        x_ticks = tuple((x(t), t[11:16]) for t in times[::every])
        max_error = max(row["hll_error"] for row in rows)
        charts.append(
            ReachChart(
                segment,
                grain,
                width,
                height,
                left,
                top,
                plot_w,
                plot_h,
                tuple(lines),
                y_ticks,
                x_ticks,
                bound,
                max_error,
            )
        )
    return charts
