"""The real write targets of dual-write: the SQL events table and a Redis Stream."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from segments.events import Event
from segments.sqlstore import SqlStore
from shadow.dualwrite import Batch, Key, LogLost
from streaming.config import BATCH_FIELD, EVENTS_STREAM, FIELD
from streaming.eventlog import position


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

# One call appends a whole batch as one entry per segment (ARGV[1] the batch's predecessor's sequence, then per
# segment: field, entry id, line count, lines joined by newlines). The ids' sequence counts lines, so the log
# already holds every line up to its last id's sequence: those lines are skipped (a write that got through
# before a timeout, or part of it), the rest of a segment becomes one entry. First, a log whose last id is
# before the batch's predecessor lost entries: nothing is appended, LOST returned. Any other error is
# returned (segments before it stay; the caller journals the batch and the replay skips them).
_APPEND = (
    _HELD
    + """
local key = KEYS[1]
local pos = tonumber(ARGV[1])
local last = held(key)
local have = tonumber(string.match(last, '%-(%d+)$'))
if pos > 0 and have < pos then
  return redis.error_reply('SEGSHADOW_LOST ' .. last)
end
local added = 0
for i = 2, #ARGV, 4 do
  local count = tonumber(ARGV[i + 2])
  local stop = pos + count
  if have < stop then
    local lines = ARGV[i + 3]
    local skip = have - pos
    if skip > 0 then
      local at = 1
      for _ = 1, skip do
        at = string.find(lines, '\\n', at, true) + 1
      end
      lines = string.sub(lines, at)
    else
      skip = 0
    end
    redis.call('XADD', key, ARGV[i + 1], ARGV[i], lines)
    added = added + count - skip
  end
  pos = stop
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
    """The stream's input: each batch ``XADD``-ed as **one** entry (``streaming.eventlog``): its lines joined by
    newlines in field ``b``, its id the position dual-write gave its last line.

    A batch travels as one command (a Lua script) with one reply, so neither the
    client nor the server does per-event work beyond copying bytes; a line holding a
    newline cannot share an entry and gets one of its own in field ``e``, in the same
    call. No client-side retry: a failure is the dual-writer's signal to journal.
    Lines the log already holds (a write that got through before a timeout, wholly or
    in part) are skipped, by position. A log whose last id's sequence is below the
    batch's ``after_seq`` lost entries: the write raises ``LogLost`` and appends
    nothing (checked in the same script).
    """

    def __init__(self, url: str, stream_key: str = EVENTS_STREAM, timeout_s: float = 1.0) -> None:
        self.url = url
        self.stream_key = stream_key
        self.client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        self._script = self.client.register_script(_APPEND)
        self._seal = self.client.register_script(_SEAL)
        self._last = self.client.register_script(_LAST)
        self._key = _bulk(stream_key.encode())

    def write(self, batch: Batch) -> None:
        if not len(batch):
            return
        args = [_bulk(b"%d" % batch.after_seq), *_segments(batch)]
        try:
            try:
                self._call(b"EVALSHA", self._script.sha.encode(), args)
            except redis.exceptions.NoScriptError:
                self._call(b"EVAL", _APPEND.encode(), args)  # loads it for the next EVALSHA
        except redis.ResponseError as exc:
            if _LOST in str(exc):
                raise LogLost(str(exc).split()[-1], f"{batch.after_ms}-{batch.after_seq}") from None
            raise

    def _call(self, command: bytes, script: bytes, args: list[bytes]) -> None:
        """One ``EVAL``/``EVALSHA`` of ``args`` (each already a RESP bulk string) on the log's key, packed by hand
        (redis-py would encode each argument in Python)."""
        head = b"*%d\r\n" % (4 + len(args)) + _bulk(command) + _bulk(script) + _bulk(b"1") + self._key
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join([head, *args])], check_health=False)  # one system call
            conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

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


def _segments(batch: Batch) -> list[bytes]:
    """The script's arguments for ``batch``, as RESP bulk strings: one segment (field ``b``) for the usual batch,
    and where a line holds a newline, that line alone (field ``e``) between the runs of the others."""
    joined = "\n".join(batch.lines).encode()
    end_ms, end_seq = batch.end
    if joined.count(b"\n") == len(batch) - 1:
        return _segment(BATCH_FIELD, end_ms, end_seq, len(batch), joined)
    out: list[bytes] = []
    ids = batch.ids()
    run: list[str] = []
    for index, line in enumerate(batch.lines):
        if "\n" in line:
            if run:
                out += _segment(BATCH_FIELD, *position(ids[index - 1]), len(run), "\n".join(run).encode())
                run = []
            out += _segment(FIELD, *position(ids[index]), 1, line.encode())
        else:
            run.append(line)
    if run:
        out += _segment(BATCH_FIELD, end_ms, end_seq, len(run), "\n".join(run).encode())
    return out


def _segment(field: str, ms: int, seq: int, count: int, lines: bytes) -> list[bytes]:
    return [_bulk(field.encode()), _bulk(b"%d-%d" % (ms, seq)), _bulk(b"%d" % count), _bulk(lines)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
