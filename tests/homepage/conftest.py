"""A site over real stores: a SQL rollout store, a real Redis, evidence in a directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout.plan import load_plan
from rollout.router import LegacySqlReader, Router, StageCache, serving_client, stage_key
from rollout.stages import Position
from rollout.store import Draft, RolloutStore
from segments.outputs import Transition
from segments.redisstore import RedisStore
from segments.timeutil import wall_clock_ms
from tests.rollout.helpers import good_evidence, write_evidence


@dataclass
class Site:
    store: RolloutStore
    redis: RedisStore
    router: Router
    evidence: Path

    def legacy(self, user: str, *segments: str, as_of: int | None = None) -> None:
        """Make ``segments`` the user's legacy set (a snapshot with just this user)."""
        self.redis.write_legacy(as_of or wall_clock_ms(), [(user, frozenset(segments))])

    def stream(self, user: str, *segments: str, revision: int = 1) -> None:
        now = wall_clock_ms()
        self.redis.write_stream([Transition(user, tuple(sorted(segments)), now, revision, now, "event")])

    def move_to(self, *positions: Position) -> None:
        for target in positions:
            state = self.store.state()
            self.store.record(state.version, Draft("test", "advance", state.position, target, reason="setup"))
        self.redis.client.delete(stage_key())


@pytest.fixture
def site(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Site]:
    store = RolloutStore.open(database_url)
    client = serving_client(redis_url)
    redis_store = RedisStore(client)
    router = Router(StageCache(store, client, ttl_ms=200), redis_store, LegacySqlReader(store.engine))
    evidence = write_evidence(tmp_path / "evidence", good_evidence(wall_clock_ms()))
    yield Site(store, redis_store, router, evidence)
    client.close()
    store.close()


@pytest.fixture
def make_app(site: Site) -> Callable[..., object]:
    from homepage.app import create_app

    def build(**kwargs: object) -> object:
        plan = load_plan("default")
        return create_app(site.router, site.evidence, plan=plan, **kwargs)  # type: ignore[arg-type]

    return build
