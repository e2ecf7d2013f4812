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
    """One side's non-empty sets: parallel arrays of user code, as-of index and mask."""

    side: str
    user: np.ndarray
    as_idx: np.ndarray
    mask: np.ndarray
    outside: int = 0
    """Lines dropped because their as-of is not in the schedule (only with ``drop_outside``)."""

    def __len__(self) -> int:
        return len(self.user)


def as_of_index(schedule: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The position of each time in the sorted ``schedule`` and whether it is one of its times."""
    idx = np.searchsorted(schedule, times)
    inside = idx < len(schedule)
    found = np.zeros(len(times), dtype=np.bool_)
    found[inside] = schedule[idx[inside]] == times[inside]
    return idx, found


def legacy_cells(
    schedule: np.ndarray,
    as_of: np.ndarray,
    user: np.ndarray,
    mask: np.ndarray,
    side: str = "legacy",
    drop_outside: bool = False,
) -> Cells:
    """Cells from SPEC §3 lines. Lines with an empty set add nothing.

    A line whose as-of is not in ``schedule`` raises ``AsOfOutsideSchedule`` (the
    output was made with another ``--every`` or over other events), or is counted
    in ``outside`` and dropped with ``drop_outside`` (a second run for the noise floor).
    """
    idx, found = as_of_index(schedule, as_of)
    if not found.all() and not drop_outside:
        raise AsOfOutsideSchedule(side, int(as_of[np.flatnonzero(~found)[0]]))
    keep = (mask != 0) & found
    outside = int(np.count_nonzero(~found))
    return Cells(side, user[keep].astype(np.int64), idx[keep].astype(np.int64), mask[keep], outside)


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
    """Settled timelines: for each user, sorted starts; the value holds on ``[start, until)``."""

    user: np.ndarray
    start: np.ndarray
    until: np.ndarray
    mask: np.ndarray


def settle(user: np.ndarray, effective_time: np.ndarray, revision: np.ndarray, mask: np.ndarray) -> Spans:
    """SPEC §4: per (user, effective time) the highest revision wins; each value lasts until the next.

    Ties on revision keep the row that comes first in the input (as ``Timeline``
    does). The last span of a user has ``until`` = int64 max.
    """
    n = len(user)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Spans(empty, empty, empty, mask[:0])
    user64 = user.astype(np.int64)
    rev = revision.astype(np.int64)
    lo = int(effective_time.min())
    width = int(effective_time.max()) - lo + 1
    if (int(user64.max()) + 1) * width < _PACK_LIMIT and (int(rev.max()) + 1) * n < _PACK_LIMIT:
        key = user64 * width + (effective_time - lo)
        order = np.argsort(key)
        sorted_key = key[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_key[1:] != sorted_key[:-1]]))
        # the winner of a group: highest revision, then the row that comes first in the input
        best = np.maximum.reduceat(rev[order] * n + (n - 1 - order), starts)
        winners = n - 1 - best % n
    else:
        order = np.lexsort((-np.arange(n), rev, effective_time, user64))
        u, e = user64[order], effective_time[order]
        last = np.ones(n, dtype=np.bool_)
        last[:-1] = (u[1:] != u[:-1]) | (e[1:] != e[:-1])
        winners = order[last]
    u, e, m = user64[winners], effective_time[winners], mask[winners]
    until = np.full(len(u), np.iinfo(np.int64).max, dtype=np.int64)
    same = u[1:] == u[:-1]
    until[:-1][same] = e[1:][same]
    return Spans(u, e, until, m)


def stream_cells(schedule: np.ndarray, spans: Spans, side: str = "stream") -> Cells:
    """Cells from settled timelines: each non-empty span covers the as-ofs in ``[start, until)``.

    Rows come out ordered by (user, as-of).
    """
    keep = spans.mask != 0
    lo = np.searchsorted(schedule, spans.start[keep], side="left")
    hi = np.searchsorted(schedule, spans.until[keep], side="left")
    counts = hi - lo
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(counts)), counts)
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    as_idx = lo[rows] + (np.arange(total, dtype=np.int64) - starts[rows])
    return Cells(side, spans.user[keep][rows], as_idx.astype(np.int64), spans.mask[keep][rows])


@dataclass(frozen=True)
class Alignment:
    """The pairs: for each, the as-of index, the user code and both masks (0 = empty set)."""

    schedule: np.ndarray
    as_idx: np.ndarray
    user: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @property
    def pairs(self) -> int:
        return len(self.as_idx)

    def mismatches(self) -> np.ndarray:
        """Positions of the pairs whose sets differ, ordered by (as-of, user code)."""
        where = np.flatnonzero(self.left != self.right)
        return where[np.lexsort((self.user[where], self.as_idx[where]))]

    def agreement(self) -> int:
        return int(np.count_nonzero(self.left == self.right))

    def over_time(self) -> tuple[np.ndarray, np.ndarray]:
        """Pairs and agreeing pairs per as-of (arrays as long as the schedule)."""
        n = len(self.schedule)
        pairs = np.bincount(self.as_idx, minlength=n)
        agree = np.bincount(self.as_idx[self.left == self.right], minlength=n)
        return pairs, agree

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

    def lookup(self, user: np.ndarray, as_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both masks at arbitrary (user, as-of) cells; 0 where neither side has a set."""
        n = len(self.schedule)
        keys = self.user.astype(np.int64) * n + self.as_idx
        order = np.argsort(keys)
        sorted_keys = keys[order]
        wanted = user.astype(np.int64) * n + as_idx
        pos = np.searchsorted(sorted_keys, wanted)
        clipped = np.minimum(pos, max(len(sorted_keys) - 1, 0))
        hit = (pos < len(sorted_keys)) & (sorted_keys[clipped] == wanted) if len(sorted_keys) else pos < 0
        left = np.zeros(len(wanted), dtype=self.left.dtype)
        right = np.zeros(len(wanted), dtype=self.right.dtype)
        left[hit] = self.left[order[clipped[hit]]]
        right[hit] = self.right[order[clipped[hit]]]
        return left, right


def align(
    schedule: np.ndarray,
    left: Cells,
    right: Cells,
    users: int,
    dtype: np.dtype[Any],
    dense_bytes: int = DENSE_BYTES,
) -> Alignment:
    """Pair the cells of two sides over ``users`` user codes and the as-ofs of ``schedule``.

    Dense scatter when users x as-ofs fits in ``dense_bytes`` per side, else sort and
    merge; both give the same pairs. Raises ``DuplicateCell`` when a side has two
    rows for one (user, as-of).
    """
    n = len(schedule)
    cells = users * n
    if cells * dtype.itemsize <= dense_bytes:
        return _align_dense(schedule, left, right, cells, dtype)
    return _align_sorted(schedule, left, right, dtype)


def _keys(cells: Cells, n: int) -> np.ndarray:
    return cells.user.astype(np.int64) * n + cells.as_idx


def _align_dense(schedule: np.ndarray, left: Cells, right: Cells, cells: int, dtype: np.dtype[Any]) -> Alignment:
    n = len(schedule)
    grids = []
    for side in (left, right):
        grid = np.zeros(cells, dtype=dtype)
        keys = _keys(side, n)
        grid[keys] = side.mask
        if np.count_nonzero(grid) != len(keys):
            _raise_duplicate(side, keys, n)
        grids.append(grid)
    union = np.flatnonzero(grids[0] | grids[1])
    return Alignment(schedule, union % n, union // n, grids[0][union], grids[1][union])


def _align_sorted(schedule: np.ndarray, left: Cells, right: Cells, dtype: np.dtype[Any]) -> Alignment:
    n = len(schedule)
    sides = []
    for side in (left, right):
        keys = _keys(side, n)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
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
    return Alignment(schedule, keys % n, keys // n, left_mask, right_mask)


def _raise_duplicate(side: Cells, keys: np.ndarray, n: int) -> None:
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    key = int(repeated[0]) if len(repeated) else int(ordered[0])
    raise DuplicateCell(side.side, key // n, key % n)
