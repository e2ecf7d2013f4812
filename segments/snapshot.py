"""The serving snapshot: what the site reads from Redis, saved into a run directory and loaded back.

A shadow run ends with each side's current segments per user in the serving store
(``segments.redisstore``). With the embedded Valkey that store goes away when the run
ends; ``save_serving`` keeps it as ``DIR/serving.jsonl`` so that ``segshadow serve
--run DIR`` can start a fresh embedded Valkey, ``load_serving`` it, and show the run's
segments with no server running.

Format (JSON Lines, UTF-8): a header ``{"format": "segshadow-serving/1", "saved_at": ms,
"prefix": ...}``, then one line per key of the ``legacy`` and ``stream`` namespaces:
``{"key": K, "hash": {field: value}}`` or ``{"key": K, "set": [member, ...]}``. Keys are
written as the store spells them (user ids percent-encoded), so a load reproduces the
store exactly; other keys (the event stream, the stage cache) are not saved.

When the run's last as-of left every legacy set empty (the traffic ended a window
before it), ``serve --run`` serves legacy's last as-of that had segments instead
(``last_busy_as_of``) and says so.

``save_serving`` writes to a temporary file and renames it, so a reader never sees
half a snapshot. ``load_serving`` raises ``InputError`` for a missing or unreadable
file, a wrong header or a malformed line, and loads nothing in that case.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from segments.errors import InputError, StoreUnavailable
from segments.outputs import Assignment
from segments.redisstore import PREFIX, SIDES
from segments.timeutil import Clock, wall_clock_ms

FORMAT = "segshadow-serving/1"
FILENAME = "serving.jsonl"


@dataclass(frozen=True)
class ServingSnapshot:
    """A loaded snapshot: when it was saved (ms), its key prefix, and its key entries in file order."""

    saved_at: int
    prefix: str
    entries: tuple[dict[str, Any], ...]

    def users_with(self, side: str, segment: str) -> list[str]:
        """Encoded user keys of ``side`` whose stored set holds ``segment``, sorted."""
        head = f"{self.prefix}:{side}:u:"
        found = []
        for entry in self.entries:
            key, value = entry["key"], entry.get("hash")
            if key.startswith(head) and value and segment in json.loads(value.get("segments", "[]")):
                found.append(key[len(head) :])
        return sorted(found)


def last_busy_as_of(assignments: Iterable[Assignment]) -> tuple[int, list[Assignment]] | None:
    """The latest legacy as-of at which any user had a segment, with its assignments; None when none had.

    A run's final as-ofs are often empty (its traffic ended a window earlier), so this is
    the last moment the shop had anything to personalise.
    """
    by_as_of: dict[int, list[Assignment]] = {}
    for a in assignments:
        if a.segments:
            by_as_of.setdefault(a.as_of, []).append(a)
    if not by_as_of:
        return None
    last = max(by_as_of)
    return last, by_as_of[last]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def save_serving(client: redis.Redis, path: Path, prefix: str = PREFIX, clock: Clock = wall_clock_ms) -> int:
    """Write every ``legacy`` and ``stream`` key under ``prefix`` to ``path``; returns how many keys.

    Raises ``StoreUnavailable`` when Redis fails during the scan.
    """
    lines = [json.dumps({"format": FORMAT, "saved_at": clock(), "prefix": prefix})]
    try:
        for side in SIDES:
            for raw_key in sorted(_text(k) for k in client.scan_iter(match=f"{prefix}:{side}:*", count=1000)):
                kind = _text(client.type(raw_key))
                if kind == "hash":
                    fields = {_text(k): _text(v) for k, v in client.hgetall(raw_key).items()}
                    lines.append(json.dumps({"key": raw_key, "hash": fields}, ensure_ascii=False))
                elif kind == "set":
                    members = sorted(_text(m) for m in client.smembers(raw_key))
                    lines.append(json.dumps({"key": raw_key, "set": members}, ensure_ascii=False))
    except (redis.RedisError, OSError) as exc:
        raise StoreUnavailable("Redis", "the serving store", exc) from None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - 1


def read_serving(path: Path) -> ServingSnapshot:
    """Parse ``path`` (see the module doc); ``InputError`` naming the file and line otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read the serving snapshot: {reason}", str(path)) from None
    rows = text.splitlines()
    try:
        header = json.loads(rows[0]) if rows else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("saved_at"), int):
        raise InputError(f"not a serving snapshot (first line is not a {FORMAT} header)", str(path))
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        try:
            entry = json.loads(row)
        except ValueError:
            entry = None
        ok = isinstance(entry, dict) and isinstance(entry.get("key"), str)
        ok = ok and (isinstance(entry.get("hash"), dict) or isinstance(entry.get("set"), list))
        if not ok:
            raise InputError(f"line {number}: not a snapshot key entry", str(path))
        entries.append(entry)
    return ServingSnapshot(header["saved_at"], str(header.get("prefix", PREFIX)), tuple(entries))


def load_serving(client: redis.Redis, snapshot: ServingSnapshot) -> int:
    """Write every key of ``snapshot`` into ``client`` (replacing keys of the same name); returns how many."""
    try:
        pipe = client.pipeline(transaction=False)
        for entry in snapshot.entries:
            pipe.delete(entry["key"])
            if "hash" in entry:
                if entry["hash"]:
                    pipe.hset(entry["key"], mapping=entry["hash"])
            elif entry["set"]:
                pipe.sadd(entry["key"], *entry["set"])
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        raise StoreUnavailable("Redis", "the serving store", exc) from None
    return len(snapshot.entries)
