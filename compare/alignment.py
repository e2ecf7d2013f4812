"""Alignment (SPEC §5): both sides' segment sets at each legacy as-of, paired by user.

A side is reduced to its **cells**: one row per (user, as-of) where its set is
non-empty. Legacy cells are its lines; stream cells come from each user's settled
timeline (per effective time the highest revision wins; the value at ``t`` is the
winner with the greatest effective time ``<= t``, exactly ``segments.outputs.Timeline``)
sampled at the as-of times. The **pairs** are the union of both sides' cells; a
pair agrees when the masks are equal.

Everything here is numpy over integer codes (``compare.frames``): no Python object
per pair. When users x as-ofs is small enough the cells are scattered into dense
arrays (no sort at all); otherwise they are sorted and merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from compare.keys import SortedRows
from segments.errors import InputError

DENSE_BYTES = 256 << 20
"""Largest dense cell array (per side) before alignment switches to sort-and-merge."""

_PACK_LIMIT = 1 << 62


class DuplicateCell(InputError):
    """A side has more than one line for one user at one as-of."""

    def __init__(self, side: str, user: int, as_idx: int) -> None:
        super().__init__(f"the {side} output has more than one line for one user at one as-of")
        self.side = side
        self.user = user
        self.as_idx = as_idx


@dataclass(frozen=True)
class Cells:
    """One side's non-empty sets as cells: ``key = user code * n + as-of index`` (``n`` as-ofs), and masks."""

    side: str
    key: np.ndarray
    mask: np.ndarray
    outside: int = 0
    """Lines dropped because their as-of is not in the schedule (only with ``drop_outside``)."""

    def __len__(self) -> int:
        return len(self.key)


def first_at_or_after(schedule: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each time, the index of the first as-of ``>= time`` (``len(schedule)`` when none).

    ``np.searchsorted(schedule, times)``; for an evenly spaced schedule (SPEC §3's
    always is) the same by arithmetic, which is several times faster on millions of rows.
    """
    n = len(schedule)
    if n >= 2:
        first, step = int(schedule[0]), int(schedule[1] - schedule[0])
        if step > 0 and bool(np.all(np.diff(schedule) == step)):
            # ceil((t - first) / step), clipped to [0, n]; times past the last as-of are capped first
            idx = np.minimum(times, int(schedule[-1]) + 1)
            idx -= first - (step - 1)
            idx //= step
            np.maximum(idx, 0, out=idx)
            np.minimum(idx, n, out=idx)
            return idx
    return np.searchsorted(schedule, times, side="left")


def _cell_type(users: int, as_ofs: int) -> type[np.signedinteger[Any]]:
    """int32 cell keys when users x as-ofs fits (half the memory), else int64."""
    return np.int32 if (users + 1) * (as_ofs + 1) < 2**31 else np.int64


def as_of_index(schedule: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The position of each time in the sorted ``schedule`` and whether it is one of its times."""
    idx = first_at_or_after(schedule, times)
    if len(schedule) == 0:
        return idx, np.zeros(len(times), dtype=np.bool_)
    at = np.minimum(idx, len(schedule) - 1)
    schedule.take(at, out=at)
    return idx, at == times


def legacy_cells(
    schedule: np.ndarray,
    as_of: np.ndarray | tuple[np.ndarray, np.ndarray],
    user: np.ndarray,
    mask: np.ndarray,
    side: str = "legacy",
    drop_outside: bool = False,
) -> Cells:
    """Cells from SPEC §3 lines. Lines with an empty set add nothing.

    ``as_of``: each line's as-of, or (each line's code, the distinct as-ofs) when
    the column is dictionary-encoded (the schedule is then searched once per distinct as-of).
    A line whose as-of is not in ``schedule`` raises ``AsOfOutsideSchedule`` (the
    output was made with another ``--every`` or over other events), or is counted
    in ``outside`` and dropped with ``drop_outside`` (a second run for the noise floor).
    """
    if isinstance(as_of, tuple):
        codes, values = as_of
        at, hit = as_of_index(schedule, values)
        idx, found = at.astype(np.int32 if len(schedule) < 2**31 else np.int64).take(codes), hit.take(codes)
    else:
        idx, found = as_of_index(schedule, as_of)
    all_found = bool(found.all())
    if not all_found and not drop_outside:
        first = int(np.flatnonzero(~found)[0])
        raise AsOfOutsideSchedule(side, int(values[codes[first]] if isinstance(as_of, tuple) else as_of[first]))
    key = user.astype(_cell_type(int(user.max(initial=0)) + 1, len(schedule)))
    key *= len(schedule)
    np.add(key, idx, out=key, casting="unsafe")  # idx < len(schedule): the sum fits the key type
    del idx
    keep = found & (mask != 0)
    if bool(keep.all()):
        return Cells(side, key, mask)
    return Cells(side, key[keep], mask[keep], int(np.count_nonzero(~found)))


class AsOfOutsideSchedule(InputError):
    """An output line at a time that is not one of the comparison's as-of times."""

    def __init__(self, side: str, as_of: int) -> None:
        from segments.timeutil import format_ms

        super().__init__(
            f"the {side} output has a line at as-of {format_ms(as_of)}, which is not one of the as-of times "
            "(was it made with another --every, or over other events?)"
        )
        self.side = side
        self.as_of = as_of


@dataclass(frozen=True)
class Spans:
    """Settled timelines: per user, sorted starts; each value holds until the user's next start."""

    user: np.ndarray
    start: np.ndarray
    mask: np.ndarray

    def until(self) -> np.ndarray:
        """Where each span ends: the next start of the same user, else int64 max."""
        until = np.full(len(self.user), np.iinfo(np.int64).max, dtype=np.int64)
        same = self.user[1:] == self.user[:-1]
        until[:-1][same] = self.start[1:][same]
        return until


def settle(rows: SortedRows, revision: np.ndarray | tuple[np.ndarray, np.ndarray], mask: np.ndarray) -> Spans:
    """SPEC §4: per (user, effective time) the highest revision wins; each value lasts until the next.

    ``rows`` are the transitions sorted by (user, effective time); ``revision`` (or
    (each row's code, the distinct revisions) of a dictionary column) and ``mask``
    are in input order. Ties on revision keep the row that comes first in the input
    (as ``Timeline`` does).
    """
    n = len(rows)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Spans(empty, empty, mask[:0])
    starts = rows.group_starts()
    if isinstance(revision, tuple):
        codes, values = revision
        rev = values.astype(np.int64).take(codes.take(rows.order))
    else:
        rev = revision[rows.order].astype(np.int64, copy=False)
    if (int(rev.max()) + 1) * n < _PACK_LIMIT:
        # one number per row that orders by revision, then by earlier input position
        rev *= n
        rev += n - 1
        rev -= rows.order
        best = np.maximum.reduceat(rev, starts)
        del rev
        best %= n
        winners = np.subtract(n - 1, best, out=best)
    else:
        ends = np.append(starts[1:], n)
        firsts = [a + int(np.lexsort((rows.order[a:b], -rev[a:b]))[0]) for a, b in zip(starts, ends, strict=True)]
        winners = rows.order[np.array(firsts, dtype=np.int64)]
    masks = mask[winners]
    del winners
    return Spans(*rows.users_times(starts), masks)


def stream_cells(schedule: np.ndarray, spans: Spans, side: str = "stream") -> Cells:
    """Cells from settled timelines: each non-empty span covers the as-ofs in ``[start, until)``.

    Rows come out ordered by (user, as-of).
    """
    keep = spans.mask != 0
    lo = first_at_or_after(schedule, spans.start[keep])
    hi = first_at_or_after(schedule, spans.until()[keep])
    counts = hi - lo
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(counts)), counts)
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    as_idx = lo[rows] + (np.arange(total, dtype=np.int64) - starts[rows])
    return Cells(side, spans.user[keep][rows] * len(schedule) + as_idx, spans.mask[keep][rows])


@dataclass(frozen=True)
class Alignment:
    """Both sides' masks (0 = empty set) over (user, as-of) cells; a **pair** is a cell where either is non-empty.

    Dense (``keys`` is None): position ``k`` is the cell of user ``k // n`` at as-of
    ``k % n`` (``n`` as-ofs), for every user. Sparse: ``keys[i]`` is the cell at
    position ``i`` and the positions are exactly the pairs.
    """

    schedule: np.ndarray
    left: np.ndarray
    right: np.ndarray
    keys: np.ndarray | None = None

    def _cell(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(user code, as-of index) of positions."""
        n = len(self.schedule)
        keys = positions if self.keys is None else self.keys[positions]
        return keys // n, keys % n

    @property
    def pairs(self) -> int:
        return int(np.count_nonzero(self.left | self.right))

    def agreement(self) -> int:
        return self.pairs - int(np.count_nonzero(self.left != self.right))

    def mismatches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user code, as-of index, left mask, right mask) of the differing pairs, ordered by (as-of, user)."""
        where = np.flatnonzero(self.left != self.right)
        user, as_idx = self._cell(where)
        order = np.lexsort((user, as_idx))
        where = where[order]
        return user[order], as_idx[order], self.left[where], self.right[where]

    def all_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user code, as-of index, left mask, right mask) of every pair, in no particular order."""
        where = np.flatnonzero(self.left | self.right)
        user, as_idx = self._cell(where)
        return user, as_idx, self.left[where], self.right[where]

    def over_time(self) -> tuple[np.ndarray, np.ndarray]:
        """Pairs and agreeing pairs per as-of (arrays as long as the schedule)."""
        n = len(self.schedule)
        paired = (self.left | self.right) != 0
        agreeing = paired & (self.left == self.right)
        if self.keys is None:
            return paired.reshape(-1, n).sum(axis=0), agreeing.reshape(-1, n).sum(axis=0)
        as_idx = self.keys % n
        return np.bincount(as_idx[paired], minlength=n), np.bincount(as_idx[agreeing], minlength=n)

    def per_bit(self, bits: int) -> list[tuple[int, int, int]]:
        """(both, left only, right only) counts for each of the first ``bits`` bits."""
        out = []
        for i in range(bits):
            b = self.left.dtype.type(1 << i)
            lb = (self.left & b) != 0
            rb = (self.right & b) != 0
            both = int(np.count_nonzero(lb & rb))
            out.append((both, int(np.count_nonzero(lb)) - both, int(np.count_nonzero(rb)) - both))
        return out

    def per_bit_over_time(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """How many pairs have each of the first ``bits`` bits set, per as-of: (left, right), each ``bits`` x as-ofs."""
        n = len(self.schedule)
        counts = (np.zeros((bits, n), dtype=np.int64), np.zeros((bits, n), dtype=np.int64))
        as_idx = (np.arange(len(self.left)) if self.keys is None else self.keys) % n
        for i in range(bits):
            b = self.left.dtype.type(1 << i)
            for side, masks in enumerate((self.left, self.right)):
                counts[side][i] = np.bincount(as_idx[(masks & b) != 0], minlength=n)
        return counts

    def lookup(self, user: np.ndarray, as_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both masks at arbitrary (user, as-of) cells; 0 where neither side has a set."""
        n = len(self.schedule)
        wanted = user.astype(np.int64) * n + as_idx
        if self.keys is None:
            return self.left[wanted], self.right[wanted]
        order = np.argsort(self.keys)
        sorted_keys = self.keys[order]
        pos = np.searchsorted(sorted_keys, wanted)
        clipped = np.minimum(pos, max(len(sorted_keys) - 1, 0))
        hit = (pos < len(sorted_keys)) & (sorted_keys[clipped] == wanted) if len(sorted_keys) else pos < 0
        left = np.zeros(len(wanted), dtype=self.left.dtype)
        right = np.zeros(len(wanted), dtype=self.right.dtype)
        left[hit] = self.left[order[clipped[hit]]]
        right[hit] = self.right[order[clipped[hit]]]
        return left, right


Side = Cells | Spans
"""A side as alignment takes it: cells (legacy lines) or settled timelines (a stream)."""


def align(
    schedule: np.ndarray,
    left: Side,
    right: Side,
    users: int,
    dtype: np.dtype[Any],
    dense_bytes: int = DENSE_BYTES,
) -> Alignment:
    """Pair two sides over ``users`` user codes and the as-ofs of ``schedule``.

    Dense grids when users x as-ofs fits in ``dense_bytes`` per side (cells are
    scattered, timelines filled span by span, no sort at all), else sort and
    merge; both give the same pairs. Raises ``DuplicateCell`` when a side has two
    rows for one (user, as-of).
    """
    n = len(schedule)
    cells = users * n
    if cells * dtype.itemsize <= dense_bytes:
        grids = [_grid(schedule, side, cells, dtype) for side in (left, right)]
        return Alignment(schedule, grids[0], grids[1])
    return _align_sorted(schedule, _as_cells(schedule, left), _as_cells(schedule, right), dtype)


def _as_cells(schedule: np.ndarray, side: Side) -> Cells:
    return side if isinstance(side, Cells) else stream_cells(schedule, side)


def _grid(schedule: np.ndarray, side: Side, cells: int, dtype: np.dtype[Any]) -> np.ndarray:
    n = len(schedule)
    if isinstance(side, Cells):
        grid = np.zeros(cells, dtype=dtype)
        grid[side.key] = side.mask
        if np.count_nonzero(grid) != len(side.key):
            _raise_duplicate(side, side.key, n)
        return grid
    # a timeline: mark each span's first as-of with an increasing id (2i + 1) and the as-of where it ends
    # with the next id (2i + 2, an empty set); a running maximum then carries each id over its span
    user, start, masks = side.user, side.start, side.mask
    hi = first_at_or_after(schedule, side.until())
    keep = masks != 0
    if not keep.all():
        user, start, masks, hi = user[keep], start[keep], masks[keep], hi[keep]
    lo = first_at_or_after(schedule, start)
    some = hi > lo
    if not some.all():
        user, lo, hi, masks = user[some], lo[some], hi[some], masks[some]
    base = user * n
    lo += base
    hi += base
    del base, user, start
    count = len(masks)
    marker_type = np.int32 if 2 * count + 2 < 2**31 else np.int64
    markers = np.zeros(cells + 1, dtype=marker_type)
    markers[hi] = np.arange(2, 2 * count + 2, 2, dtype=marker_type)
    markers[lo] = np.arange(1, 2 * count + 1, 2, dtype=marker_type)
    del lo, hi
    np.maximum.accumulate(markers, out=markers)
    table = np.zeros(2 * len(masks) + 2, dtype=dtype)
    table[1::2][: len(masks)] = masks
    return table[markers[:cells]]


def _align_sorted(schedule: np.ndarray, left: Cells, right: Cells, dtype: np.dtype[Any]) -> Alignment:
    n = len(schedule)
    sides = []
    for side in (left, right):
        order = np.argsort(side.key, kind="stable")
        keys = side.key[order]
        if len(keys) > 1 and bool(np.any(keys[1:] == keys[:-1])):
            _raise_duplicate(side, keys, n)
        sides.append((keys, side.mask[order].astype(dtype)))
    (lk, lm), (rk, rm) = sides
    pos = np.searchsorted(lk, rk)
    clipped = np.minimum(pos, max(len(lk) - 1, 0))
    hit = (pos < len(lk)) & (lk[clipped] == rk) if len(lk) else np.zeros(len(rk), dtype=np.bool_)
    matched = np.zeros(len(lk), dtype=np.bool_)
    matched[clipped[hit]] = True
    left_of_right = np.zeros(len(rk), dtype=dtype)
    left_of_right[hit] = lm[clipped[hit]]
    only_left = ~matched
    keys = np.concatenate([rk, lk[only_left]])
    left_mask = np.concatenate([left_of_right, lm[only_left]])
    right_mask = np.concatenate([rm, np.zeros(int(only_left.sum()), dtype=dtype)])
    return Alignment(schedule, left_mask, right_mask, keys)


def _raise_duplicate(side: Cells, keys: np.ndarray, n: int) -> None:
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    key = int(repeated[0]) if len(repeated) else int(ordered[0])
    raise DuplicateCell(side.side, key // n, key % n)
