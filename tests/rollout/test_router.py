"""The serving router over real Redis and a real SQL store, including Redis being down."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis

from rollout.router import LegacySqlReader, Router, StageCache, serving_client, stage_key
from rollout.stages import Position, cohort
from rollout.store import Draft, RolloutStore
from segments.outputs import Assignment, Transition
from segments.redisstore import RedisStore
from segments.sqlstore import SqlStore
from tests.rollout.helpers import T0, Clock, closed_port


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 3_600_000)


@pytest.fixture
def store(database_url: str, clock: Clock) -> Iterator[RolloutStore]:
    with RolloutStore.open(database_url, clock) as opened:
        yield opened


@pytest.fixture
def serving(redis_url: str, clock: Clock) -> Iterator[RedisStore]:
    with RedisStore(serving_client(redis_url), clock=clock) as opened:
        yield opened


def move_to(store: RolloutStore, target: Position) -> None:
    """Set the rollout position directly through decisions (the gates are tested elsewhere)."""
    state = store.state()
    store.record(state.version, Draft("test", "advance", state.position, target))


def router_for(store: RolloutStore, serving: RedisStore, clock: Clock, **kwargs: object) -> Router:
    stages = StageCache(store, serving.client, ttl_ms=1000)
    legacy = LegacySqlReader(store.engine)
    return Router(stages, serving, legacy, clock=clock, **kwargs)  # type: ignore[arg-type]


def seed(
    serving: RedisStore, clock: Clock, users: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]
) -> None:
    """Write each user's (legacy, stream) sets; both heartbeats are ``clock.now``."""
    serving.write_legacy(clock.now - 60_000, [(u, frozenset(legacy)) for u, (legacy, _) in users.items()])
    serving.write_stream(
        [Transition(u, stream, clock.now - 1000, 1, clock.now, "event") for u, (_, stream) in users.items()]
    )


def test_shadow_serves_legacy_to_everyone(store: RolloutStore, serving: RedisStore, clock: Clock) -> None:
    seed(serving, clock, {"ann": (("high_value",), ("window_shopper",))})
    for stage in ("dual_write", "shadow"):
        move_to(store, Position.at(stage))
        serving.client.delete(stage_key())
        served = router_for(store, serving, clock).serve("ann")
        assert (served.side, served.segments, served.stage, served.stale) == (
            "legacy",
            ("high_value",),
            stage,
            False,
        )


def test_canary_serves_the_stream_to_its_cohort_only(
    store: RolloutStore, serving: RedisStore, clock: Clock
) -> None:
    users = {f"user-{i}": (("window_shopper",), ("high_value",)) for i in range(40)}
    seed(serving, clock, users)
    for stage in ("dual_write", "shadow"):
        move_to(store, Position.at(stage))
    move_to(store, Position.at("canary", 50))
    router = router_for(store, serving, clock)
    for user in users:
        served = router.serve(user)
        in_cohort = cohort(user) < 50
        assert served.side == ("stream" if in_cohort else "legacy")
        assert served.segments == (("high_value",) if in_cohort else ("window_shopper",))
        assert f"cohort {cohort(user):.2f}" in served.reason and not served.fallback


def test_stream_without_a_value_falls_back_to_legacy_and_says_so(
    store: RolloutStore, serving: RedisStore, clock: Clock
) -> None:
    serving.write_legacy(clock.now, [("bo", frozenset({"high_value"}))])
    serving.touch("stream")
    for stage in ("dual_write", "shadow", "canary"):
        move_to(store, Position.at(stage, 99.99 if stage == "canary" else None))
    move_to(store, Position.at("live"))
    served = router_for(store, serving, clock).serve("bo")
    assert (served.side, served.segments, served.fallback) == ("legacy", ("high_value",), True)
    assert "fell back to legacy: the stream has no value for this user" in served.reason


def test_a_stale_stream_falls_back_in_live_but_not_in_complete(
    store: RolloutStore, serving: RedisStore, clock: Clock
) -> None:
    seed(serving, clock, {"cy": (("high_value",), ("window_shopper",))})
    for stage in ("dual_write", "shadow"):
        move_to(store, Position.at(stage))
    move_to(store, Position.at("canary", 99.99))
    move_to(store, Position.at("live"))
    router = router_for(store, serving, clock, stream_stale_after_ms=5000)
    clock.advance(5000)
    assert router.serve("cy").side == "stream"  # exactly at the bound: still fresh
    clock.advance(1)
    served = router.serve("cy")
    assert (served.side, served.segments, served.fallback) == ("legacy", ("high_value",), True)
    assert "the stream side is stale: last write 5.0 s ago (bound 5 s)" in served.reason
    move_to(store, Position.at("rampdown"))
    move_to(store, Position.at("complete"))
    serving.client.delete(stage_key())
    served = router.serve("cy")
    assert (served.side, served.segments, served.stale, served.stage) == (
        "stream",
        ("window_shopper",),
        True,
        "complete",
    )
    assert "no fallback" in served.reason


def test_the_stage_is_cached_in_redis_for_its_ttl(
    store: RolloutStore, serving: RedisStore, clock: Clock
) -> None:
    seed(serving, clock, {"di": (("high_value",), ("window_shopper",))})
    stages = StageCache(store, serving.client, ttl_ms=60_000)
    assert stages.current().source == "store"
    assert stages.current().source == "cache"
    assert serving.client.pttl(stage_key()) > 0
    move_to(store, Position.at("dual_write"))
    assert stages.current().position == Position.at("off")  # cached until invalidated or expired
    stages.invalidate()
    view = stages.current()
    assert (view.position, view.source, view.version) == (Position.at("dual_write"), "store", 1)


def test_redis_down_serves_legacy_from_sql_and_says_so(
    store: RolloutStore, database_url: str, clock: Clock
) -> None:
    sql = SqlStore.open(database_url)
    sql.replace_assignments(
        "clickstream@v1",
        clock.now - 300_000,
        [
            Assignment(clock.now - 300_000, "ed", ("high_value",)),
            Assignment(clock.now - 300_000, "<b>", ("x",)),
        ],
    )
    sql.replace_assignments(
        "clickstream@v1", clock.now - 60_000, [Assignment(clock.now - 60_000, "ed", ("window_shopper",))]
    )
    for stage in ("dual_write", "shadow"):
        move_to(store, Position.at(stage))
    move_to(store, Position.at("canary", 99.99))
    down = serving_client(f"redis://127.0.0.1:{closed_port()}/0")
    router = Router(
        StageCache(store, down),
        RedisStore(down),
        LegacySqlReader(store.engine, "clickstream@v1"),
        clock=clock,
    )
    served = router.serve("ed")
    assert (served.side, served.segments, served.stage, served.fallback) == (
        "legacy",
        ("window_shopper",),
        "canary",
        True,
    )
    assert served.reason.startswith("Redis unavailable") and "served legacy from SQL as of" in served.reason
    assert router.serve("<b>").segments == ()  # not in the latest snapshot: no segments now
    sql.close()


def test_redis_down_without_a_legacy_table_is_unavailable(store: RolloutStore, clock: Clock) -> None:
    down = serving_client(f"redis://127.0.0.1:{closed_port()}/0")
    router = Router(StageCache(store, down), RedisStore(down), LegacySqlReader(store.engine), clock=clock)
    served = router.serve("fay")
    assert (served.side, served.segments, served.stage, served.stale) == ("none", (), "off", True)
    assert "Redis unavailable" in served.reason and "unavailable" in served.reason


def test_both_stores_down_gives_an_unknown_stage(tmp_path: Path, clock: Clock) -> None:
    store = RolloutStore.open(f"sqlite:///{tmp_path / 'r.db'}", clock)
    store.engine.dispose()
    (tmp_path / "r.db").unlink()
    (tmp_path / "r.db").mkdir()  # the file is gone and cannot come back
    down = serving_client(f"redis://127.0.0.1:{closed_port()}/0")
    served = Router(StageCache(store, down), RedisStore(down), clock=clock).serve("gus")
    assert (served.side, served.stage) == ("none", "unknown") and "Redis unavailable" in served.reason


def test_redis_that_recovers_is_used_again_after_the_retry_pause(
    store: RolloutStore, redis_url: str, clock: Clock
) -> None:
    client = serving_client(redis_url)
    RedisStore(client, clock=clock).write_legacy(clock.now, [("hal", frozenset({"high_value"}))])
    router = Router(
        StageCache(store, client),
        RedisStore(client),
        LegacySqlReader(store.engine),
        clock=clock,
        retry_after_ms=1000,
    )
    router._mark_redis_down(clock.now)  # as after a failed call
    assert router.serve("hal").side == "none"
    clock.advance(1000)
    served = router.serve("hal")
    assert (served.side, served.segments) == ("legacy", ("high_value",))
    client.close()


def test_user_ids_are_isolated_in_redis(store: RolloutStore, serving: RedisStore, clock: Clock) -> None:
    seed(serving, clock, {"a:b": (("high_value",), ()), "a%3Ab": (("window_shopper",), ())})
    router = router_for(store, serving, clock)
    assert router.serve("a:b").segments == ("high_value",)
    assert router.serve("a%3Ab").segments == ("window_shopper",)
    assert router.serve("a*").segments == ()


def test_unreadable_cache_entries_are_replaced_from_the_store(
    store: RolloutStore, serving: RedisStore, clock: Clock
) -> None:
    serving.client.set(stage_key(), "{not json")
    view = StageCache(store, serving.client).current()
    assert (view.position, view.source) == (Position.at("off"), "store")
    assert isinstance(serving.client, redis.Redis) and serving.client.get(stage_key()) != "{not json"


def test_a_flushed_redis_without_a_legacy_heartbeat_serves_the_published_run_from_sql(
    store: RolloutStore, serving: RedisStore, database_url: str, clock: Clock
) -> None:
    """FLUSHDB takes the legacy values and heartbeat until the next as-of: Redis still answers, but the
    router serves the published complete run from SQL (fresh, not stale) and says Redis had no heartbeat."""
    as_of = clock.now - 60_000
    with SqlStore.open(database_url) as sql:
        run_id = sql.begin_legacy_run("clickstream@v1")
        sql.stage_assignments(run_id, "clickstream@v1", as_of, [Assignment(as_of, "ed", ("high_value",))])
        sql.publish_legacy_run(run_id, "clickstream@v1", 1)
    seed(serving, clock, {"ed": (("high_value",), ("high_value",))})
    for stage in ("dual_write", "shadow"):
        move_to(store, Position.at(stage))
    router = Router(
        StageCache(store, serving.client), serving, LegacySqlReader(store.engine, "clickstream@v1"), clock=clock
    )
    assert router.serve("ed").segments == ("high_value",) and not router.serve("ed").fallback
    serving.client.flushdb()
    served = router.serve("ed")
    assert (served.side, served.segments, served.stale, served.fallback) == ("legacy", ("high_value",), False, True)
    assert "no legacy heartbeat" in served.reason and "served legacy from SQL as of" in served.reason, served.reason
    move_to(store, Position.at("canary", 99.99))  # the stream is gone too: its fallback is the same SQL run
    router.stages.invalidate()
    streamed = router.serve("ed")
    assert (streamed.side, streamed.segments, streamed.fallback) == ("legacy", ("high_value",), True)
    assert "fell back to legacy" in streamed.reason and "no legacy heartbeat" in streamed.reason, streamed.reason
