"""The durable SQL store on SQLite and PostgreSQL, and its DDL for CockroachDB."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from segments.db import make_engine
from segments.errors import RuleSetError, UsageError
from segments.events import Event, Rejection, parse_line
from segments.outputs import Assignment, Transition
from segments.rules import compile_ruleset, load_ruleset
from segments.sqlstore import LegacyRun, SqlStore, from_sql_text, metadata, to_sql_text
from tests.legacy_batch.crdb import DIALECTS, with_dialect

HOSTILE_IDS = [
    ":",
    "a:b:c",
    " spaced out ",
    "'; DROP TABLE segshadow_events; --",
    '"double" \\ back',
    "<script>alert(1)</script>",
    "😀 👨‍👩‍👧",
    "%41*?[x]",
    "x" * 128,
    "é" * 128,
    "🙂" * 128,
    "nul\x00inside",
    "\x1bstarts with the escape mark",
    "lone \ud800 surrogate",
]


@pytest.fixture(params=DIALECTS)
def store(database_url: str, request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """A store on each backend, and on PostgreSQL also through the cockroachdb dialect."""
    with SqlStore.open(with_dialect(database_url, request.param), clock=lambda: 1_700_000_000_000) as opened:
        assert opened.backend == ("cockroachdb" if request.param == "cockroachdb" else opened.backend)
        yield opened


def _event(line: str, seq: int) -> Event:
    parsed = parse_line(line, seq)
    assert isinstance(parsed, Event), parsed
    return parsed


def test_create_all_twice_keeps_data(store: SqlStore) -> None:
    store.insert_events([_event('{"event_id":"e","user_id":"u","event_time":1,"kind":"view"}', 1)])
    store.create_all()
    assert store.count_events() == 1


def test_ruleset_versions_latest_by_default_and_immutable(store: SqlStore) -> None:
    v1 = load_ruleset("clickstream")
    changed = dict(v1.definition)
    changed["description"] = "version two"
    v2 = compile_ruleset({**changed, "version": 2})
    store.register_ruleset(v1)
    store.register_ruleset(v1)  # the same definition again is a no-op
    store.register_ruleset(v2)
    assert store.load_ruleset("clickstream").version == 2
    assert store.load_ruleset("clickstream", 1).digest == v1.digest
    assert store.load_ruleset("clickstream", 1) == v1
    assert [(r.name, r.version) for r in store.stored_rulesets()] == [("clickstream", 1), ("clickstream", 2)]
    tampered = compile_ruleset({**changed, "version": 1})
    with pytest.raises(RuleSetError, match="versions are immutable"):
        store.register_ruleset(tampered)
    assert store.load_ruleset("clickstream", 1).digest == v1.digest
    with pytest.raises(RuleSetError, match="no stored rule set risk"):
        store.load_ruleset("risk")


def test_first_arrival_wins_even_with_a_changed_payload(store: SqlStore) -> None:
    first = _event('{"event_id":"e1","user_id":"u","event_time":1000,"kind":"purchase","amount":"5"}', 1)
    again = _event('{"event_id":"e1","user_id":"v","event_time":2000,"kind":"purchase","amount":"500"}', 2)
    other = _event('{"event_id":"e2","user_id":"u","event_time":3000,"kind":"view"}', 3)
    assert store.insert_events([first, again]) == 1
    assert store.insert_events([again, other]) == 1
    assert store.read_events() == [first, other]


def test_events_round_trip_exactly(store: SqlStore) -> None:
    lines = [
        '{"event_id":"big","user_id":"u","event_time":"2024-01-01T00:00:00.001Z","kind":"txn",'
        '"amount":"999999999999.999999","arrival_time":"2024-01-01T00:05:00Z","attrs":{"merchant":"m1","x":0.1}}',
        '{"event_id":"tiny","user_id":"u","event_time":5,"kind":"refund","amount":0.000001,"extra":{"k":[1,2]}}',
        '{"event_id":"view","user_id":"w","event_time":7,"kind":"view","amount":0,"attrs":{"merchant":42}}',
        '{"event_id":"cart","user_id":"w","event_time":7,"kind":"cart","attrs":{"n":12345678901234567890.5}}',
    ]
    events = [_event(line, n) for n, line in enumerate(lines, start=1)]
    store.insert_events(events)
    back = store.read_events()
    assert sorted(back) == sorted(events)
    assert {e.event_id: e.amount for e in back}["big"] == Decimal("999999999999.999999")
    assert store.arrival_span() == (5, events[0].arrival_time)


def test_replace_events_keeps_first_arrivals_and_drops_what_was_there(store: SqlStore) -> None:
    store.insert_events([_event('{"event_id":"old","user_id":"u","event_time":1,"kind":"view"}', 1)])
    lines = [
        '{"event_id":"a","user_id":"u","event_time":10,"kind":"view"}',
        '{"event_id":"b","user_id":"nul\\u0000","event_time":11,"kind":"txn","amount":"2.5"}',
        '{"event_id":"a","user_id":"v","event_time":12,"kind":"cart"}',
        '{"event_id":"c","user_id":"w","event_time":13,"kind":"view","attrs":{"x":1.50}}',
    ]
    events = [_event(line, n) for n, line in enumerate(lines, start=1)]
    progress: list[int] = []
    assert store.replace_events(events, batch=2, on_batch=progress.append) == 3
    assert progress == [2, 4]
    assert store.read_events() == [events[0], events[1], events[3]]
    indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("segshadow_events")}
    assert {"ix_segshadow_events_event_time", "ix_segshadow_events_arrival_time"} <= indexes


def test_replace_events_rebuilds_an_index_a_dead_load_left_missing(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_segshadow_events_arrival_time"))
    store.replace_events([_event('{"event_id":"a","user_id":"u","event_time":1,"kind":"view"}', 1)])
    indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("segshadow_events")}
    assert "ix_segshadow_events_arrival_time" in indexes


def test_clear_events_empties_the_table(store: SqlStore) -> None:
    store.insert_events([_event('{"event_id":"e","user_id":"u","event_time":1,"kind":"view"}', 1)])
    store.clear_events()
    assert store.count_events() == 0
    assert store.arrival_span() is None


def test_hostile_user_ids_round_trip_through_every_table(store: SqlStore) -> None:
    events = [
        Event(f"ev-{user}", user, 1000 + n, "view", 0, 1000 + n, user, n)
        for n, user in enumerate(HOSTILE_IDS, start=1)
    ]
    assert store.insert_events(events) == len(HOSTILE_IDS)
    assert sorted(store.read_events()) == sorted(events)
    rows = [Assignment(60_000, user, ("b", "a")) for user in HOSTILE_IDS]
    store.replace_assignments("r@v1", 60_000, rows)
    stored = store.read_assignments("r@v1")
    assert sorted(a.user_id for a in stored) == sorted(HOSTILE_IDS)
    assert {a.segments for a in stored} == {("a", "b")}
    transitions = [Transition(user, ("s",), 5, 1, 6, "event") for user in HOSTILE_IDS]
    store.insert_transitions(transitions, "r@v1")
    assert store.read_transitions("r@v1") == sorted(transitions)
    for user in HOSTILE_IDS:
        assert store.read_transitions("r@v1", user) == [Transition(user, ("s",), 5, 1, 6, "event")]
    rejections = [Rejection("bad_amount", f"detail {u}", n, f"raw {u}", u, u) for n, u in enumerate(HOSTILE_IDS)]
    store.insert_dead_letters("ingest", rejections)
    assert [d.rejection for d in store.read_dead_letters("ingest")] == rejections
    assert store.count_events() == len(HOSTILE_IDS)  # the table survived its hostile neighbours


@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=40), st.text(max_size=40))
def test_sql_text_encoding_is_a_storable_injection(a: str, b: str) -> None:
    for text in (a, b):
        stored = to_sql_text(text)
        assert from_sql_text(stored) == text
        assert "\x00" not in stored
        stored.encode("utf-8")
    assert (to_sql_text(a) == to_sql_text(b)) == (a == b)


def test_replace_assignments_is_idempotent_per_as_of(store: SqlStore) -> None:
    first = [Assignment(300_000, "u1", ("high_value",)), Assignment(300_000, "u2", ("window_shopper",))]
    later = [Assignment(600_000, "u1", ("high_value",))]
    run = LegacyRun("c@v1", 300_000, 10, 20, 2, 10)
    store.replace_assignments("c@v1", 300_000, first, run)
    store.replace_assignments("c@v1", 600_000, later)
    store.replace_assignments("c@v1", 300_000, first, run)
    assert store.read_assignments("c@v1") == first + later
    assert store.legacy_runs("c@v1") == [run]
    replaced = [Assignment(300_000, "u3", ("high_value",))]
    store.replace_assignments("c@v1", 300_000, replaced)
    assert store.read_assignments("c@v1", 300_000) == replaced
    assert store.read_assignments("c@v1", 600_000) == later
    assert store.read_assignments("other@v1") == []
    store.clear_legacy("c@v1")
    assert store.read_assignments("c@v1") == [] and store.legacy_runs("c@v1") == []


def test_replace_assignments_refuses_a_foreign_as_of_or_a_repeated_user(store: SqlStore) -> None:
    with pytest.raises(UsageError):
        store.replace_assignments("c@v1", 300_000, [Assignment(600_000, "u", ("a",))])
    with pytest.raises(UsageError):
        store.replace_assignments("c@v1", 300_000, [Assignment(300_000, "u", ("a",))] * 2)
    assert store.read_assignments("c@v1") == []


def test_transitions_insert_twice_stores_once(store: SqlStore) -> None:
    batch = [
        Transition("u", ("high_value",), 1000, 1, 1001, "event"),
        Transition("u", (), 601_000, 1, 601_001, "expiry"),
        Transition("u", ("high_value",), 1000, 2, 700_000, "correction"),
    ]
    assert store.insert_transitions(batch, "c@v1") == 3
    assert store.insert_transitions(batch, "c@v1") == 0
    assert store.read_transitions("c@v1") == sorted(batch)
    assert store.read_transitions("risk@v1") == []


def test_dead_letters_are_idempotent_per_source_seq_reason(store: SqlStore) -> None:
    rejections = [Rejection("bad_json", "not valid JSON", 3, "{"), Rejection("too_late", "late", 3, "{}", "e", "u")]
    assert store.insert_dead_letters("stream", rejections) == 2
    assert store.insert_dead_letters("stream", rejections) == 0
    assert store.insert_dead_letters("ingest", rejections[:1]) == 1
    stored = store.read_dead_letters("stream")
    assert [d.rejection for d in stored] == rejections
    assert {d.recorded_at for d in stored} == {1_700_000_000_000}
    with pytest.raises(UsageError):
        store.insert_dead_letters("elsewhere", rejections)


def test_cockroachdb_urls_get_the_cockroachdb_dialect_and_the_ddl_compiles() -> None:
    engine = make_engine("cockroachdb://root@127.0.0.1:26257/defaultdb?sslmode=disable", check=False)
    dialect = engine.dialect
    assert dialect.name == "cockroachdb"
    for table in metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert table.name in ddl and "PRIMARY KEY" in ddl
        for index in table.indexes:
            assert index.name is not None and index.name in str(CreateIndex(index).compile(dialect=dialect))
    events_ddl = str(CreateTable(metadata.tables["segshadow_events"]).compile(dialect=dialect))
    assert "amount_micros BIGINT" in events_ddl
    insert = postgresql.insert(metadata.tables["segshadow_events"]).on_conflict_do_nothing()
    assert "ON CONFLICT DO NOTHING" in str(insert.compile(dialect=dialect))
    engine.dispose()


def test_money_columns_are_integers_on_every_backend(database_url: str) -> None:
    with SqlStore.open(database_url) as store:
        inspector = sa.inspect(store.engine)
        columns = {c["name"]: c["type"] for c in inspector.get_columns("segshadow_events")}
    assert isinstance(columns["amount_micros"], sa.Integer)


# ---- a legacy run and a replay's transitions are published at once --------------------------------


def _snapshot(as_of: int, *users: str) -> list[Assignment]:
    return [Assignment(as_of, user, ("s",)) for user in users]


def test_a_staged_legacy_run_is_invisible_until_published_then_replaces_the_previous_whole(store: SqlStore) -> None:
    first = store.begin_legacy_run("c@v1")
    run = LegacyRun("c@v1", 300_000, 1, 2, 2, 1)
    store.stage_assignments(first, "c@v1", 300_000, _snapshot(300_000, "a", "b"), run)
    store.stage_assignments(first, "c@v1", 600_000, _snapshot(600_000, "a"))
    assert store.read_assignments("c@v1") == [] and store.publication("c@v1") is None
    published = store.publish_legacy_run(first, "c@v1", 2)
    assert (published.run_id, published.as_ofs, published.assignments) == (first, 2, 3)
    assert store.read_assignments("c@v1") == _snapshot(300_000, "a", "b") + _snapshot(600_000, "a")
    assert [r.as_of for r in store.legacy_runs("c@v1")] == [300_000] and store.staged_rows("c@v1") == 0

    second = store.begin_legacy_run("c@v1")
    store.stage_assignments(second, "c@v1", 900_000, _snapshot(900_000, "z"))
    assert store.read_assignments("c@v1")[-1].as_of == 600_000, "staged rows stay unseen"
    assert store.publication("c@v1") == published
    store.publish_legacy_run(second, "c@v1", 1)
    assert store.read_assignments("c@v1") == _snapshot(900_000, "z") and store.legacy_runs("c@v1") == []
    assert store.publish_legacy_run(second, "c@v1", 1).run_id == second, "publishing again changes nothing"
    assert store.read_assignments("c@v1") == _snapshot(900_000, "z")


def test_a_new_run_discards_what_an_unfinished_run_of_its_rule_set_staged(store: SqlStore) -> None:
    abandoned = store.begin_legacy_run("c@v1")
    store.stage_assignments(abandoned, "c@v1", 300_000, _snapshot(300_000, "a", "b"))
    other = store.begin_legacy_run("r@v1")
    store.stage_assignments(other, "r@v1", 300_000, _snapshot(300_000, "x"))
    assert store.staged_rows("c@v1") == 2
    store.begin_legacy_run("c@v1")
    assert store.staged_rows("c@v1") == 0 and store.staged_rows("r@v1") == 1


def test_staged_checks_match_replace_assignments(store: SqlStore) -> None:
    run = store.begin_legacy_run("c@v1")
    with pytest.raises(UsageError):
        store.stage_assignments(run, "c@v1", 300_000, [Assignment(600_000, "u", ("a",))])
    with pytest.raises(UsageError):
        store.stage_assignments(run, "c@v1", 300_000, _snapshot(300_000, "u", "u"))


def test_a_replays_transitions_are_published_at_once_replacing_the_previous_replays(store: SqlStore) -> None:
    old = [Transition("u", ("s",), 5, 1, 6, "event"), Transition("v", ("s",), 7, 1, 8, "event")]
    store.insert_transitions(old, "c@v1")
    run = store.begin_transitions("c@v1")
    new = [Transition("w", ("s",), 9, 1, 10, "event")]
    assert store.insert_transitions(new, "c@v1", run) == 1
    assert store.insert_transitions(new, "c@v1", run) == 0, "a retried bundle stages nothing new"
    assert store.read_transitions("c@v1") == old, "staged transitions stay unseen"
    assert store.publish_transitions(run, "c@v1") == 1
    assert store.read_transitions("c@v1") == new


def test_a_new_replay_discards_what_an_unfinished_replay_staged(store: SqlStore) -> None:
    abandoned = store.begin_transitions("c@v1")
    store.insert_transitions([Transition("u", ("s",), 5, 1, 6, "event")], "c@v1", abandoned)
    run = store.begin_transitions("c@v1")
    store.publish_transitions(abandoned, "c@v1")
    assert store.read_transitions("c@v1") == [] and run != abandoned
