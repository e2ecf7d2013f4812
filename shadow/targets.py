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
    """The stream's input: one ``XADD`` per event (pipelined) with the id dual-write gave it, line in field ``e``.

    No client-side retry: a failure is the dual-writer's signal to journal. An id
    the stream already holds (a write that got through before a timeout) is skipped.
    """

    def __init__(self, url: str, stream_key: str = EVENTS_STREAM, timeout_s: float = 1.0) -> None:
        self.url = url
        self.stream_key = stream_key
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)

    def write(self, entries: Sequence[tuple[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry_id, line in entries:
            pipe.xadd(self.stream_key, {FIELD: line}, id=entry_id)
        for result in pipe.execute(raise_on_error=False):
            if isinstance(result, redis.ResponseError) and "equal or smaller" in str(result):
                continue  # already in the log: it got through before an earlier timeout
            if isinstance(result, Exception):
                raise result

    def healthy(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def last_id(self) -> str | None:
        """The log's last id (``ms-seq``), or None for an empty or missing log."""
        if not self.client.exists(self.stream_key):
            return None
        last = self.client.xinfo_stream(self.stream_key)["last-generated-id"]
        text = last.decode() if isinstance(last, bytes) else str(last)
        return None if text == "0-0" else text

    def length(self) -> int:
        return int(self.client.xlen(self.stream_key))

    def reset(self) -> None:
        """Start an empty log (a new shadow run); the consumer group goes with it."""
        self.client.delete(self.stream_key)

    def close(self) -> None:
        self.client.close()
