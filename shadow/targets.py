"""The real write targets of dual-write: the SQL events table and a Redis Stream."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from segments.events import Event
from segments.sqlstore import SqlStore
from streaming.live import EVENTS_STREAM, FIELD


class SqlEventsPrimary:
    """Legacy's input: events inserted into the SQL events table (first arrival of an id wins)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def write(self, events: Sequence[Event]) -> int:
        return self.store.insert_events(events)


class RedisStreamShadow:
    """The stream's input: one ``XADD`` per event (pipelined), the raw JSON line in field ``e``.

    No client-side retry: a failure is the dual-writer's signal to journal.
    """

    def __init__(self, url: str, stream_key: str = EVENTS_STREAM, timeout_s: float = 1.0) -> None:
        self.url = url
        self.stream_key = stream_key
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)

    def write(self, lines: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self.stream_key, {FIELD: line})
        pipe.execute()

    def healthy(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def length(self) -> int:
        return int(self.client.xlen(self.stream_key))

    def reset(self) -> None:
        """Start an empty log (a new shadow run); the consumer group goes with it."""
        self.client.delete(self.stream_key)

    def close(self) -> None:
        self.client.close()
