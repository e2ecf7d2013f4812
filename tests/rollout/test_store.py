"""Durable rollout state and decision log: concurrency, atomicity, replay, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from rollout.stages import Position
from rollout.store import INITIAL, Decision, Draft, RolloutStore, decisions_table, replay
from segments.errors import ConflictError, InputError, StoreUnavailable, UsageError
from tests.rollout.helpers import Clock, closed_port


def step(store: RolloutStore, target: Position, actor: str = "ana") -> Decision:
    state = store.state()
    return store.record(state.version, Draft(actor, "advance", state.position, target, reason="test"))


def test_a_new_store_is_off_at_version_zero_and_creating_twice_is_harmless(database_url: str) -> None:
    with RolloutStore.open(database_url) as store:
        assert store.state() == INITIAL
        store.create()
        assert store.state() == INITIAL and store.history() == []


def test_a_decision_moves_the_state_and_is_logged_with_everything(database_url: str) -> None:
    clock = Clock()
    with RolloutStore.open(database_url, clock) as store:
        gates = (
            {"name": "unexplained", "status": "pass", "observed": 0.0001, "threshold": 0.001, "reason": "ok"},
        )
        draft = Draft(
            "ana",
            "advance",
            Position.at("off"),
            Position.at("dual_write"),
            gates,
            "pass",
            "/ev/parity.json",
            "ab" * 32,
            "start dual-write",
            False,
        )
        decision = store.record(0, draft)
        state = store.state()
        assert (state.position, state.version, state.entered_at_ms) == (
            Position.at("dual_write"),
            1,
            clock.now,
        )
        [logged] = store.history()
        assert logged == decision and logged.gates == gates and logged.evidence_sha256 == "ab" * 32


def test_a_stale_version_is_a_conflict_that_changes_nothing(database_url: str) -> None:
    with RolloutStore.open(database_url) as store:
        step(store, Position.at("dual_write"))
        with pytest.raises(ConflictError, match="it is now dual_write"):
            store.record(0, Draft("bo", "advance", Position.at("off"), Position.at("dual_write")))
        assert store.state().version == 1 and len(store.history()) == 1


def test_two_concurrent_advances_one_wins_and_the_other_gets_a_conflict(database_url: str) -> None:
    stores = [RolloutStore.open(database_url) for _ in range(4)]
    try:
        base = stores[0].state()
        barrier = threading.Barrier(len(stores))
        outcomes: list[object] = [None] * len(stores)

        def operator(index: int) -> None:
            draft = Draft(f"op{index}", "advance", base.position, Position.at("dual_write"))
            barrier.wait()
            try:
                outcomes[index] = stores[index].record(base.version, draft)
            except ConflictError as exc:
                outcomes[index] = exc

        threads = [threading.Thread(target=operator, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        winners = [o for o in outcomes if isinstance(o, Decision)]
        losers = [o for o in outcomes if isinstance(o, ConflictError)]
        assert len(winners) == 1 and len(losers) == len(stores) - 1
        [logged] = stores[0].history()
        assert logged.actor == winners[0].actor and stores[0].state().version == 1
    finally:
        for s in stores:
            s.close()


def test_state_change_and_log_row_are_one_transaction(database_url: str) -> None:
    """A decision row that cannot be written (its id is taken) leaves the state row untouched."""
    with RolloutStore.open(database_url) as store:
        step(store, Position.at("dual_write"))
        with store.engine.begin() as conn:  # a stray row where the next decision would go
            conn.execute(
                decisions_table.insert().values(
                    id=2,
                    at=0,
                    actor="x",
                    action="advance",
                    from_stage="dual_write",
                    from_percent=0.0,
                    to_stage="shadow",
                    to_percent=0.0,
                    gates="[]",
                    forced=False,
                )
            )
        with pytest.raises(ConflictError, match="already in the log"):
            step(store, Position.at("shadow"))
        state = store.state()
        assert state.position == Position.at("dual_write") and state.version == 1


def test_replaying_the_log_gives_the_state_row(database_url: str) -> None:
    clock = Clock()
    with RolloutStore.open(database_url, clock) as store:
        for target in [
            Position.at("dual_write"),
            Position.at("shadow"),
            Position.at("canary", 1),
            Position.at("canary", 5),
        ]:
            clock.advance(1000)
            step(store, target)
        state = store.state()
        store.record(
            state.version, Draft("auto", "rollback", state.position, Position.at("shadow"), reason="bad")
        )
        assert replay(store.history()) == store.state()
        assert [d.id for d in store.history()] == [1, 2, 3, 4, 5]
        assert [d.id for d in store.history(limit=2)] == [4, 5]


def test_replay_refuses_a_broken_chain(database_url: str) -> None:
    with RolloutStore.open(database_url) as store:
        step(store, Position.at("dual_write"))
        step(store, Position.at("shadow"))
        first, second = store.history()
    with pytest.raises(InputError, match="id 2 follows version 0"):
        replay([second])
    import dataclasses

    with pytest.raises(InputError, match="starts at off"):
        replay([first, dataclasses.replace(second, source=Position.at("off"))])


def test_text_no_backend_can_store_is_refused_before_writing(database_url: str) -> None:
    with RolloutStore.open(database_url) as store:
        for draft in (
            Draft("a\x00b", "advance", Position.at("off"), Position.at("dual_write")),
            Draft("ana", "advance", Position.at("off"), Position.at("dual_write"), reason="\ud800"),
            Draft("  ", "advance", Position.at("off"), Position.at("dual_write")),
        ):
            with pytest.raises(UsageError):
                store.record(0, draft)
        assert store.state() == INITIAL


def test_unicode_actor_and_reason_round_trip(database_url: str) -> None:
    with RolloutStore.open(database_url) as store:
        state = store.state()
        store.record(
            state.version,
            Draft(
                "Zoë 🚀",
                "advance",
                state.position,
                Position.at("dual_write"),
                reason="ünïcode ' \" ; DROP TABLE x",
            ),
        )
        [d] = store.history()
        assert d.actor == "Zoë 🚀" and d.reason == "ünïcode ' \" ; DROP TABLE x"


def test_an_unreachable_database_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        RolloutStore.open(f"postgresql://postgres@127.0.0.1:{closed_port()}/test")
    with pytest.raises(StoreUnavailable):
        RolloutStore.open(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_a_database_that_goes_away_after_opening_is_reported_not_half_applied(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    store = RolloutStore.open(f"sqlite:///{path}")
    step(store, Position.at("dual_write"))
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE segshadow_rollout_decisions"))
    with pytest.raises(StoreUnavailable):
        step(store, Position.at("shadow"))
    assert store.state().position == Position.at("dual_write")
    store.close()


def test_the_cockroachdb_dialect_and_its_transaction_retry_path(database_url: str) -> None:
    """CockroachDB has no server here: its dialect and run_transaction's retry path run on PostgreSQL."""
    if not database_url.startswith("postgresql://"):
        pytest.skip("the cockroachdb:// dialect speaks the PostgreSQL protocol; this run has SQLite only")
    url = "cockroachdb://" + database_url.split("://", 1)[1]
    stores = [RolloutStore.open(url) for _ in range(3)]
    try:
        assert stores[0].engine.dialect.name == "cockroachdb"
        step(stores[0], Position.at("dual_write"))
        base = stores[0].state()
        barrier = threading.Barrier(len(stores))
        outcomes: list[object] = []

        def operator(store: RolloutStore) -> None:
            draft = Draft("op", "advance", base.position, Position.at("shadow"))
            barrier.wait()
            try:
                outcomes.append(store.record(base.version, draft))
            except ConflictError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=operator, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(isinstance(o, Decision) for o in outcomes) == 1
        assert sum(isinstance(o, ConflictError) for o in outcomes) == len(stores) - 1
        assert replay(stores[1].history()) == stores[2].state()
    finally:
        for s in stores:
            s.close()
