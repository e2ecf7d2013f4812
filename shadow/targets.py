"""The real write targets of dual-write: the SQL events table and a Redis Stream."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from segments.events import Event
from segments.sqlstore import SqlStore
from shadow.dualwrite import Batch, Key, LogLost
from streaming.live import EVENTS_STREAM, FIELD


class SqlEventsPrimary:
    """Legacy's input: events inserted into the SQL events table (first arrival of an id wins)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def write(self, events: Sequence[Event]) -> int:
        return self.store.insert_events(events)

    def before(self, key: Key | None) -> list[Event]:
        """The stored events placed before ``key`` (all with None), in arrival order: what a re-seed re-sends."""
        found: list[Event] = []
        events = self.store.iter_events()
        try:
            for event in events:
                if key is not None and (event.arrival_time, event.seq) >= key:
                    break
                found.append(event)
        finally:
            close = getattr(events, "close", None)  # a generator: release its connection now
            if close is not None:
                close()
        return found


# The sequence part of the log's last id ("0-0" when there is no log), in a script.
_HELD = """
local function held(key)
  if redis.call('EXISTS', key) == 0 then return '0-0' end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return '0-0'
end
"""

# One call appends a whole batch: ids computed here exactly as ``Batch.ids`` does (running max of the
# arrivals, sequence counting up), an id the log already holds skipped, any other error returned
# (entries before it stay; the caller journals the batch and the replay skips them). First, a log
# whose last id is before the batch's predecessor lost entries: nothing is appended, LOST returned.
_APPEND = (
    _HELD
    + """
local key, field = KEYS[1], ARGV[1]
local ms, seq = tonumber(ARGV[2]), tonumber(ARGV[3])
local arrivals, lines = ARGV[4], ARGV[5]
local pos, added = 1, 0
if seq > 0 then
  local last = held(key)
  if tonumber(string.match(last, '%-(%d+)$')) < seq then
    return redis.error_reply('SEGSHADOW_LOST ' .. last)
  end
end
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
)


# The end of a re-seed: the log's last id becomes ARGV[1] (a log with no entry is made, empty, with it).
_SEAL = """
local key, id = KEYS[1], ARGV[1]
if redis.call('EXISTS', key) == 0 then
  redis.call('XADD', key, id, ARGV[2], '')
  redis.call('XDEL', key, id)
else
  redis.call('XSETID', key, id)
end
return 1
"""

# The log's last id.
_LAST = (
    _HELD
    + """
return held(KEYS[1])
"""
)

_LOST = "SEGSHADOW_LOST"


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class RedisStreamShadow:
    """The stream's input: each entry ``XADD``-ed with the id dual-write gave it, line in field ``e``.

    A batch travels as **one** command (a Lua script: the arrival times packed, the
    lines joined by newlines) with one reply, so the client does no per-event work;
    a batch whose lines hold a newline falls back to one pipelined ``XADD`` per
    entry. No client-side retry: a failure is the dual-writer's signal to journal.
    An id the stream already holds (a write that got through before a timeout) is skipped.
    A log whose last id's sequence is below the batch's ``after_seq`` lost entries:
    the write raises ``LogLost`` and appends nothing (checked in the same script).
    """

    def __init__(self, url: str, stream_key: str = EVENTS_STREAM, timeout_s: float = 1.0) -> None:
        self.url = url
        self.stream_key = stream_key
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self._script = self.client.register_script(_APPEND)
        self._seal = self.client.register_script(_SEAL)
        self._last = self.client.register_script(_LAST)
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
            try:
                self._call(b"EVALSHA", self._script.sha.encode(), tail)
            except redis.exceptions.NoScriptError:
                self._call(b"EVAL", _APPEND.encode(), tail)  # loads it for the next EVALSHA
        except redis.ResponseError as exc:
            if _LOST in str(exc):
                raise LogLost(str(exc).split()[-1], f"{batch.after_ms}-{batch.after_seq}") from None
            raise

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
        self.verify((batch.after_ms, batch.after_seq))
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

    def verify(self, end: tuple[int, int]) -> None:
        """``LogLost`` when the log's last id's sequence is below ``end``'s (it lost entries)."""
        held = _text(self._last(keys=[self.stream_key]))
        if int(held.split("-")[1]) < end[1]:
            raise LogLost(held, f"{end[0]}-{end[1]}")

    def reseed(self, batches: Sequence[Batch], end: tuple[int, int]) -> None:
        """Start the log again: what is left of it is deleted (its ids could hide the new ones; its consumer
        group goes with it), ``batches`` are appended, then ``end`` becomes the log's last id."""
        if _text(self._last(keys=[self.stream_key])) != "0-0":
            self.client.delete(self.stream_key)
        for batch in batches:
            self.write(batch)
        if end != (0, 0):
            self._seal(keys=[self.stream_key], args=[f"{end[0]}-{end[1]}", FIELD])

    def length(self) -> int:
        return int(self.client.xlen(self.stream_key))

    def reset(self) -> None:
        """Start an empty log (a new shadow run); the consumer group goes with it."""
        self.client.delete(self.stream_key)

    def close(self) -> None:
        self.client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
