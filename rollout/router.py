"""The serving router: which side answers for user ``u`` now, and what are ``u``'s segments.

``Router.serve(user_id)`` reads the rollout position (``StageCache``: a Redis key
with a short TTL in front of the SQL state row, the source of truth), applies the
stage table (``rollout.stages``: legacy, a canary cohort, or the stream), and reads
the chosen side's value from the serving store. Every answer says why in ``reason``.

Fallbacks, in order of trouble:

- **The stream has no value or is stale** (its writer's heartbeat is older than
  ``stream_stale_after_ms``): in canary and live the router serves legacy instead and
  says so; in rampdown and complete there is no legacy to fall back to, so it
  serves what the stream has with ``stale=True``.
- **Redis answers but has no legacy heartbeat** (flushed, or restarted empty, and the
  legacy job has not written an as-of since): the legacy set comes from the SQL
  legacy assignments table as below, and the reason says Redis had no legacy
  heartbeat; without a SQL reader, or when SQL has no published run or is down, the
  router serves Redis's (empty) legacy side as stale.
- **Redis is down**: the stage comes from SQL, and the user's legacy set from the SQL
  legacy assignments table (``segshadow_legacy_assignments``, the latest as-of) when
  that table exists; otherwise the side is ``none`` with no segments and the reason
  says the serving store is unavailable. A failed Redis call keeps the router off
  Redis for ``retry_after_ms`` so a dead server does not slow every request.
- **Both stores are down**: the stage is unknown, and the router answers ``none``.

``stale`` is also set when the served side's heartbeat (or the SQL as-of) is older
than that side's bound: the answer is the best there is, but it may be old.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Literal, Protocol

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rollout.stages import Position, Stage, cohort
from rollout.store import RolloutState, RolloutStore
from segments.errors import StoreUnavailable
from segments.redisstore import PREFIX, SideMeta, StoredSegments, retry_policy
from segments.timeutil import Clock, format_ms, wall_clock_ms

ServedSide = Literal["legacy", "stream", "none"]
LEGACY_ASSIGNMENTS = "segshadow_legacy_assignments"
LEGACY_RUNS = "segshadow_legacy_runs"


class SegmentSource(Protocol):
    """Each side's current value per user and the side's heartbeat (``segments.redisstore.RedisStore``)."""

    def get(self, side: str, user_id: str) -> StoredSegments | None: ...
    def meta(self, side: str) -> SideMeta | None: ...


class LegacyFallback(Protocol):
    """The user's legacy set from somewhere other than Redis: ``(segments, as_of)`` or None."""

    def latest(self, user_id: str) -> tuple[tuple[str, ...], int] | None: ...


@dataclass(frozen=True)
class Served:
    """One answer of the router."""

    user_id: str
    side: ServedSide
    segments: tuple[str, ...]
    stage: str
    percent: float
    reason: str
    stale: bool
    fallback: bool = False


@dataclass(frozen=True)
class StageView:
    """The position as read, where it came from (``cache``, ``store`` or ``unknown``), and any trouble."""

    position: Position | None
    version: int | None
    source: Literal["cache", "store", "unknown"]
    trouble: str = ""
    redis_failed: bool = False


def serving_client(url: str, timeout_s: float = 0.5) -> redis.Redis:
    """A Redis client for serving: short timeouts and one quick retry, no ping, so a server that is
    down costs a request milliseconds (the router then falls back) instead of seconds."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s / 2,
        socket_timeout=timeout_s,
        retry=retry_policy(1, 0.02, 0.1),
        decode_responses=True,
    )


def stage_key(prefix: str = PREFIX) -> str:
    return f"{prefix}:rollout:stage"


def _encode_state(state: RolloutState) -> str:
    return json.dumps(
        {"stage": state.position.stage.value, "percent": state.position.percent, "version": state.version}
    )


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


class StageCache:
    """The rollout position, cached in Redis for ``ttl_ms`` in front of the SQL store.

    A Redis failure is not an error here: the view then comes from SQL and says so in
    ``trouble``. Both failing gives ``source="unknown"``.
    """

    def __init__(
        self,
        store: RolloutStore | None,
        client: redis.Redis | None,
        ttl_ms: int = 1000,
        prefix: str = PREFIX,
    ) -> None:
        self.store = store
        self.client = client
        self.ttl_ms = ttl_ms
        self.key = stage_key(prefix)

    def current(self, use_redis: bool = True) -> StageView:
        trouble = ""
        failed = False
        redis_ok = use_redis and self.client is not None
        if redis_ok and self.client is not None:
            try:
                raw = self.client.get(self.key)
                if raw is not None:
                    data = json.loads(raw)
                    return StageView(
                        Position.at(Stage(data["stage"]), data["percent"]), int(data["version"]), "cache"
                    )
            except (redis.RedisError, OSError) as exc:
                redis_ok, failed = False, True
                trouble = f"Redis unavailable ({type(exc).__name__})"
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable cache entry is replaced below
        elif use_redis:
            trouble = "no Redis configured"
        if self.store is None:
            return StageView(None, None, "unknown", _join(trouble, "no SQL store configured"), failed)
        try:
            state = self.store.state()
        except StoreUnavailable as exc:
            return StageView(None, None, "unknown", _join(trouble, str(exc)), failed)
        if redis_ok and self.client is not None:
            try:
                self.client.set(self.key, _encode_state(state), px=self.ttl_ms)
            except (redis.RedisError, OSError) as exc:
                failed = True
                trouble = f"Redis unavailable ({type(exc).__name__})"
        return StageView(state.position, state.version, "store", trouble, failed)

    def invalidate(self) -> None:
        """Drop the cached position (after a decision) so the next read goes to SQL."""
        if self.client is not None:
            self.client.delete(self.key)


class LegacySqlReader:
    """The latest legacy set of a user from the SQL legacy assignments table, when it exists.

    The table holds complete snapshots (only users with a non-empty set) keyed by
    ``(ruleset, as_of, user_id)``; the latest as-of of ``ruleset`` (or of the rule set
    written last when None) is the answer, and a user absent from it has no segments. User ids
    are matched as the SQL store writes them (``segments.sqlstore.to_sql_text``).
    """

    def __init__(self, engine: Engine, ruleset: str | None = None) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self._tables: dict[str, sa.Table] = {}

    def _table(self, name: str) -> sa.Table | None:
        if name not in self._tables:
            if not sa.inspect(self.engine).has_table(name):
                return None
            self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        return self._tables[name]

    def latest(self, user_id: str) -> tuple[tuple[str, ...], int] | None:
        """``(segments, as_of)`` at the latest as-of, or None when there is no table or no snapshot.

        The latest as-of is the newest of the assignments and of the legacy runs (a run
        whose snapshot was empty has no assignment rows). Raises ``StoreUnavailable``
        when the database cannot be reached.
        """
        from segments.sqlstore import to_sql_text

        try:
            table = self._table(LEGACY_ASSIGNMENTS)
            if table is None:
                return None
            runs = self._table(LEGACY_RUNS)
            c = table.c
            with self.engine.connect() as conn:
                ruleset = self.ruleset
                if ruleset is None:
                    top = conn.execute(sa.select(c.ruleset).order_by(c.as_of.desc()).limit(1)).first()
                    if top is None:
                        return None
                    ruleset = top.ruleset
                candidates = [
                    conn.execute(sa.select(sa.func.max(c.as_of)).where(c.ruleset == ruleset)).scalar()
                ]
                if runs is not None:
                    r = runs.c
                    candidates.append(
                        conn.execute(sa.select(sa.func.max(r.as_of)).where(r.ruleset == ruleset)).scalar()
                    )
                known = [int(t) for t in candidates if t is not None]
                if not known:
                    return None
                as_of = max(known)
                text = conn.execute(
                    sa.select(c.segments).where(
                        c.ruleset == ruleset, c.as_of == as_of, c.user_id == to_sql_text(user_id)
                    )
                ).scalar()
        except sa.exc.DBAPIError as exc:
            raise StoreUnavailable("the database", str(self.engine.url), getattr(exc, "orig", exc)) from None
        return (tuple(json.loads(text)) if text else ()), as_of


class Router:
    """Answers ``serve(user_id)``; see the module doc for the stage table and the fallbacks."""

    def __init__(
        self,
        stages: StageCache,
        source: SegmentSource | None,
        legacy_sql: LegacyFallback | None = None,
        *,
        clock: Clock = wall_clock_ms,
        salt: str = "segshadow",
        stream_stale_after_ms: int = 5_000,
        legacy_stale_after_ms: int = 15 * 60_000,
        retry_after_ms: int = 1_000,
    ) -> None:
        self.stages = stages
        self.source = source
        self.legacy_sql = legacy_sql
        self.clock = clock
        self.salt = salt
        self.stale_after = {"stream": stream_stale_after_ms, "legacy": legacy_stale_after_ms}
        self.retry_after_ms = retry_after_ms
        self._redis_down_until = 0
        self._lock = threading.Lock()

    def _redis_usable(self, now: int) -> bool:
        with self._lock:
            return self.source is not None and now >= self._redis_down_until

    def _mark_redis_down(self, now: int) -> None:
        with self._lock:
            self._redis_down_until = now + self.retry_after_ms

    def serve(self, user_id: str) -> Served:
        """Which side serves ``user_id`` now, its segments, and why. Never raises for a store outage."""
        now = self.clock()
        usable = self._redis_usable(now)
        view = self.stages.current(use_redis=usable)
        if view.redis_failed:
            self._mark_redis_down(now)
            usable = False
        if view.position is None:
            return Served(user_id, "none", (), "unknown", 0.0, f"stage unknown: {view.trouble}", True)
        position = view.position
        wants_stream, why = self._choice(position, user_id)
        if usable and self.source is not None:
            try:
                return self._from_redis(self.source, user_id, position, wants_stream, why, now)
            except StoreUnavailable as exc:
                self._mark_redis_down(now)
                trouble = f"Redis unavailable ({exc})"
        elif self.source is None:
            trouble = "no Redis configured"
        else:
            trouble = view.trouble or "Redis unavailable (failed within the last second)"
        return self._from_sql(user_id, position, why, trouble, now)

    def _choice(self, position: Position, user_id: str) -> tuple[bool, str]:
        rule = position.meaning.serves
        if rule == "cohort":
            place = cohort(user_id, self.salt)
            if place < position.percent:
                return True, f"{position}: cohort {place:.2f} < {position.percent:g}, the stream serves"
            return False, f"{position}: cohort {place:.2f} ≥ {position.percent:g}, legacy serves"
        if rule == "stream":
            return True, f"{position}: the stream serves"
        return False, f"{position}: legacy serves"

    def _age(self, meta: SideMeta | None, side: str, now: int) -> tuple[bool, str]:
        if meta is None:
            return True, f"the {side} side has never written (no heartbeat)"
        age = now - meta.last_write_ms
        bound = self.stale_after[side]
        if age > bound:
            return (
                True,
                f"the {side} side is stale: last write {age / 1000:.1f} s ago (bound {bound / 1000:g} s)",
            )
        return False, ""

    def _from_redis(
        self, source: SegmentSource, user_id: str, position: Position, wants_stream: bool, why: str, now: int
    ) -> Served:
        stage, percent = position.stage.value, position.percent
        if wants_stream:
            value = source.get("stream", user_id)
            stale, stale_why = self._age(source.meta("stream"), "stream", now)
            if value is not None and not stale:
                return Served(user_id, "stream", value.segments, stage, percent, why, False)
            trouble = stale_why if stale else "the stream has no value for this user"
            if not position.meaning.fallback:
                segments = value.segments if value is not None else ()
                return Served(
                    user_id, "stream", segments, stage, percent, f"{why}; {trouble}; no fallback", True
                )
            why = f"{why}; fell back to legacy: {trouble}"
        meta = source.meta("legacy")
        if meta is None and self.legacy_sql is not None:
            # Redis answers but the legacy side is gone (a flush, a restart without persistence) until
            # the next as-of: the published complete run in SQL is the legacy answer meanwhile.
            trouble = "Redis answers but has no legacy heartbeat (flushed or never written)"
            served = self._from_sql(user_id, position, why, trouble, now)
            if served.side == "legacy":
                return served  # else SQL has no published run either (or is down): Redis's answer, as stale
        value = source.get("legacy", user_id)
        stale, stale_why = self._age(meta, "legacy", now)
        reason = why if value is not None else f"{why} (legacy has no value: no segments)"
        if stale:
            reason = f"{reason}; {stale_why}"
        segments = value.segments if value is not None else ()
        return Served(user_id, "legacy", segments, stage, percent, reason, stale, fallback=wants_stream)

    def _from_sql(self, user_id: str, position: Position, why: str, trouble: str, now: int) -> Served:
        stage, percent = position.stage.value, position.percent
        if self.legacy_sql is None:
            return Served(
                user_id, "none", (), stage, percent, f"{trouble}; no SQL legacy reader: unavailable", True
            )
        try:
            found = self.legacy_sql.latest(user_id)
        except StoreUnavailable as exc:
            return Served(user_id, "none", (), stage, percent, f"{trouble}; {exc}", True, fallback=True)
        if found is None:
            reason = f"{trouble}; no legacy assignments in SQL: unavailable"
            return Served(user_id, "none", (), stage, percent, reason, True, fallback=True)
        segments, as_of = found
        stale = now - as_of > self.stale_after["legacy"]
        reason = f"{trouble}; served legacy from SQL as of {format_ms(as_of)} ({why})"
        return Served(user_id, "legacy", segments, stage, percent, reason, stale, fallback=True)
