"""Segment reach in the serving store: Redis HyperLogLogs under each side's namespace.

Keys: ``{prefix}:{side}:reach:{segment}:{grain}:{bucket start ms}`` (``grain`` is
``minute`` or ``hour``; segment names match ``^[a-z][a-z0-9_]*$``, so no key
reaches into another namespace). Members are the users' encoded ids
(``redisstore.encode_user_id``). ``PFADD`` adds a bucket's users, ``PFMERGE``
builds an hour from its minutes (the sketches merge, the users are not
re-read), ``PFCOUNT`` reads the estimate (Redis: standard error 0.81%).
Keys expire after ``ttl_s`` (a day by default) so the store does not grow
without bound. Connection errors become ``StoreUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

from segments.errors import StoreUnavailable
from segments.redisstore import PREFIX, encode_user_id

CHUNK = 2000  # members per PFADD


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
