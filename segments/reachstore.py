"""Segment reach in the serving store: Redis HyperLogLogs under each side's namespace.

Keys: ``{prefix}:{side}:reach:{segment}:{grain}:{bucket start ms}`` (``grain`` is
``minute`` or ``hour``; segment names match ``^[a-z][a-z0-9_]*$``, so no key
reaches into another namespace). Members are the users' encoded ids
(``redisstore.encode_user_id``). ``PFADD`` adds a bucket's users, ``PFMERGE``
builds an hour from its minutes (the sketches merge, the users are not
re-read), ``PFCOUNT`` reads the estimate (Redis: standard error 0.81%).
Keys expire after ``ttl_s`` (a day by default) so the store does not grow
without bound. Connection errors become ``StoreUnavailable``.

**In the write path.** Reach is kept as a side publishes, not only derived at
comparison time: a user is in a segment's reach for a bucket when the side had
the user in the segment at some instant of it, which is (a) every user who held
it at the bucket's start, or (b) every user published into (or confirmed in) it
during the bucket. ``record`` keeps (b): per published batch, one pipelined
round trip of ``PFADD`` per (segment, minute) and (segment, hour) the batch
touches (``streaming.sinks.RedisTransitionsSink`` for the stream;
``ReachingSink`` around a legacy assignment sink, whose as-ofs are complete
snapshots). ``carry`` keeps (a): the current members of each segment added to
the bucket that is starting (``homepage.bloom.BloomCache`` does it on each
rebuild, from the same scan of the serving store that builds the filters).
``series`` reads a segment's buckets back with ``PFCOUNT`` (one round trip) and
``merged`` any range with ``PFMERGE`` into a scratch key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import redis

from segments.errors import StoreUnavailable
from segments.redisstore import PREFIX, encode_user_id

CHUNK = 2000  # members per PFADD
CARRY_CHUNK = 20_000  # members per PFADD of a carry (large sets: fewer commands to pack and run)
MINUTE_MS = 60_000
HOUR_MS = 3_600_000


def reach_key(side: str, segment: str, grain: str, bucket_ms: int, prefix: str = PREFIX) -> str:
    return f"{prefix}:{side}:reach:{segment}:{grain}:{bucket_ms}"


class ReachStore:
    """``compare.reach.ReachPort`` over a redis-py client."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX, ttl_s: int = 86_400) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, side: str, segment: str, grain: str, bucket_ms: int) -> str:
        return reach_key(side, segment, grain, bucket_ms, self.prefix)

    def add(self, side: str, segment: str, grain: str, bucket_ms: int, users: Iterable[str]) -> None:
        key = self._key(side, segment, grain, bucket_ms)
        members = [encode_user_id(u) for u in users]
        try:
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(members), CHUNK):
                pipe.pfadd(key, *members[i : i + CHUNK])
            pipe.expire(key, self.ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None

    def merge(
        self, side: str, segment: str, grain: str, bucket_ms: int, sources: Iterable[int], source_grain: str
    ) -> None:
        keys = [self._key(side, segment, source_grain, b) for b in sources]
        target = self._key(side, segment, grain, bucket_ms)
        try:
            self.client.pfmerge(target, *keys)
            self.client.expire(target, self.ttl_s)
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None

    def count(self, side: str, segment: str, grain: str, bucket_ms: int) -> int:
        try:
            return int(self.client.pfcount(self._key(side, segment, grain, bucket_ms)))
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None

    # ---- the write path ----------------------------------------------------------------------------

    def record(self, side: str, entries: Iterable[tuple[str, Sequence[str], int]]) -> int:
        """``PFADD`` each (user, segments, instant) into its segments' minute and hour; one round trip.

        Returns how many (key, user) additions were sent (0 sends nothing).
        """
        buckets: dict[tuple[str, str, int], set[str]] = defaultdict(set)  # (segment, grain, start): members
        for user_id, segments, t in entries:
            if not segments:
                continue
            member = encode_user_id(user_id)
            minute, hour = t - t % MINUTE_MS, t - t % HOUR_MS
            for segment in segments:
                buckets[(segment, "minute", minute)].add(member)
                buckets[(segment, "hour", hour)].add(member)
        # a key's text once per bucket, not twice per entry: the same keys in the same order
        return self._pfadd_all({self._key(side, *bucket): members for bucket, members in buckets.items()})

    def carry(self, side: str, members: Mapping[str, Iterable[str]], at_ms: int) -> int:
        """Add the current ``members`` of each segment to the minute and the hour holding ``at_ms``.

        Each member is sent once, to the minute (``PFADD``, in the order given: a HyperLogLog does not
        care); the hour takes the minute by ``PFMERGE`` on the server, which is the same as adding the
        members to it (a merge keeps each register's maximum) without sending them twice.
        Returns how many members were sent.
        """
        minute, hour = at_ms - at_ms % MINUTE_MS, at_ms - at_ms % HOUR_MS
        sent = 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for segment, users in members.items():
                encoded = [encode_user_id(u) for u in users]
                if not encoded:
                    continue
                minute_key = self._key(side, segment, "minute", minute)
                hour_key = self._key(side, segment, "hour", hour)
                for i in range(0, len(encoded), CARRY_CHUNK):
                    pipe.pfadd(minute_key, *encoded[i : i + CARRY_CHUNK])
                pipe.pfmerge(hour_key, hour_key, minute_key)
                pipe.expire(minute_key, self.ttl_s)
                pipe.expire(hour_key, self.ttl_s)
                sent += len(encoded)
            if sent:
                pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None
        return sent

    def _pfadd_all(self, buckets: Mapping[str, set[str]]) -> int:
        if not buckets:
            return 0
        sent = 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, members in buckets.items():
                ordered = sorted(members)
                for i in range(0, len(ordered), CHUNK):
                    pipe.pfadd(key, *ordered[i : i + CHUNK])
                pipe.expire(key, self.ttl_s)
                sent += len(ordered)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None
        return sent

    # ---- reading -----------------------------------------------------------------------------------

    def series(self, side: str, segment: str, grain: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """(bucket start, ``PFCOUNT``) for every ``grain`` bucket from ``start_ms`` to ``end_ms`` (inclusive)."""
        step = MINUTE_MS if grain == "minute" else HOUR_MS
        first = start_ms - start_ms % step
        buckets = list(range(first, end_ms + 1, step))
        try:
            pipe = self.client.pipeline(transaction=False)
            for b in buckets:
                pipe.pfcount(self._key(side, segment, grain, b))
            counts = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None
        return [(b, int(c)) for b, c in zip(buckets, counts, strict=True)]

    def latest_bucket(self, side: str, grain: str = "minute") -> int | None:
        """The newest ``grain`` bucket any segment of ``side`` has reach in (a ``SCAN``; None when none)."""
        pattern = f"{self.prefix}:{side}:reach:*:{grain}:*"
        newest: int | None = None
        try:
            for key in self.client.scan_iter(match=pattern, count=1000):
                text = key.decode() if isinstance(key, bytes) else key
                bucket = int(text.rsplit(":", 1)[1])
                newest = bucket if newest is None else max(newest, bucket)
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None
        return newest

    def segments(self, side: str, grain: str = "minute") -> list[str]:
        """The segments ``side`` has any reach key for (a ``SCAN``)."""
        pattern = f"{self.prefix}:{side}:reach:*:{grain}:*"
        found: set[str] = set()
        try:
            for key in self.client.scan_iter(match=pattern, count=1000):
                text = key.decode() if isinstance(key, bytes) else key
                found.add(text.split(":reach:", 1)[1].split(":", 1)[0])
        except redis.RedisError as exc:
            raise StoreUnavailable("redis", "reach store", exc) from None
        return sorted(found)


class AssignmentSink(Protocol):
    """``legacy_batch.job.AssignmentSink`` (repeated here: segments does not import the legacy job)."""

    def write_assignments(self, as_of: int, rows: Sequence[tuple[str, frozenset[str]]]) -> object: ...


class ReachingSink:
    """A legacy assignment sink that also records each as-of's members in the ``legacy`` reach.

    An as-of is a complete snapshot, so its rows are exactly the holders at that
    instant: ``record`` of them is the legacy side's reach (no carry needed).
    The reach is written after the inner sink has taken the snapshot.
    """

    def __init__(self, inner: AssignmentSink, reach: ReachStore) -> None:
        self.inner = inner
        self.reach = reach

    def write_assignments(self, as_of: int, rows: Sequence[tuple[str, frozenset[str]]]) -> object:
        result = self.inner.write_assignments(as_of, rows)
        self.reach.record("legacy", ((user_id, tuple(segs), as_of) for user_id, segs in rows))
        return result
