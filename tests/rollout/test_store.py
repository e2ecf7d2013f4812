"""Durable rollout state and decision log: concurrency, atomicity, replay, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from rollout.stages import Position
from rollout.store import (
    GENESIS,
    INITIAL,
    Decision,
    Draft,
    RolloutStore,
    decisions_table,
    replay,
    state_table,
    verify_log,
)
from segments.db import normalize_url
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


# ---- the hash chain --------------------------------------------------------------------------------


def five_decisions(store: RolloutStore) -> None:
    for target in [
        Position.at("dual_write"),
        Position.at("shadow"),
        Position.at("canary", 1),
        Position.at("canary", 5),
        Position.at("live"),
    ]:
        step(store, target)


def test_an_untouched_log_verifies_and_ends_at_the_state_head(database_url: str) -> None:
    with RolloutStore.open(database_url) as store:
        five_decisions(store)
        decisions, state = store.history(), store.state()
        assert verify_log(decisions, state) == ()
        assert decisions[0].prev_hash == GENESIS and state.head == decisions[-1].row_hash
        assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(decisions))


def _rows(store: RolloutStore) -> dict[int, dict[str, object]]:
    with store.engine.connect() as conn:
        return {row.id: dict(row._mapping) for row in conn.execute(sa.select(decisions_table))}


@pytest.mark.parametrize("tamper", ["edited", "deleted", "reordered", "last deleted"])
def test_an_edited_deleted_or_reordered_row_is_named_by_its_id(database_url: str, tamper: str) -> None:
    with RolloutStore.open(database_url) as store:
        five_decisions(store)
        rows = _rows(store)
        table = decisions_table
        with store.engine.begin() as conn:
            if tamper == "edited":
                conn.execute(table.update().where(table.c.id == 3).values(to_percent=50.0, reason="nothing to see"))
            elif tamper == "deleted":
                conn.execute(table.delete().where(table.c.id == 3))
            elif tamper == "last deleted":
                conn.execute(table.delete().where(table.c.id == 5))
            else:  # rows 3 and 4 swap places, each keeping its own content and hashes
                for here, there in ((3, 4), (4, 3)):
                    values = {k: v for k, v in rows[there].items() if k != "id"}
                    conn.execute(table.update().where(table.c.id == here).values(**values))
        problems = verify_log(store.history(), store.state())
    expected = {"edited": 3, "deleted": 3, "reordered": 3, "last deleted": 5}[tamper]
    assert problems and problems[0].id == expected, problems
    assert f"decision #{expected}: " in str(problems[0])


def test_a_store_of_the_previous_version_is_upgraded_in_place_and_chained(database_url: str) -> None:
    old = sa.MetaData()
    keep = {"plan_digest", "plan_weakened", "head", "weakened", "notes", "prev_hash", "row_hash"}
    for table in (state_table, decisions_table):
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=False)
            for c in table.columns
            if c.name not in keep
        ]
        sa.Table(table.name, old, *columns)
    engine = sa.create_engine(normalize_url(database_url))
    with engine.begin() as conn:
        old.create_all(conn)
        state_row = {"id": 1, "stage": "shadow", "percent": 0.0, "version": 2, "entered_at": 7}
        conn.execute(old.tables[state_table.name].insert().values(**state_row))
        for i, (a, b) in enumerate([("off", "dual_write"), ("dual_write", "shadow")], start=1):
            conn.execute(
                old.tables[decisions_table.name].insert().values(
                    id=i, at=i, actor="old", action="advance", from_stage=a, from_percent=0.0,
                    to_stage=b, to_percent=0.0, gates="[]", forced=False,
                )
            )
    engine.dispose()
    with RolloutStore.open(database_url) as store:
        state = store.state()
        assert (state.position, state.version, state.plan_digest) == (Position.at("shadow"), 2, None)
        assert verify_log(store.history(), state) == ()
        step(store, Position.at("canary", 1))
        assert verify_log(store.history(), store.state()) == ()
    with RolloutStore.open(database_url) as again:  # opening twice changes nothing
        assert again.state().version == 3 and verify_log(again.history(), again.state()) == ()


def test_a_store_that_goes_away_between_the_gate_check_and_the_move_records_nothing(
    database_url: str, tmp_path: Path
) -> None:
    """The outage hits after the state was read and the gates evaluated, as the decision is written."""
    from rollout.cutover import advance

    clock = Clock()
    calls = {"n": 0}
    engine = sa.create_engine(normalize_url(database_url))
    sqlite_file = Path(database_url.removeprefix("sqlite:///")) if database_url.startswith("sqlite") else None
    schema = database_url.rsplit("%3D", 1)[-1] if sqlite_file is None else ""

    def outage(go: bool) -> None:
        if sqlite_file is not None:
            store.engine.dispose()
            src, dst = (sqlite_file, tmp_path / "away.db") if go else (tmp_path / "away.db", sqlite_file)
            if not go:
                sqlite_file.unlink(missing_ok=True)  # the empty file SQLite made while it was gone
            src.rename(dst)
        else:
            with engine.begin() as conn:
                names = (schema, f"{schema}_away") if go else (f"{schema}_away", schema)
                conn.execute(sa.text(f'ALTER SCHEMA "{names[0]}" RENAME TO "{names[1]}"'))

    def breaking_clock() -> int:
        calls["n"] += 1
        if calls["n"] == 2:  # 1: the advance's "now" for its gates; 2: the record's timestamp
            outage(True)
        return clock()

    store = RolloutStore.open(database_url, clock)
    try:
        step(store, Position.at("dual_write"))
        before = store.state()
        store.clock = breaking_clock
        with pytest.raises(StoreUnavailable):
            advance(store, None, None, actor="ana", expected_version=1)
        outage(False)
        store.clock = clock
        store.engine.dispose()
        assert store.state() == before
        assert verify_log(store.history(), store.state()) == ()
    finally:
        store.close()
        engine.dispose()
