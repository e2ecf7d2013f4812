"""(user, time) pairs as one sortable int64, and rows sorted by them.

Three joins of the comparator are on (user, time): a mismatch's window in the
event log, a transition's causing event, and a transition's place in its user's
timeline. Each side is sorted once by the packed key ``user * width + time``;
lookups are then ``searchsorted`` calls. When users x time range would not fit in
63 bits, the index falls back to a lexicographic sort and per-row lookups (same
results, slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_PACK_LIMIT = 1 << 62


@dataclass(frozen=True)
class KeySpace:
    """Times in ``(floor, top]`` packed with user codes below ``users``; other times are clipped."""

    floor: int
    top: int

    @property
    def width(self) -> int:
        return self.top - self.floor + 1

    @classmethod
    def of(cls, users: int, times: Sequence[np.ndarray]) -> KeySpace | None:
        """The space that holds every given time exactly; None when it does not fit in an int64."""
        present = [t for t in times if len(t)]
        if not present:
            return cls(0, 1)
        floor = min(int(t.min()) for t in present) - 1
        top = max(int(t.max()) for t in present)
        space = cls(floor, top)
        return space if max(users, 1) * space.width < _PACK_LIMIT else None

    def pack(self, user: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Keys that sort like (user, time); a time outside the space sorts like its nearest edge."""
        keys = user.astype(np.int64)
        keys *= self.width
        if len(time) and (int(time.min()) < self.floor or int(time.max()) > self.top):
            offset = np.clip(time, self.floor, self.top)
            offset -= self.floor
            keys += offset
        else:  # every time inside (the usual case: the space was made from them): no clipped copy
            keys += time
            keys -= self.floor
        return keys


def _narrow(order: np.ndarray) -> np.ndarray:
    """Row positions as int32 when they fit: half the memory for the indexes kept through a comparison."""
    return order.astype(np.int32) if len(order) < 2**31 else order


@dataclass(frozen=True)
class SortedRows:
    """Row positions ``order`` sorted by (user, time).

    Packed (``space`` given): the sorted ``keys``; users and times are decoded from
    them on demand. Otherwise the sorted ``users`` and ``times`` themselves.
    """

    order: np.ndarray
    keys: np.ndarray | None
    space: KeySpace | None
    sorted_users: np.ndarray | None = None
    sorted_times: np.ndarray | None = None

    @classmethod
    def of(cls, user: np.ndarray, time: np.ndarray, space: KeySpace | None) -> SortedRows:
        if space is not None:
            keys = space.pack(user, time)
            order = np.argsort(keys)
            keys = keys.take(order)  # the unsorted keys go before the narrowed order is made
            return cls(_narrow(order), keys, space)
        order = _narrow(np.lexsort((time, user)))
        return cls(order, None, None, user[order].astype(np.int64), time[order])

    def __len__(self) -> int:
        return len(self.order)

    def users(self, positions: np.ndarray | slice = slice(None)) -> np.ndarray:
        """User codes at sorted ``positions``."""
        if self.keys is not None and self.space is not None:
            return self.keys[positions] // self.space.width
        assert self.sorted_users is not None
        return self.sorted_users[positions]

    def times(self, positions: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Times at sorted ``positions`` (exact: every indexed time lies inside the key space)."""
        if self.keys is not None and self.space is not None:
            return self.keys[positions] % self.space.width + self.space.floor
        assert self.sorted_times is not None
        return self.sorted_times[positions]

    def users_times(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(users(positions), times(positions))``, unpacking each key once and in place."""
        if self.keys is None or self.space is None:
            return self.users(positions), self.times(positions)
        times = self.keys.take(positions)
        users = times // self.space.width
        times %= self.space.width
        times += self.space.floor
        return users, times

    def group_starts(self) -> np.ndarray:
        """Positions (in sorted order) where a new (user, time) begins."""
        n = len(self.order)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        change = np.empty(n, dtype=np.bool_)
        change[0] = True
        if self.keys is not None:
            np.not_equal(self.keys[1:], self.keys[:-1], out=change[1:])
        else:
            users, times = self.users(), self.times()
            change[1:] = (users[1:] != users[:-1]) | (times[1:] != times[:-1])
        return np.flatnonzero(change)

    def after(self, user: np.ndarray, time: np.ndarray) -> np.ndarray:
        """For each (user, time): the sorted position just past that user's rows at or before ``time``."""
        if self.keys is not None and self.space is not None:
            return np.searchsorted(self.keys, self.space.pack(user, time), side="right")
        users, times = self.users(), self.times()
        out = np.zeros(len(user), dtype=np.int64)
        for i, (u, t) in enumerate(zip(user.tolist(), time.tolist(), strict=True)):
            a = int(np.searchsorted(users, u, side="left"))
            b = int(np.searchsorted(users, u, side="right"))
            out[i] = a + int(np.searchsorted(times[a:b], t, side="right"))
        return out

    def find(self, user: np.ndarray, time: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """For each (user, time), the sorted position of its first row with exactly that time; -1 if none.

        ``keys``: the same pairs already packed in this index's space (spares packing them again).
        """
        n = len(self.order)
        m = len(keys) if keys is not None else len(user)
        if n == 0 or m == 0:
            return np.full(m, -1, dtype=np.int64)
        if self.keys is not None and self.space is not None:
            wanted = keys if keys is not None else self.space.pack(user, time)
            start = np.searchsorted(self.keys, wanted - 1, side="right")
            hit = start < n
            np.minimum(start, n - 1, out=start)
            hit &= self.keys[start] == wanted
        else:
            start = self.after(user, time - 1)
            hit = start < n
            np.minimum(start, n - 1, out=start)
            hit &= (self.users(start) == user) & (self.times(start) == time)
        start[~hit] = -1
        return start
