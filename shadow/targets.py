"""The real write targets of dual-write: the SQL events table and a Redis Stream."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from segments.events import Event
from segments.sqlstore import SqlStore
from shadow.dualwrite import Batch
from streaming.live import EVENTS_STREAM, FIELD


class SqlEventsPrimary:
    """Legacy's input: events inserted into the SQL events table (first arrival of an id wins)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def write(self, events: Sequence[Event]) -> int:
        return self.store.insert_events(events)


# One call appends a whole batch: ids computed here exactly as ``Batch.ids`` does (running max of the
# arrivals, sequence counting up), an id the log already holds skipped, any other error returned
# (entries before it stay; the caller journals the batch and the replay skips them).
_APPEND = """
local key, field = KEYS[1], ARGV[1]
local ms, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
local arrivals, lines = ARGV[4], ARGV[5]
local pos, added = 1, 0
for i = 0, #arrivals / 8 - 1 do
  local arrival = struct.unpack('<d', arrivals, i * 8 + 1)
  if arrival > ms then ms = arrival end
  seq = seq + 1
  local stop = string.find(lines, '\\n', pos, true)
  local line
  if stop then
    line = string.sub(lines, pos, stop - 1)
    pos = stop + 1
  else
    line = string.sub(lines, pos)
  end
  local reply = redis.pcall('XADD', key, string.format('%.0f-%.0f', ms, seq), field, line)
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return redis.error_reply(reply.err)
    end
  else
    added = added + 1
  end
end
return added
"""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class RedisStreamShadow:
    """The stream's input: each entry ``XADD``-ed with the id dual-write gave it, line in field ``e``.

    A batch travels as **one** command (a Lua script: the arrival times packed, the
    lines joined by newlines) with one reply, so the client does no per-event work;
    a batch whose lines hold a newline falls back to one pipelined ``XADD`` per
    entry. No client-side retry: a failure is the dual-writer's signal to journal.
    An id the stream already holds (a write that got through before a timeout) is skipped.
    """

    def __init__(self, url: str, stream_key: str = EVENTS_STREAM, timeout_s: float = 1.0) -> None:
        self.url = url
        self.stream_key = stream_key
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self._script = self.client.register_script(_APPEND)
        self._head = _bulk(stream_key.encode()) + _bulk(FIELD.encode())

    def write(self, batch: Batch) -> None:
        if not len(batch):
            return
        lines = "\n".join(batch.lines).encode()
        if lines.count(b"\n") != len(batch) - 1:
            self._write_each(batch)
            return
        arrivals = batch.packed_arrivals()
        tail = [
            self._head,
            _bulk(b"%d" % batch.after_ms),
            _bulk(b"%d" % batch.after_seq),
            b"$%d\r\n" % len(arrivals), arrivals, b"\r\n",
            b"$%d\r\n" % len(lines), lines, b"\r\n",
        ]  # fmt: skip
        try:
            self._call(b"EVALSHA", self._script.sha.encode(), tail)
        except redis.exceptions.NoScriptError:
            self._call(b"EVAL", _APPEND.encode(), tail)  # loads it for the next EVALSHA

    def _call(self, command: bytes, script: bytes, tail: list[bytes]) -> None:
        """One ``EVAL``/``EVALSHA`` packed by hand (redis-py would encode each argument in Python)."""
        payload = b"".join([b"*9\r\n", _bulk(command), _bulk(script), _bulk(b"1"), *tail])
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload], check_health=False)
            conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _write_each(self, batch: Batch) -> None:
        pipe = self.client.pipeline(transaction=False)
        for entry_id, line in batch.entries():
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
