"""Your legacy SQL (``legacy run --sql``): the team's query at each as-of over the arrival-cut view.

The example that reproduces the shipped ``clickstream`` rule set is held equal to the
harness's own query (and so to the brute-force oracle) on the clickstream workload, on
SQLite, PostgreSQL and PostgreSQL through the cockroachdb dialect; the ``>= 100`` variant
differs exactly at a net spend of 100.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from legacy_batch.job import run_legacy
from legacy_batch.sqlfile import LegacySql, statement_of, wrapped
from segments.errors import InputError
from segments.events import parse_line
from segments.outputs import read_assignments, read_meta
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from segshadow.cli import main
from tests.legacy_batch.brute import brute_legacy
from tests.legacy_batch.crdb import DIALECTS, with_dialect
from tests.legacy_batch.test_job import event_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "byo"
EXACT = EXAMPLES / "clickstream.sql"
GE100 = EXAMPLES / "clickstream_ge100.sql"
BASE = 1_704_067_200_000
MIN = 60_000
M5 = 5 * MIN
CLICK = load_ruleset("clickstream")


@pytest.fixture(params=DIALECTS)
def store(database_url: str, request: pytest.FixtureRequest) -> Iterator[SqlStore]:
    with SqlStore.open(with_dialect(database_url, request.param)) as opened:
        yield opened


def _write(path: Path, objs: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


def test_example_sql_equals_the_shipped_clickstream_rule_set(store: SqlStore, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_workload("clickstream", events, users=150, minutes=25, seed=3)
    ours = run_legacy(events, CLICK, M5, tmp_path / "rules.jsonl", store)
    theirs = run_legacy(events, CLICK, M5, tmp_path / "sql.jsonl", store, sql=LegacySql.read(EXACT))
    expected = read_assignments(tmp_path / "rules.jsonl")
    assert ours.assignments > 50  # the workload puts users in both segments: the equality is not vacuous
    assert {s for a in expected for s in a.segments} == {"high_value", "window_shopper"}
    assert read_assignments(tmp_path / "sql.jsonl") == expected
    assert theirs.as_ofs == ours.as_ofs
    assert store.read_assignments(CLICK.ref) == expected  # published in SQL under the declared rule set


def _spend_at_edges() -> list[dict[str, object]]:
    """Net spends of 99.999999, exactly 100 (two ways) and 100.000001 in the window; and one arrived too late."""
    t0 = BASE + MIN
    return [
        {"event_id": "a", "user_id": "below", "event_time": t0, "kind": "purchase", "amount": "99.999999"},
        {"event_id": "b", "user_id": "exact", "event_time": t0, "kind": "purchase", "amount": "100"},
        {"event_id": "c", "user_id": "netted", "event_time": t0, "kind": "purchase", "amount": "150"},
        {"event_id": "d", "user_id": "netted", "event_time": t0 + 1, "kind": "refund", "amount": "50"},
        {"event_id": "e", "user_id": "above", "event_time": t0, "kind": "purchase", "amount": "100.000001"},
        # arrives after the first as-of: the view must hide it there whatever the query does
        {"event_id": "f", "user_id": "late", "event_time": t0, "arrival_time": BASE + M5 + 1, "kind": "purchase",
         "amount": "500"},
    ]  # fmt: skip


def test_ge100_differs_exactly_at_a_net_spend_of_100(store: SqlStore, tmp_path: Path) -> None:
    events = _write(tmp_path / "edges.jsonl", _spend_at_edges())
    run_legacy(events, CLICK, M5, tmp_path / "exact.jsonl", store, sql=LegacySql.read(EXACT))
    run_legacy(events, CLICK, M5, tmp_path / "ge.jsonl", store, sql=LegacySql.read(GE100))
    exact = {(a.as_of, a.user_id): a.segments for a in read_assignments(tmp_path / "exact.jsonl")}
    ge = {(a.as_of, a.user_id): a.segments for a in read_assignments(tmp_path / "ge.jsonl")}
    valid = [p for p in (parse_line(json.dumps(o), n) for n, o in enumerate(_spend_at_edges(), 1))]
    oracle = {(a.as_of, a.user_id): a.segments for a in brute_legacy(valid, CLICK, M5)}  # type: ignore[arg-type]
    assert exact == oracle
    only_ge = {key: segs for key, segs in ge.items() if key not in exact}
    assert {user for _, user in only_ge} == {"exact", "netted"}
    assert set(only_ge.values()) == {("high_value",)}
    assert {key for key in exact if key[1] == "late"} == {(BASE + 2 * M5, "late")}  # seen only once arrived
    assert {k: v for k, v in ge.items() if k in exact} == exact


def test_the_sidecar_states_the_sql_and_the_declared_rule_set(store: SqlStore, tmp_path: Path) -> None:
    events = _write(tmp_path / "edges.jsonl", _spend_at_edges())
    sql = LegacySql.read(GE100)
    run_legacy(events, CLICK, M5, tmp_path / "out.jsonl", store, sql=sql)
    meta = read_meta(tmp_path / "out.jsonl")
    assert meta["ruleset"] == {"name": "clickstream", "version": 1, "source": "sql", "sql_sha256": sql.sha256}
    assert "digest" not in meta["ruleset"]  # nothing proves the query implements the rule set
    assert meta["logic"]["sql_sha256"] == sql.sha256 != LegacySql.read(EXACT).sha256
    assert meta["logic"]["declared_ruleset"] == "clickstream@v1"
    assert meta["logic"]["params"] == ["as_of", "window_start", "window_end", "window_ms"]


def test_the_view_is_cut_at_arrival_and_every_bind_parameter_is_bound(store: SqlStore, tmp_path: Path) -> None:
    """A query that ignores event time still sees only what had arrived by each as-of."""
    events = _write(tmp_path / "edges.jsonl", _spend_at_edges())
    sql_path = tmp_path / "all.sql"
    sql_path.write_text(
        "-- every user with any arrived event, tagged by the bound window\n"
        "WITH arrived AS (SELECT DISTINCT user_id FROM events)\n"
        "SELECT user_id, CASE WHEN :window_end = :as_of AND :as_of - :window_start = :window_ms "
        "THEN 'seen' ELSE 'wrong' END AS segment FROM arrived;\n",
        encoding="utf-8",
    )
    run_legacy(events, CLICK, M5, tmp_path / "out.jsonl", store, sql=LegacySql.read(sql_path))
    got = read_assignments(tmp_path / "out.jsonl")
    assert {a.segments for a in got} == {("seen",)}
    first = {a.user_id for a in got if a.as_of == BASE + M5}
    assert first == {"below", "exact", "netted", "above"}
    assert {a.user_id for a in got if a.as_of == BASE + 2 * M5} == first | {"late"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no statement"),
        ("-- only a comment\n", "holds no statement"),
        ("SELECT 1, 2; DELETE FROM segshadow_events", "one statement"),
        ("DELETE FROM segshadow_events", "must be a query"),
    ],
)
def test_a_file_that_is_not_one_query_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "q.sql"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        LegacySql.read(path)


def test_separators_inside_literals_and_a_trailing_semicolon_are_fine() -> None:
    assert statement_of("SELECT user_id, 'a;b' FROM events;  -- done\n", "q") == "SELECT user_id, 'a;b' FROM events"


def test_the_view_joins_a_query_that_has_its_own_with() -> None:
    text = wrapped("WITH x AS (SELECT 1) SELECT * FROM x")
    assert text.startswith("WITH events AS (SELECT event_id,")
    assert text.endswith(",\nx AS (SELECT 1) SELECT * FROM x")
    assert wrapped("with recursive r AS (SELECT 1) SELECT 1").startswith("WITH RECURSIVE events AS")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT user_id FROM events", "two columns"),
        ("SELECT user_id, no_such_column FROM events", "the database refused the legacy SQL"),
        ("SELECT user_id, NULL FROM events", "NULL user_id or segment"),
    ],
)
def test_a_query_that_fails_or_returns_the_wrong_shape_is_one_error(
    store: SqlStore, tmp_path: Path, query: str, message: str
) -> None:
    events = _write(tmp_path / "edges.jsonl", _spend_at_edges())
    path = tmp_path / "q.sql"
    path.write_text(query, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        run_legacy(events, CLICK, M5, tmp_path / "out.jsonl", store, sql=LegacySql.read(path))
    assert not (tmp_path / "out.jsonl").exists()
    assert store.publication(CLICK.ref) is None  # nothing published


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_legacy_run_sql(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    events = _write(tmp_path / "edges.jsonl", _spend_at_edges())
    out = tmp_path / "out.jsonl"
    args = ["legacy", "run", "--events", str(events), "--rules", "clickstream", "--out", str(out)]
    assert _main([*args, "--sql", str(GE100), "--database-url", database_url]) == 0
    printed = capsys.readouterr().out
    assert "SQL" in printed and LegacySql.read(GE100).sha256[:12] in printed
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT user_id FROM events", encoding="utf-8")
    assert _main([*args, "--sql", str(bad), "--database-url", database_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segshadow: error:") and "two columns" in err[0]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=event_files())
def test_example_sql_equals_the_rule_set_on_generated_files(store: SqlStore, tmp_path: Path, lines: list[str]) -> None:
    """Window edges, late arrivals, reused ids and user ids SQL cannot hold as they are (a NUL): still equal."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    run_legacy(path, CLICK, MIN, tmp_path / "rules.jsonl", store)
    run_legacy(path, CLICK, MIN, tmp_path / "sql.jsonl", store, sql=LegacySql.read(EXACT))
    assert read_assignments(tmp_path / "sql.jsonl") == read_assignments(tmp_path / "rules.jsonl")
