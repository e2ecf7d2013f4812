"""The legacy SQL job against the brute-force oracle, on SQLite and PostgreSQL; its writes and failures."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legacy_batch.job import LegacyWriterSink, as_sink, load_events, run_as_of, run_as_ofs, run_legacy
from legacy_batch.query import build_query
from segments.db import make_engine
from segments.errors import InputError, RuleSetError, RunFailed
from segments.events import KINDS, MONEY_KINDS, Event, format_micros, parse_line
from segments.outputs import Assignment, read_assignments, read_meta
from segments.redisstore import RedisStore
from segments.rules import RuleSet, load_ruleset, parse_ruleset_text
from segments.sqlstore import SqlStore
from tests.legacy_batch.brute import brute_legacy
from tests.legacy_batch.crdb import DIALECTS, with_dialect

BASE = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a multiple of every --every used here
MIN = 60_000
M5 = 5 * MIN
USERS = ["alice", "bob", "a:b", "<script>alert(1)</script>", "'; --", "😀", "u" * 128, "nul\x00"]
MERCHANTS = ["m1", "m2", "m3", "m4", "m5"]

PROBE = parse_ruleset_text(
    """
name: probe
version: 1
window: 7m
aggregates:
  views: {op: count, kinds: [view]}
  carts_3m: {op: count, kinds: [cart], window: 3m}
  spend: {op: sum, of: amount, kinds: {purchase: 2, refund: -3, txn: 1}}
  spend_1m: {op: sum, of: amount, kinds: [purchase], window: 1m}
  shops: {op: count_distinct, of: merchant, kinds: [txn, purchase, view]}
segments:
  - name: no_views
    when: {agg: views, op: "==", value: 0}
  - name: hot
    group: heat
    when: {any: [{agg: carts_3m, op: ">=", value: 2}, {agg: spend_1m, op: ">", value: 100}]}
  - name: warm
    group: heat
    when: {all: [{agg: spend, op: ">=", value: 50.5}, {agg: shops, op: ">=", value: 2}]}
""",
    "probe",
)
RULESETS = [load_ruleset("clickstream"), load_ruleset("risk"), PROBE]


@pytest.fixture(params=DIALECTS)
def store(database_url: str, request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    """A store on each backend, and on PostgreSQL also through the cockroachdb dialect."""
    with SqlStore.open(with_dialect(database_url, request.param)) as opened:
        assert opened.backend == ("cockroachdb" if request.param == "cockroachdb" else opened.backend)
        yield opened


def _line(event_id: str, user: str, minute: float, kind: str, amount: str | None = None, **extra: object) -> str:
    obj: dict[str, object] = {"event_id": event_id, "user_id": user, "kind": kind}
    obj["event_time"] = BASE + int(minute * MIN)
    if amount is not None:
        obj["amount"] = amount
    obj.update(extra)
    return json.dumps(obj)


def _write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _valid(lines: Sequence[str]) -> list[Event]:
    parsed = [parse_line(line, n) for n, line in enumerate(lines, start=1)]
    return [p for p in parsed if isinstance(p, Event)]


@st.composite
def event_files(draw: st.DrawFn) -> list[str]:
    """Events over up to 40 minutes of a few users: window edges, late arrivals (1 ms to 25 min),
    reused ids, a bad line. Dense enough that short windows differ from long ones."""
    count = draw(st.integers(1, 40))
    users = draw(st.lists(st.sampled_from(USERS), min_size=1, max_size=4, unique=True))
    minutes = draw(st.integers(2, 40))
    lines: list[str] = []
    for _ in range(count):
        event_time = BASE + draw(st.integers(0, minutes)) * MIN + draw(st.sampled_from([0, 0, 0, 1, -1, 30_000]))
        kind = draw(st.sampled_from(KINDS))
        obj: dict[str, object] = {
            "event_id": f"e{draw(st.integers(0, count))}",  # collisions: duplicates, often with another payload
            "user_id": draw(st.sampled_from(users)),
            "event_time": event_time,
            "kind": kind,
        }
        late = draw(st.sampled_from([0, 0, 0, 0, 1, 30_000, M5, 12 * MIN, 25 * MIN]))
        if late:
            obj["arrival_time"] = event_time + late
        if kind in MONEY_KINDS:
            obj["amount"] = format_micros(draw(st.integers(0, 300_000_000)))
        if draw(st.booleans()):
            obj["attrs"] = {"merchant": draw(st.sampled_from(MERCHANTS))}
        lines.append(json.dumps(obj, ensure_ascii=draw(st.booleans())))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), '{"event_id": "bad", "kind": "view"')
    return lines


# A quarter of the profile's examples (each is a legacy run on every backend): 25 under the default
# ``ci`` profile, 250 under ``HYPOTHESIS_PROFILE=slow`` (tests/conftest.py).
SQL_ORACLE_EXAMPLES = settings.default.max_examples // 4


@settings(
    max_examples=SQL_ORACLE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=event_files(), ruleset=st.sampled_from(RULESETS), every=st.sampled_from([MIN, M5, 7 * MIN]))
def test_legacy_output_equals_brute_force(
    store: SqlStore, tmp_path: Path, lines: list[str], ruleset: RuleSet, every: int
) -> None:
    events = _write(tmp_path / "events.jsonl", lines)
    out = tmp_path / "legacy.jsonl"
    report = run_legacy(events, ruleset, every, out, store)
    expected = brute_legacy(_valid(lines), ruleset, every)
    assert read_assignments(out) == expected
    assert store.read_assignments(ruleset.ref) == expected
    meta = read_meta(out)
    assert meta["assignments"] == len(expected) == report.assignments
    assert meta["counts"]["accepted"] + meta["counts"]["duplicates"] == len(_valid(lines))
    assert len(meta["timing_ms"]["run_per_as_of"]) == meta["as_of_count"]


def test_exact_money_through_sql(store: SqlStore, tmp_path: Path) -> None:
    """33.33 + 33.33 + 33.34 is exactly 100, not more; one more cent is high_value."""
    lines = [_line(f"{user}{n}", user, n, "purchase", amount) for user in ("even", "cent")
             for n, amount in enumerate(["33.33", "33.33", "33.34"])]
    lines.append(_line("cent-more", "cent", 3, "purchase", "0.01"))
    out = tmp_path / "legacy.jsonl"
    run_legacy(_write(tmp_path / "events.jsonl", lines), load_ruleset("clickstream"), M5, out, store)
    assert read_assignments(out) == [Assignment(BASE + M5, "cent", ("high_value",))]


def test_window_edges_and_arrival_cut_in_sql(store: SqlStore) -> None:
    """At t: an event at exactly t - 10 min is out, one at t is in; one arriving at t + 1 ms is unseen."""
    t = BASE + 4 * M5
    lines = [
        _line("out", "at_low_edge", (t - 10 * MIN - BASE) / MIN, "purchase", "150"),
        _line("in", "at_t", (t - BASE) / MIN, "purchase", "150"),
        _line("just-in", "just_inside", (t - 10 * MIN + 1 - BASE) / MIN, "purchase", "150"),
        _line("late", "arrives_after_t", (t - MIN - BASE) / MIN, "purchase", "150", arrival_time=t + 1),
        _line("on-time", "arrives_at_t", (t - MIN - BASE) / MIN, "purchase", "150", arrival_time=t),
    ]
    events = _valid(lines)
    load_events(store, events)
    ruleset = load_ruleset("clickstream")
    result = run_as_of(store, build_query(ruleset), t)
    expected = ["arrives_at_t", "at_t", "just_inside"]
    assert [a.user_id for a in result.assignments] == expected
    assert sorted(a.user_id for a in brute_legacy(events, ruleset, M5) if a.as_of == t) == expected


def test_each_aggregate_reads_its_own_window(store: SqlStore) -> None:
    """risk: 5 txns older than 1 min are not risk_high; a txn at exactly t - 1 min is out of (t - 1m, t]."""
    t = BASE + 4 * M5
    at = lambda ms: (t - ms - BASE) / MIN  # noqa: E731
    lines = [_line(f"old{n}", "old_burst", at(2 * MIN + n * 1000), "txn", "1") for n in range(5)]
    lines += [_line(f"edge{n}", "edge_burst", at(MIN - n * 1000), "txn", "1") for n in range(5)]
    lines += [_line(f"new{n}", "new_burst", at(MIN - 1 - n * 1000), "txn", "1") for n in range(5)]
    events = _valid(lines)
    load_events(store, events)
    ruleset = load_ruleset("risk")
    got = {a.user_id: a.segments for a in run_as_of(store, build_query(ruleset), t).assignments}
    assert got == {"old_burst": ("risk_low",), "edge_burst": ("risk_medium",), "new_burst": ("risk_high",)}
    assert got == {a.user_id: a.segments for a in brute_legacy(events, ruleset, M5) if a.as_of == t}


def test_rerunning_an_as_of_is_idempotent(store: SqlStore) -> None:
    lines = [_line(f"v{n}", "shopper", n, "view") for n in range(3)] + [_line("p", "buyer", 1, "purchase", "101")]
    load_events(store, _valid(lines))
    ruleset = load_ruleset("clickstream")
    query = build_query(ruleset)
    first = run_as_of(store, query, BASE + M5)
    stored = store.read_assignments(ruleset.ref)
    again = run_as_of(store, query, BASE + M5)
    assert again.assignments == first.assignments
    assert store.read_assignments(ruleset.ref) == stored == list(first.assignments)
    assert [(r.as_of, r.users) for r in store.legacy_runs(ruleset.ref)] == [(BASE + M5, 2)]


def test_one_set_based_query_per_as_of(database_url: str) -> None:
    """Not a loop over users: each as-of reads the events table with exactly one statement."""
    with SqlStore.open(database_url) as store:
        load_events(store, _valid([_line(f"e{n}", f"user{n}", n, "view") for n in range(30)]))
        reads: list[str] = []

        def count(conn: object, cursor: object, statement: str, *args: object) -> None:
            if "segshadow_events" in statement:
                reads.append(statement)

        sa.event.listen(store.engine, "before_cursor_execute", count)
        as_ofs = [BASE + k * M5 for k in range(1, 8)]
        results = list(run_as_ofs(store, load_ruleset("clickstream"), as_ofs))
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert len(results) == len(as_ofs)
    assert len(reads) == len(as_ofs)
    assert all("GROUP BY" in statement for statement in reads)


def test_a_new_run_replaces_the_previous_runs_events_and_assignments(store: SqlStore, tmp_path: Path) -> None:
    ruleset = load_ruleset("clickstream")
    first = [_line("a", "first_run_user", 0, "purchase", "500")]
    second = [_line("b", "second_run_user", 20, "purchase", "500"), _line("c", "second_run_user", 21, "view")]
    run_legacy(_write(tmp_path / "one.jsonl", first), ruleset, M5, tmp_path / "one.out", store)
    run_legacy(_write(tmp_path / "two.jsonl", second), ruleset, M5, tmp_path / "two.out", store)
    assert store.count_events() == 2
    expected = brute_legacy(_valid(second), ruleset, M5)
    assert store.read_assignments(ruleset.ref) == expected == read_assignments(tmp_path / "two.out")


def test_assignments_reach_the_redis_legacy_namespace(store: SqlStore, tmp_path: Path, redis_url: str) -> None:
    lines = [_line("p1", "buyer", 0, "purchase", "150"), _line("p2", "later :buyer", 8, "purchase", "150")]
    lines += [_line(f"v{n}", "<b>shopper</b>", 8 + n, "view") for n in range(3)]
    ruleset = load_ruleset("clickstream")
    out = tmp_path / "legacy.jsonl"
    with RedisStore.open(redis_url) as redis_store:
        sink = as_sink(redis_store)
        assert isinstance(sink, LegacyWriterSink)
        run_legacy(_write(tmp_path / "events.jsonl", lines), ruleset, M5, out, store, sink)
        written = read_assignments(out)
        last = max(a.as_of for a in written)
        in_redis = {user: s.segments for user, s in redis_store.scan_side("legacy") if s.segments}
        times = {s.time for _, s in redis_store.scan_side("legacy") if s.segments}
    assert in_redis == {a.user_id: a.segments for a in written if a.as_of == last}
    assert in_redis and times == {last}


class _FailingSink:
    """A sink whose server goes away after the first as-of."""

    def __init__(self) -> None:
        self.calls = 0

    def write_assignments(self, as_of: int, rows: Sequence[tuple[str, frozenset[str]]]) -> None:
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("sink went away")


def test_an_interrupted_run_leaves_no_output_that_looks_complete(store: SqlStore, tmp_path: Path) -> None:
    events = _write(tmp_path / "events.jsonl", [_line(f"p{n}", "buyer", 3 * n, "purchase", "150") for n in range(5)])
    out = tmp_path / "legacy.jsonl"
    ruleset = load_ruleset("clickstream")
    run_legacy(events, ruleset, M5, out, store)
    with pytest.raises(ConnectionError):
        run_legacy(events, ruleset, M5, out, store, _FailingSink())
    with pytest.raises(InputError, match="not a complete segshadow output"):
        read_meta(out)
    assert not (tmp_path / "legacy.jsonl.partial").exists()


class _LockHolder:
    """Another session holding the write lock of the staging table from the ``n``-th as-of on: SQLite
    ``BEGIN EXCLUSIVE`` on the file, PostgreSQL ``LOCK TABLE ... ACCESS EXCLUSIVE``."""

    def __init__(self, url: str, at: int) -> None:
        self.url, self.at, self.conn = url, at, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "as_of" and done == self.at and self.conn is None:
            engine = make_engine(self.url)
            self.conn = engine.connect()
            if engine.dialect.name == "sqlite":
                self.conn.exec_driver_sql("BEGIN EXCLUSIVE")
            else:
                self.conn.begin()
                self.conn.exec_driver_sql("LOCK TABLE segshadow_legacy_staged_assignments IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()


def _with_timeouts(url: str) -> str:
    return url + ("&" if "?" in url else "?") + "lock_timeout=300ms&busy_timeout=300ms"


def test_a_run_that_fails_part_way_publishes_nothing_and_the_previous_run_stays(
    database_url: str, tmp_path: Path
) -> None:
    """A lock held past the timeout at the 2nd as-of: RunFailed naming it and the run that stays;
    the published rows (what the router's SQL fallback reads) are the previous complete run's."""
    from rollout.router import LegacySqlReader

    ruleset = load_ruleset("clickstream")
    first = _write(tmp_path / "one.jsonl", [_line(f"p{n}", "buyer", 3 * n, "purchase", "150") for n in range(5)])
    second = _write(tmp_path / "two.jsonl", [_line(f"q{n}", "other", 3 * n, "purchase", "150") for n in range(5)])
    url = _with_timeouts(database_url)
    holder = _LockHolder(url, at=2)
    with SqlStore.open(url) as store:
        run_legacy(first, ruleset, M5, tmp_path / "one.out", store)
        published = store.publication(ruleset.ref)
        assert published is not None
        before = store.read_assignments(ruleset.ref)
        try:
            with pytest.raises(RunFailed) as caught:
                run_legacy(second, ruleset, M5, tmp_path / "two.out", store, on_progress=holder)
        finally:
            holder.release()
        message = str(caught.value)
        assert caught.value.exit_code == 1 and "\n" not in message
        assert "exceeded 300ms" in message and "at as-of" in message and "(3 of" in message, message
        assert f"nothing of this run is published; the previous complete run (id {published.run_id[:12]}" in message
        assert store.read_assignments(ruleset.ref) == before and store.publication(ruleset.ref) == published
        assert {a.user_id for a in before} == {"buyer"}
        assert LegacySqlReader(store.engine, ruleset.ref).latest("buyer") == (("high_value",), before[-1].as_of)
        assert LegacySqlReader(store.engine, ruleset.ref).latest("other") == ((), before[-1].as_of)
        assert not (tmp_path / "two.out").exists() and not (tmp_path / "two.out.partial").exists()
        run_legacy(second, ruleset, M5, tmp_path / "two.out", store)
        assert {a.user_id for a in store.read_assignments(ruleset.ref)} == {"other"}
        assert store.staged_rows(ruleset.ref) == 0


def test_an_event_with_absurd_times_is_dead_lettered_and_the_schedule_stays_small(
    store: SqlStore, tmp_path: Path
) -> None:
    lines = [_line("p", "buyer", 0, "purchase", "150"), _line("v", "u", 1, "view", arrival_time=1)]
    lines.append('{"event_id":"a3","user_id":"u3","event_time":"9999-12-31T23:59:59.999Z","kind":"view"}')
    events = _write(tmp_path / "events.jsonl", lines)
    report = run_legacy(events, load_ruleset("clickstream"), M5, tmp_path / "o", store)
    assert report.counts["rejected_time_out_of_range"] == 2 and report.counts["accepted"] == 1
    assert len(report.as_ofs) == 2


def test_a_file_without_valid_events_is_refused(store: SqlStore, tmp_path: Path) -> None:
    out = tmp_path / "legacy.jsonl"
    with pytest.raises(InputError, match="no valid events"):
        run_legacy(_write(tmp_path / "bad.jsonl", ["nope", "[]"]), load_ruleset("risk"), M5, out, store)
    assert not out.exists()


def test_a_changed_definition_under_a_stored_version_is_refused(store: SqlStore, tmp_path: Path) -> None:
    events = _write(tmp_path / "events.jsonl", [_line("p", "buyer", 0, "purchase", "150")])
    run_legacy(events, PROBE, M5, tmp_path / "one.out", store)
    changed = parse_ruleset_text(json.dumps({**PROBE.definition, "window": "8m"}), "changed probe")
    with pytest.raises(RuleSetError, match="versions are immutable"):
        run_legacy(events, changed, M5, tmp_path / "two.out", store)


@pytest.mark.parametrize("ruleset", RULESETS, ids=lambda r: r.name)
def test_the_query_compiles_for_cockroachdb(ruleset: RuleSet) -> None:
    engine = make_engine("cockroachdb://root@127.0.0.1:26257/defaultdb", check=False)
    sql = str(build_query(ruleset).statement.compile(dialect=engine.dialect))
    engine.dispose()
    assert "GROUP BY segshadow_events.user_id" in sql
    assert ("count(DISTINCT" in sql) == any(a.op == "count_distinct" for a in ruleset.aggregates)
