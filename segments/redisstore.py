"""The serving store: each side's current segments per user in Redis, written idempotently.

Keys (``prefix`` defaults to ``segshadow``; ``side`` is ``legacy`` or ``stream``):

- ``{prefix}:{side}:u:{encoded user id}`` a hash ``segments`` (JSON list, sorted), ``time``
  (the legacy as-of or the stream's effective time, ms), ``revision``, ``written_at`` (ms);
- ``{prefix}:{side}:meta`` a hash ``last_write_ms`` (the writer's heartbeat) and ``last_time``
  (the greatest as-of or effective time written), so a reader can tell a stale side;
- ``{prefix}:legacy:nonempty`` the set of encoded user ids whose legacy set is not empty.

**User ids are percent-encoded** (``urllib.parse.quote(user_id, safe='')`` over UTF-8, lone
surrogates passed through): only ``A-Z a-z 0-9 _ . - ~`` stay as they are, every other
character (``:``, ``%``, spaces, quotes, ``*``, emoji) becomes ``%XX`` bytes. The encoding is
injective and its output has no ``:`` and no glob character, so no id can reach into another
namespace, collide with another id, or be matched by another id's SCAN pattern;
``user_key`` and ``parse_user_key`` are inverses.

**Writes are idempotent.** A Lua script replaces a user's value only when the incoming
one is newer: for the stream when ``(effective_time, revision)`` is greater than the
stored pair (so a retried bundle or an older revision delivered after a newer one
changes nothing); for the legacy side when the as-of is later, or equal with a
different set (a corrected re-run of the same as-of; ``revision`` then counts up).
Many keys go in one script call and many calls in one pipeline. Connection errors are
retried with bounded exponential backoff; because every write is idempotent a retried
pipeline is safe. When the server stays unreachable, ``StoreUnavailable`` is raised.

**A legacy snapshot is published at once.** An as-of's snapshot takes many script
calls (its users, then clearing the users who left), so readers must not see it half
written: some users already at the new as-of, others still at the old one, or a
user who left still in their segment when the new as-of is otherwise visible. Each
``write_legacy`` takes a new generation (``gen`` in the meta hash, counted up), stamps
every value it writes with it, and only when the whole snapshot is written sets
``published_gen`` in the meta hash, one command. A value overwritten while its own
generation is published is first kept as ``prev_*`` fields of the same hash. Readers
(``get``, ``get_many``, ``scan_side`` on the legacy side) resolve each user in one
script with the meta hash: the value if its generation is published, else the kept
one, else no value; so every reader sees one complete snapshot, the old one until
the flip and the new one after. A write that fails part-way leaves its values
unpublished, and the next write does not move them into ``prev_*``. Values written
before generations existed count as published.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from segments.errors import StoreUnavailable, UsageError
from segments.outputs import Transition
from segments.timeutil import Clock, wall_clock_ms

Side = Literal["legacy", "stream"]
SIDES: tuple[Side, ...] = ("legacy", "stream")
PREFIX = "segshadow"
BATCH_KEYS = 256  # keys per script call
CALLS_PER_ROUND_TRIP = 32  # script calls per pipeline execution
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)


def retry_policy(retries: int = 4, base_s: float = 0.05, cap_s: float = 1.0) -> Retry:
    """Bounded exponential backoff (``base_s`` doubling up to ``cap_s``, ``retries`` times) on
    connection errors and timeouts; the policy every segshadow Redis client uses."""
    return Retry(ExponentialBackoff(cap=cap_s, base=base_s), retries, supported_errors=_TRANSIENT)


def connect(
    url: str,
    *,
    timeout_s: float = 2.0,
    retries: int = 4,
    decode_responses: bool = True,
) -> redis.Redis:
    """A pinged redis-py client (hiredis parser when installed) for a real ``redis://`` URL.

    Connect and socket timeouts are ``timeout_s``; transient errors are retried with
    ``retry_policy(retries)``. Raises ``UsageError`` for ``"embedded"`` (resolve it with
    ``segments.embedded.redis_endpoint`` first) and ``StoreUnavailable`` when the URL is
    malformed or the server does not answer the ping.
    """
    if url == "embedded":
        raise UsageError("redis URL 'embedded' must be resolved with segments.embedded.redis_endpoint")
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=retry_policy(retries),
            decode_responses=decode_responses,
        )
    except ValueError as exc:
        raise StoreUnavailable("Redis", url, exc) from None
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        raise StoreUnavailable("Redis", url, exc) from None
    return client


# ---- keys ----------------------------------------------------------------------------------------


def _check_side(side: str) -> Side:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    return side


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")  # the characters quote() never changes


def encode_user_id(user_id: str) -> str:
    """The injective, key-safe spelling of a user id (percent-encoded UTF-8); see the module doc."""
    if _UNRESERVED.fullmatch(user_id):
        return user_id  # what quote() would return, without its cost (every key the stream writes)
    if not user_id:
        raise ValueError("empty user id")
    return quote(user_id, safe="", errors="surrogatepass")


def decode_user_id(encoded: str) -> str:
    """The inverse of ``encode_user_id``."""
    return unquote(encoded, errors="surrogatepass")


def user_key(side: str, user_id: str, prefix: str = PREFIX) -> str:
    """``{prefix}:{side}:u:{encoded user id}``: the key that holds the user's segments on ``side``."""
    return f"{prefix}:{_check_side(side)}:u:{encode_user_id(user_id)}"


def parse_user_key(key: str, prefix: str = PREFIX) -> tuple[Side, str]:
    """The (side, user id) that ``user_key`` made ``key`` from; ``ValueError`` for any other key."""
    head = f"{prefix}:"
    if not key.startswith(head):
        raise ValueError(f"not a {prefix} key: {key!r}")
    parts = key[len(head) :].split(":")
    if len(parts) != 3 or parts[0] not in SIDES or parts[1] != "u" or not parts[2]:
        raise ValueError(f"not a user key: {key!r}")
    return _check_side(parts[0]), decode_user_id(parts[2])


def meta_key(side: str, prefix: str = PREFIX) -> str:
    return f"{prefix}:{_check_side(side)}:meta"


def _nonempty_key(prefix: str) -> str:
    return f"{prefix}:legacy:nonempty"


def _segments_json(segments: Iterable[str]) -> str:
    return _segments_text(tuple(segments))


@functools.lru_cache(maxsize=4096)
def _segments_text(segments: tuple[str, ...]) -> str:
    """The stored spelling of a segment set; there are few distinct sets, so memoised (hot in the stream sink)."""
    return json.dumps(sorted(segments), separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _segments_bulk(segments: tuple[str, ...]) -> str:
    """``_segments_text`` as a bulk string of the Redis protocol (what the stream sink sends; ASCII)."""
    text = _segments_text(segments)
    return f"${len(text)}\r\n{text}\r\n"


def _greatest_each(transitions: Sequence[Transition]) -> list[Transition]:
    """The greatest ``(effective_time, revision)`` transition of each user, in the order users first appear."""
    best: dict[str, Transition] = {}
    for tr in transitions:
        held = best.get(tr.user_id)
        if held is None or (tr.effective_time, tr.revision) > (held.effective_time, held.revision):
            best[tr.user_id] = tr
    return list(best.values())


# ---- values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSegments:
    """A user's stored set on one side.

    ``time`` is the legacy as-of or the stream's effective time (ms) the set holds from;
    ``revision`` the stream's revision (legacy: 1, counting up when the same as-of is
    rewritten with a different set); ``written_at`` when the store wrote it (ms).
    An empty ``segments`` means the side knows the user has no segment since ``time``.
    """

    segments: tuple[str, ...]
    time: int
    revision: int
    written_at: int


@dataclass(frozen=True)
class SideMeta:
    """A side's heartbeat: ``last_write_ms`` when its writer last wrote (even a no-op replay),
    ``last_time`` the greatest as-of or effective time it has written."""

    last_write_ms: int
    last_time: int | None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stored(raw: Mapping[Any, Any]) -> StoredSegments | None:
    if not raw:
        return None
    raw = {_text(k): _text(v) for k, v in raw.items()}
    return StoredSegments(
        tuple(json.loads(raw["segments"])), int(raw["time"]), int(raw["revision"]), int(raw["written_at"])
    )


# KEYS: meta, nonempty index, user keys...; ARGV: as_of, written_at, clear flag, generation, then
# (segments, member) per key. Set mode replaces when the as-of is later, or equal with a different set;
# clear mode (users absent from the snapshot) empties only values older than the as-of. A replaced value
# of a published generation is kept as prev_* (module doc, 'A legacy snapshot is published at once').
_LEGACY_LUA = """
local t = tonumber(ARGV[1])
local clear = ARGV[3] == '1'
local pub = tonumber(redis.call('HGET', KEYS[1], 'published_gen')) or 0
local changed = 0
for i = 3, #KEYS do
  local j = 5 + (i - 3) * 2
  local segs = ARGV[j]
  local cur = redis.call('HMGET', KEYS[i], 'time', 'revision', 'segments', 'gen', 'written_at')
  local st = tonumber(cur[1])
  local rev = nil
  if st == nil then
    if not clear then rev = 1 end
  elseif t > st then
    rev = 1
  elseif t == st and not clear and segs ~= cur[3] then
    rev = tonumber(cur[2]) + 1
  end
  if rev ~= nil then
    if st ~= nil and (tonumber(cur[4]) or 0) <= pub then
      redis.call('HSET', KEYS[i], 'prev_segments', cur[3], 'prev_time', cur[1], 'prev_revision', cur[2],
        'prev_written_at', cur[5])
    end
    redis.call('HSET', KEYS[i], 'segments', segs, 'time', ARGV[1], 'revision', rev, 'written_at', ARGV[2],
      'gen', ARGV[4])
    changed = changed + 1
    if segs == '[]' then
      redis.call('SREM', KEYS[2], ARGV[j + 1])
    else
      redis.call('SADD', KEYS[2], ARGV[j + 1])
    end
  elseif clear and st == nil then
    redis.call('SREM', KEYS[2], ARGV[j + 1])
  end
end
redis.call('HSET', KEYS[1], 'last_write_ms', ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_time'))
if last == nil or t > last then redis.call('HSET', KEYS[1], 'last_time', ARGV[1]) end
return changed
"""

# KEYS: meta, user keys...; ARGV: written_at, then (segments, effective_time, revision) per key.
# Replaces only when (effective_time, revision) is greater than the stored pair.
_STREAM_LUA = """
local changed = 0
local newest = nil
local newest_text = nil
for i = 2, #KEYS do
  local j = 2 + (i - 2) * 3
  local t = tonumber(ARGV[j + 1])
  local r = tonumber(ARGV[j + 2])
  if newest == nil or t > newest then
    newest = t
    newest_text = ARGV[j + 1]
  end
  local cur = redis.call('HMGET', KEYS[i], 'time', 'revision')
  local st = tonumber(cur[1])
  if st == nil or t > st or (t == st and r > tonumber(cur[2])) then
    redis.call('HSET', KEYS[i], 'segments', ARGV[j], 'time', ARGV[j + 1], 'revision', ARGV[j + 2],
      'written_at', ARGV[1])
    changed = changed + 1
  end
end
redis.call('HSET', KEYS[1], 'last_write_ms', ARGV[1])
if newest ~= nil then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_time'))
  if last == nil or newest > last then redis.call('HSET', KEYS[1], 'last_time', newest_text) end
end
return changed
"""


# KEYS: legacy meta, user keys...; returns per key the fields of the value a reader may see (segments,
# time, revision, written_at), or an empty list: the value if its generation is published, else prev_*.
_LEGACY_READ_LUA = """
local pub = tonumber(redis.call('HGET', KEYS[1], 'published_gen')) or 0
local out = {}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'segments', 'time', 'revision', 'written_at', 'gen',
    'prev_segments', 'prev_time', 'prev_revision', 'prev_written_at')
  if v[1] and (tonumber(v[5]) or 0) <= pub then
    out[i - 1] = {v[1], v[2], v[3], v[4]}
  elseif v[1] and v[6] then
    out[i - 1] = {v[6], v[7], v[8], v[9]}
  else
    out[i - 1] = {}
  end
end
return out
"""


def _visible(fields: Sequence[Any]) -> StoredSegments | None:
    """One entry of ``_LEGACY_READ_LUA``'s reply as a value (None: nothing published for the user)."""
    if not fields:
        return None
    segments, time, revision, written_at = (_text(f) for f in fields)
    return StoredSegments(tuple(json.loads(segments)), int(time), int(revision), int(written_at))


# One script call: its keys and its arguments.
ScriptCall = tuple[list[str], list[str]]


def _script_calls(
    head_keys: list[str], head_args: list[str], entries: Sequence[tuple[str, list[str]]]
) -> list[ScriptCall]:
    """``entries`` (key, per-key args) cut into calls of BATCH_KEYS keys, each led by the head keys and
    arguments; one call even with no entries."""
    chunks = [entries[i : i + BATCH_KEYS] for i in range(0, len(entries), BATCH_KEYS)] or [[]]
    return [
        (head_keys + [key for key, _ in chunk], head_args + [arg for _, args in chunk for arg in args])
        for chunk in chunks
    ]


def resp_command(*words: bytes) -> bytes:
    """One command in the Redis protocol: what redis-py's packer writes, without its per-command objects."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(word), word) for word in words)


def _packed_evalsha(sha: str, calls: Sequence[ScriptCall]) -> bytes:
    """``calls`` as EVALSHA commands in the Redis protocol, in one buffer: what redis-py's ``send_command``
    would write for each, at about half its cost, and then one write to the socket instead of one a call."""
    head = sha.encode()
    return b"".join(
        resp_command(b"EVALSHA", head, b"%d" % len(keys), *(key.encode() for key in keys), *(a.encode() for a in args))
        for keys, args in calls
    )


class RedisStore:
    """Each side's current segments per user (see the module doc for keys and guarantees).

    Build it with ``RedisStore.open(url)`` (pings, ``StoreUnavailable`` if unreachable) or
    over an existing client. Every method raises ``StoreUnavailable`` when the server
    stays unreachable after the client's retries. ``clock`` stamps ``written_at``.
    """

    def __init__(self, client: redis.Redis, prefix: str = PREFIX, clock: Clock = wall_clock_ms) -> None:
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self._legacy = client.register_script(_LEGACY_LUA)
        self._legacy_read = client.register_script(_LEGACY_READ_LUA)
        self._stream = client.register_script(_STREAM_LUA)

    @classmethod
    def open(
        cls, url: str, prefix: str = PREFIX, clock: Clock = wall_clock_ms, timeout_s: float = 2.0
    ) -> RedisStore:
        return cls(connect(url, timeout_s=timeout_s), prefix, clock)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _where(self) -> str:
        kwargs = self.client.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable("Redis", self._where, exc)

    # ---- writes --------------------------------------------------------------------------------

    def write_legacy(self, as_of: int, rows: Iterable[tuple[str, frozenset[str]]]) -> int:
        """Store the legacy snapshot at ``as_of``; returns how many user values changed.

        ``rows`` is the COMPLETE snapshot at ``as_of``: every user with a non-empty set
        (rows with an empty set are allowed and stored as empty). Every other user the
        store holds a non-empty legacy set for, written at an earlier as-of, is cleared
        to the empty set at ``as_of`` (the store keeps the index of non-empty users for
        this). Re-running the same as-of changes nothing; an as-of older than a user's
        stored one does not touch that user; a different set at the same as-of replaces
        the stored one with ``revision + 1``.
        """
        meta = meta_key("legacy", self.prefix)
        head = [meta, _nonempty_key(self.prefix)]
        written: set[str] = set()
        entries: list[tuple[str, list[str]]] = []
        for user_id, segments in rows:
            member = encode_user_id(user_id)
            written.add(member)
            entries.append((f"{self.prefix}:legacy:u:{member}", [_segments_json(segments), member]))
        try:
            gen = str(self.client.hincrby(meta, "gen", 1))
            changed = self._pipelined(self._legacy, head, [str(as_of), str(self.clock()), "0", gen], entries)
            index = sorted(_text(m) for m in self.client.smembers(_nonempty_key(self.prefix)))
            gone = [(f"{self.prefix}:legacy:u:{m}", ["[]", m]) for m in index if m not in written]
            if gone or not entries:
                changed += self._pipelined(self._legacy, head, [str(as_of), str(self.clock()), "1", gen], gone)
            self.client.hset(meta, "published_gen", gen)  # the flip: readers see the whole snapshot from here
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return changed

    def write_stream(self, transitions: Sequence[Transition]) -> int:
        """Store stream transitions; returns how many user values changed.

        A user's value is replaced only by a transition with a greater
        ``(effective_time, revision)``: replaying a batch, or delivering an older
        revision after a newer one, changes nothing. Transitions may come in any order
        and several per user; the greatest wins.
        """
        head, argv, entries = self._stream_entries(transitions)
        try:
            return self._pipelined(self._stream, head, argv, entries)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _stream_entries(
        self, transitions: Sequence[Transition], now: str | None = None
    ) -> tuple[list[str], list[str], list[tuple[str, list[str]]]]:
        """The stream script's head keys, head arguments and per-user entries (the greatest transition each);
        ``now`` stamps ``written_at`` (the clock's time by default)."""
        head_key = f"{self.prefix}:stream:u:"  # user_key("stream", ...) without its per-call checks
        entries = [
            (
                head_key + encode_user_id(tr.user_id),
                [_segments_text(tr.segments), str(tr.effective_time), str(tr.revision)],
            )
            for tr in _greatest_each(transitions)
        ]
        return [meta_key("stream", self.prefix)], [now or str(self.clock())], entries

    def _packed_stream(self, best: Sequence[Transition], now: str) -> tuple[bytes, int]:
        """The stream script's calls for ``best`` (one transition a user) as EVALSHA commands in the Redis
        protocol, and how many calls: ``_packed_evalsha`` of ``_script_calls`` of ``_stream_entries``, byte for
        byte, built as one string without the intermediate lists (the live sink runs it for every batch: 2.6
        against 1.1 us a transition). Every word is ASCII (user ids percent-encoded, sets as escaped JSON), so
        its length in characters is its length in bytes."""
        sha = self._stream.sha
        meta = meta_key("stream", self.prefix)
        head_key = f"{self.prefix}:stream:u:"
        out: list[str] = []
        calls = 0
        for start in range(0, len(best) or 1, BATCH_KEYS):  # one call even with no entries, as _script_calls
            keys: list[str] = []
            args: list[str] = []
            for user_id, segments, effective_time, revision, _, _ in best[start : start + BATCH_KEYS]:
                key = head_key + encode_user_id(user_id)
                keys.append(f"${len(key)}\r\n{key}\r\n")
                time, number = str(effective_time), str(revision)
                args.append(f"{_segments_bulk(segments)}${len(time)}\r\n{time}\r\n${len(number)}\r\n{number}\r\n")
            count = str(1 + len(keys))
            out.append(
                f"*{5 + 4 * len(keys)}\r\n$7\r\nEVALSHA\r\n${len(sha)}\r\n{sha}\r\n${len(count)}\r\n{count}\r\n"
                f"${len(meta)}\r\n{meta}\r\n"
            )
            out.extend(keys)
            out.append(f"${len(now)}\r\n{now}\r\n")
            out.extend(args)
            calls += 1
        return "".join(out).encode(), calls

    def stream_writer(self) -> StreamWriter:
        """A writer that sends stream transitions without waiting for each reply (see ``StreamWriter``)."""
        return StreamWriter(self)

    def _pipelined(
        self,
        script: Script,
        head_keys: list[str],
        head_args: list[str],
        entries: Sequence[tuple[str, list[str]]],
    ) -> int:
        """Run ``script`` over ``entries`` (key, per-key args), BATCH_KEYS keys per call, many calls per
        round trip; returns the sum of the calls' results. One call runs even with no entries."""
        return self._run_calls(script, _script_calls(head_keys, head_args, entries))

    def _run_calls(self, script: Script, calls: Sequence[ScriptCall]) -> int:
        """Run ``script`` once per (keys, args) call, many calls per round trip; the sum of their results."""
        if len(calls) == 1:
            # One call: EVALSHA straight away (a pipeline first asks SCRIPT EXISTS: a second round trip).
            keys, argv = calls[0]
            return int(script(keys=keys, args=argv))
        changed = 0
        for start in range(0, len(calls), CALLS_PER_ROUND_TRIP):
            pipe = self.client.pipeline(transaction=False)
            for keys, argv in calls[start : start + CALLS_PER_ROUND_TRIP]:
                script(keys=keys, args=argv, client=pipe)
            changed += sum(int(n) for n in pipe.execute())
        return changed

    def touch(self, side: str) -> None:
        """Record a heartbeat for ``side`` without writing data (a writer that is alive but idle)."""
        try:
            self.client.hset(meta_key(side, self.prefix), "last_write_ms", str(self.clock()))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    # ---- reads ---------------------------------------------------------------------------------

    def get(self, side: str, user_id: str) -> StoredSegments | None:
        """The user's stored set on ``side``, or None when the side has never written the user."""
        if side == "legacy":
            return self.get_many(side, [user_id])[0]
        try:
            return _stored(self.client.hgetall(user_key(side, user_id, self.prefix)))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def get_many(self, side: str, user_ids: Sequence[str]) -> list[StoredSegments | None]:
        """``get`` for many users in one round trip, in the order given (legacy: from one snapshot)."""
        if side == "legacy":
            keys = [user_key(side, user_id, self.prefix) for user_id in user_ids]
            return self._read_legacy(keys, per_call=max(1, len(keys)))
        try:
            pipe = self.client.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.hgetall(user_key(side, user_id, self.prefix))
            return [_stored(raw) for raw in pipe.execute()]
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def meta(self, side: str) -> SideMeta | None:
        """The side's heartbeat, or None when it has never written."""
        try:
            raw = self.client.hgetall(meta_key(side, self.prefix))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        if not raw:
            return None
        last_time = raw.get("last_time")
        return SideMeta(int(raw["last_write_ms"]), int(last_time) if last_time is not None else None)

    def scan_side(self, side: str, batch: int = 1000) -> Iterator[tuple[str, StoredSegments]]:
        """Every (user id, stored set) on ``side``, in no particular order (SCAN: a user
        written during the scan may or may not be seen; none is seen twice per key version)."""
        pattern = f"{self.prefix}:{_check_side(side)}:u:*"
        seen: set[str] = set()
        try:
            keys: list[str] = []
            for key in self.client.scan_iter(match=pattern, count=batch):
                if key in seen:
                    continue
                seen.add(key)
                keys.append(key)
                if len(keys) >= batch:
                    yield from self._fetch(keys)
                    keys = []
            if keys:
                yield from self._fetch(keys)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _fetch(self, keys: list[str]) -> Iterator[tuple[str, StoredSegments]]:
        if keys and parse_user_key(keys[0], self.prefix)[0] == "legacy":
            values = self._read_legacy(keys)
        else:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            values = [_stored(raw) for raw in pipe.execute()]
        for key, stored in zip(keys, values, strict=True):
            if stored is not None:
                yield parse_user_key(key, self.prefix)[1], stored

    def _read_legacy(self, keys: list[str], per_call: int = BATCH_KEYS) -> list[StoredSegments | None]:
        """The published legacy values of ``keys`` (module doc), ``per_call`` keys per atomic script call
        (``get_many``: all in one, so from one snapshot)."""
        meta = meta_key("legacy", self.prefix)
        out: list[StoredSegments | None] = []
        try:
            for start in range(0, len(keys), per_call):
                reply = self._legacy_read(keys=[meta, *keys[start : start + per_call]])
                out.extend(_visible(fields) for fields in reply)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return out

    def clear_side(self, side: str) -> int:
        """Delete every key of ``side`` (values, heartbeat, index); returns how many were deleted."""
        pattern = f"{self.prefix}:{_check_side(side)}:*"
        deleted = 0
        try:
            keys: list[str] = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                keys.append(key)
                if len(keys) >= 1000:
                    deleted += int(self.client.unlink(*keys))
                    keys = []
            if keys:
                deleted += int(self.client.unlink(*keys))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return deleted


class StreamWriter:
    """Stream transitions sent without waiting for their replies; ``drain`` waits for them all.

    ``send`` writes the script calls to the socket at once and returns: Redis
    runs each call as it arrives, so the values are visible as soon as with a
    round trip per call, but the caller does not sit idle for the round trip.
    ``drain`` reads every outstanding reply and returns how many values
    changed. If anything went wrong (a dropped connection, a server that lost
    its scripts), ``drain`` sends every call since the last drain again, the
    ordinary way: the stream script is idempotent, so calls that had already
    run change nothing. Until ``drain`` returns, nothing sent counts as written.
    """

    DRAIN_AFTER = 1_000  # calls outstanding before ``send`` drains by itself (replies queue in the socket)

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.connection: Any = None
        # Every batch since the last drain, in order: its transitions (one a user) and its ``written_at``
        # stamp, from which ``drain`` makes its calls again if it must; and how many calls they were.
        self.sent: list[tuple[list[Transition], str]] = []
        self.calls = 0
        self.broken = False
        self.connects = 0  # a reconnect between a send and the drain loses the replies on the old socket

    def _connected(self, _connection: Any) -> None:
        self.connects += 1

    def send(self, transitions: Sequence[Transition]) -> None:
        best = _greatest_each(transitions)
        now = str(self.store.clock())
        packed, calls = self.store._packed_stream(best, now)
        earlier = self.calls
        self.sent.append((best, now))
        self.calls += calls
        if self.broken:
            return  # ``drain`` sends it the ordinary way
        try:
            if self.connection is None:
                self.connection = self.store.client.connection_pool.get_connection()
                self.connection.register_connect_callback(self._connected)
                self.connects = 0
            before = self.connects
            self.connection.send_packed_command([packed], check_health=False)
            if self.connects != before and earlier:
                self.broken = True  # it reconnected: the earlier calls' replies (if they ran) are lost
        except (redis.RedisError, OSError):
            self.broken = True
        if self.calls >= self.DRAIN_AFTER:
            self.drain()

    def drain(self) -> int:
        """Wait for every reply; returns how many values changed. ``StoreUnavailable`` if Redis stays down."""
        if not self.sent:
            return 0
        changed = 0
        if not self.broken and self.connection is not None:
            try:
                for _ in range(self.calls):
                    changed += int(self.connection.read_response())
                self.sent, self.calls = [], 0
                return changed
            except (redis.RedisError, OSError):
                pass  # below: start over on a fresh connection
        self._release(broken=True)
        calls = [
            call for best, now in self.sent for call in _script_calls(*self.store._stream_entries(best, now))
        ]
        try:
            changed = self.store._run_calls(self.store._stream, calls)
        except redis.RedisError as exc:
            raise self.store._unavailable(exc) from None
        self.sent, self.calls = [], 0
        self.broken = False
        return changed

    def close(self) -> None:
        self._release(broken=bool(self.sent))

    def _release(self, broken: bool) -> None:
        if self.connection is not None:
            if broken:
                self.connection.disconnect()
            self.store.client.connection_pool.release(self.connection)
            self.connection = None
