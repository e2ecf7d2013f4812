"""``segshadow legacy run``: success writes output, sidecar, SQL and Redis; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segments.config import DATABASE_ENV, REDIS_ENV
from segments.events import load_event_log
from segments.outputs import read_assignments, read_meta
from segments.redisstore import RedisStore
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segshadow.cli import main
from tests.legacy_batch.brute import brute_legacy

BASE = 1_704_067_200_000


def _events(path: Path) -> Path:
    lines = [
        {"event_id": "1", "user_id": "ann", "event_time": BASE, "kind": "purchase", "amount": "60"},
        {"event_id": "2", "user_id": "ann", "event_time": BASE + 60_000, "kind": "purchase", "amount": "40.01"},
        {"event_id": "2", "user_id": "ann", "event_time": BASE + 60_000, "kind": "refund", "amount": "99"},
        {"event_id": "3", "user_id": "bo b", "event_time": BASE + 1, "kind": "view", "arrival_time": BASE + 400_000},
        {"event_id": "4", "user_id": "bo b", "event_time": BASE + 2, "kind": "view"},
        {"event_id": "5", "user_id": "bo b", "event_time": BASE + 3, "kind": "view"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n", encoding="utf-8")
    return path


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _no_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test names its stores explicitly (or wants the embedded defaults)."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    monkeypatch.delenv(REDIS_ENV, raising=False)


def test_run_writes_output_sidecar_sql_and_redis(
    database_url: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _events(tmp_path / "events.jsonl")
    out = tmp_path / "out" / "legacy.jsonl"
    argv = ["legacy", "run", "--events", str(events), "--rules", "clickstream", "--every", "5m", "--out", str(out)]
    code = _run([*argv, "--database-url", database_url, "--redis-url", redis_url])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "5 accepted" in captured.out and "1 duplicates" in captured.out and "1 rejected" in captured.out
    ruleset = load_ruleset("clickstream")
    written = read_assignments(out)
    assert written == brute_legacy(load_event_log(events).events, ruleset, 300_000)
    assert {a.segments for a in written} == {("high_value",), ("window_shopper",)}
    meta = read_meta(out)
    assert meta["ruleset"] == {"name": "clickstream", "version": 1, "digest": ruleset.digest}
    assert meta["every_ms"] == 300_000 and meta["as_of_count"] == 3
    assert meta["counts"]["duplicates"] == 1 and meta["counts"]["rejected_bad_json"] == 1
    with SqlStore.open(database_url) as store:
        assert store.read_assignments(ruleset.ref) == written
    with RedisStore.open(redis_url) as redis_store:
        last = max(a.as_of for a in written)
        in_redis = {u: s.segments for u, s in redis_store.scan_side("legacy") if s.segments}
    assert in_redis == {a.user_id: a.segments for a in written if a.as_of == last}


def test_embedded_database_by_default_and_stored_versions_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_servers_from_the_environment(monkeypatch)
    monkeypatch.delenv("SEGSHADOW_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "mine.yaml"
    rules.write_text(
        "name: mine\nversion: 3\nwindow: 10m\naggregates:\n  views: {op: count, kinds: [view]}\n"
        "segments:\n  - name: looker\n    when: {agg: views, op: '>=', value: 1}\n",
        encoding="utf-8",
    )
    events = _events(tmp_path / "events.jsonl")
    assert _run(["legacy", "run", "--events", str(events), "--rules", str(rules), "--out", "a.jsonl"]) == 0
    assert (tmp_path / "xdg" / "segshadow" / "segshadow.db").is_file()
    assert _run(["legacy", "run", "--events", str(events), "--rules", "mine@v3", "--out", "b.jsonl"]) == 0
    assert _run(["legacy", "run", "--events", str(events), "--rules", "mine", "--out", "c.jsonl"]) == 0
    first = read_assignments(tmp_path / "a.jsonl")
    assert first and first == read_assignments(tmp_path / "b.jsonl") == read_assignments(tmp_path / "c.jsonl")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("segshadow: error: ") and "Traceback" not in err
    return lines[0]


def _bad_rules(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nversion: 1\nwindow: 10m\naggregates: {}\nsegments: []\nsurprise: 1\n")
    return path


def _changed_clickstream(tmp_path: Path) -> Path:
    path = tmp_path / "clickstream.json"
    definition = dict(load_ruleset("clickstream").definition)
    definition["window"] = "11m"
    path.write_text(json.dumps(definition))
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_events", "No such file"),
        ("bad_rules_file", "rule set"),
        ("unknown_rules", "unknown rule set 'nope'"),
        ("changed_version", "versions are immutable"),
        ("unreachable_database", "cannot reach the database"),
        ("not_a_database_url", "not a database URL"),
        ("unreachable_redis", "cannot reach Redis"),
        ("bad_every", "bad duration"),
        ("zero_every", "--every must be positive"),
        ("no_valid_events", "no valid events"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    case: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_servers_from_the_environment(monkeypatch)
    events = _events(tmp_path / "events.jsonl")
    out = tmp_path / "legacy.jsonl"
    options = {
        "--events": str(events),
        "--rules": "clickstream",
        "--out": str(out),
        "--database-url": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--data-dir": str(tmp_path / "data"),
    }
    if case == "missing_events":
        options["--events"] = str(tmp_path / "absent.jsonl")
    elif case == "bad_rules_file":
        options["--rules"] = str(_bad_rules(tmp_path))
    elif case == "unknown_rules":
        options["--rules"] = "nope"
    elif case == "changed_version":
        options["--rules"] = str(_changed_clickstream(tmp_path))
    elif case == "unreachable_database":
        options["--database-url"] = "postgresql://nobody@127.0.0.1:1/nowhere"
    elif case == "not_a_database_url":
        options["--database-url"] = "just some words"
    elif case == "unreachable_redis":
        options["--redis-url"] = "redis://127.0.0.1:1/0"
    elif case == "bad_every":
        options["--every"] = "5 minutes"
    elif case == "zero_every":
        options["--every"] = "0"
    elif case == "no_valid_events":
        (tmp_path / "empty.jsonl").write_text("\n{}\n")
        options["--events"] = str(tmp_path / "empty.jsonl")
    if case == "changed_version":
        ok = dict(options, **{"--rules": "clickstream", "--out": str(tmp_path / "first.jsonl")})
        assert _run(["legacy", "run", *[x for kv in ok.items() for x in kv]]) == 0
        capsys.readouterr()
    code = _run(["legacy", "run", *[x for kv in options.items() for x in kv]])
    line = _one_error_line(capsys)
    assert code == 2
    assert expected in line
    assert not out.exists()


def test_run_keeps_the_legacy_reach_in_redis_within_the_bound(
    database_url: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each as-of's members go into the legacy side's per-minute and per-hour HyperLogLogs as the run writes;
    PFCOUNT of every bucket is within Redis' stated bound of the exact count from the assignments."""
    from segments.workloads import write_workload
    from tests.segments.test_reachstore import assert_legacy_reach_in_redis, legacy_reach_exact

    events = tmp_path / "events.jsonl"
    write_workload("clickstream", events, users=1500, minutes=20, seed=11)
    out = tmp_path / "legacy.jsonl"
    argv = ["legacy", "run", "--events", str(events), "--rules", "clickstream", "--every", "2m", "--out", str(out)]
    code = _run([*argv, "--database-url", database_url, "--redis-url", redis_url])
    assert code == 0, capsys.readouterr().err
    exact = legacy_reach_exact(read_assignments(out))
    assert max(len(users) for users in exact.values()) > 200  # large enough that the sketch is not trivially exact
    assert_legacy_reach_in_redis(redis_url, exact)
