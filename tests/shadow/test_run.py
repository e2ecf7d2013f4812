"""The main job end to end on real servers and on the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from segments.config import DATABASE_ENV, REDIS_ENV
from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import write_workload
from segshadow.cli import main
from shadow.run import ShadowPlan, run_shadow
from streaming.eventlog import log_lines

SPEC_KEYS = {"pairs", "agree", "mismatch", "by_cause", "per_segment"}


@pytest.mark.parametrize("workload", ["clickstream", "risk"])
def test_shadow_run_on_real_servers_has_no_unexplained_mismatch(
    workload: str, database_url: str, redis_url: str, tmp_path: Path
):
    """Both workloads, with late arrivals and too-late drops: every difference is explained."""
    events = tmp_path / "input.jsonl"
    write_workload(workload, events, users=300, minutes=25, seed=3, late_share=0.1)
    plan = ShadowPlan(load_ruleset(workload), tmp_path / "run", 300_000, GateParams(), shards=3)
    report = run_shadow(plan, events, database_url, redis_url)

    parity = json.loads((plan.out / "parity.json").read_text())
    assert set(parity) >= SPEC_KEYS
    assert parity["pairs"] > 50 and parity["agree"] + parity["mismatch"] == parity["pairs"]
    assert parity["by_cause"]["unexplained"] == 0, parity["by_cause"]
    assert sum(parity["by_cause"].values()) == parity["mismatch"]
    assert parity["mismatch"] > 0, "late arrivals should make legacy and the stream differ somewhere"
    mismatches = (plan.out / "mismatches.jsonl").read_text().splitlines()
    assert len(mismatches) == parity["mismatch"]
    assert report.counts["ingest"]["journaled"] == 0
    assert report.counts["ingest"]["shadowed"] == report.counts["ingest"]["accepted"]
    for name in ("report.html", "summary.md", "legacy.jsonl", "stream.jsonl", "events.jsonl"):
        assert (plan.out / name).stat().st_size > 0, name
    if workload == "risk":
        assert parity["ground_truth"] is not None


def test_main_job_command_runs_on_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """README's main command with no server configured: SQLite in the run directory, an embedded Valkey."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    monkeypatch.delenv(REDIS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["shadow", "run", "--workload", "clickstream", "--users", "150", "--minutes", "15", "--out", str(out)])
    assert exit_info.value.code in (0, None)
    assert (out / "segshadow.db").exists()
    assert json.loads((out / "parity.json").read_text())["by_cause"]["unexplained"] == 0


def test_shadow_run_refuses_an_unreadable_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Bad usage exits 2 with one clear line, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["shadow", "run", "--events", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("segshadow: error:") and "Traceback" not in "\n".join(err)


class _Stop(Exception):
    """Planted failure of a shadow run's legacy side."""


def test_a_shadow_run_failing_in_its_legacy_side_leaves_the_previous_complete_run_published(
    database_url: str, redis_url: str, tmp_path: Path
):
    """The legacy side stops at its 2nd as-of: the rows the router's SQL fallback reads are still the
    previous complete run's, not emptied by the new run before it published anything."""
    from legacy_batch.job import run_legacy
    from rollout.router import LegacySqlReader
    from segments.sqlstore import SqlStore

    ruleset = load_ruleset("clickstream")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    write_workload("clickstream", first, users=40, minutes=20, seed=5)
    write_workload("clickstream", second, users=40, minutes=20, seed=6)

    def stop_at_second_as_of(stage: str, done: int, total: int) -> None:
        if stage == "legacy" and done == 2:
            raise _Stop

    with SqlStore.open(database_url) as store:
        run_legacy(first, ruleset, 300_000, tmp_path / "first.out", store)
        published = store.publication(ruleset.ref)
        before = store.read_assignments(ruleset.ref)
    assert published is not None and before
    user, last = before[-1].user_id, before[-1].as_of
    plan = ShadowPlan(ruleset, tmp_path / "run", 300_000, GateParams(), shards=2)
    with pytest.raises(_Stop):
        run_shadow(plan, second, database_url, redis_url, progress=stop_at_second_as_of)
    with SqlStore.open(database_url) as store:
        assert store.publication(ruleset.ref) == published
        assert store.read_assignments(ruleset.ref) == before
        assert LegacySqlReader(store.engine, ruleset.ref).latest(user) == (tuple(sorted(before[-1].segments)), last)
    assert (plan.out / "INCOMPLETE").exists()


def test_a_rule_sets_event_time_range_dead_letters_an_event_alike_on_both_sides(
    database_url: str, redis_url: str, tmp_path: Path
):
    """``event_times: {max_ahead: 1m}``: an event 5 minutes ahead of its arrival (inside the default
    range, outside this one) is dead-lettered ``time_out_of_range`` at ingest, so neither the SQL events
    table (legacy) nor the Redis Stream (the stream) holds it and the two sides agree on it."""
    from segments.rules import compile_ruleset
    from segments.sqlstore import SqlStore

    definition = dict(load_ruleset("clickstream").definition)
    ruleset = compile_ruleset({**definition, "event_times": {"max_ahead": "1m"}})
    base = 1_704_067_200_000
    lines = [
        {"event_id": f"v{n}", "user_id": f"u{n % 4}", "event_time": base + n * 30_000, "kind": "view"}
        for n in range(24)
    ]
    ahead = base + 5 * 60_000
    lines.append(
        {"event_id": "odd", "user_id": "odd", "event_time": ahead + 5 * 60_000, "arrival_time": ahead,
         "kind": "purchase", "amount": "500"}
    )
    events = tmp_path / "input.jsonl"
    events.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    plan = ShadowPlan(ruleset, tmp_path / "run", 60_000, GateParams(), shards=2)
    report = run_shadow(plan, events, database_url, redis_url)

    dead = [json.loads(line) for line in (plan.out / "ingest.deadletter.jsonl").read_text().splitlines()]
    assert [(d["reason"], json.loads(d["raw"])["event_id"]) for d in dead] == [("time_out_of_range", "odd")], dead
    assert report.counts["ingest"]["accepted"] == 24
    assert report.counts["stream"]["lines"] == 24 and report.counts["stream"]["rejected"] == 0
    assert "odd" not in (plan.out / "events.jsonl").read_text()
    assert "odd" not in (plan.out / "legacy.jsonl").read_text() and "odd" not in (plan.out / "stream.jsonl").read_text()
    with SqlStore.open(database_url) as store:
        assert store.count_events() == 24
    assert report.parity.by_cause["unexplained"] == 0


def test_a_journal_left_by_a_killed_earlier_run_is_not_replayed_into_a_fresh_run(
    database_url: str, redis_url: str, tmp_path: Path
):
    """An earlier run killed while Redis was down left ``journal.jsonl`` in the run directory; the next run
    in that directory starts a fresh journal, so the old run's events never reach its shadow log."""
    import redis

    events = tmp_path / "input.jsonl"
    write_workload("clickstream", events, users=20, minutes=10, seed=8)
    plan = ShadowPlan(load_ruleset("clickstream"), tmp_path / "run", 300_000, GateParams(), shards=2)
    plan.out.mkdir()
    ghost = {"event_id": "ghost", "user_id": "ghost", "event_time": 1_704_067_200_000, "kind": "purchase",
             "amount": "500"}
    entry = f"{ghost['event_time']}-1 1 {json.dumps(ghost)}"  # the dual-writer's journal line: id, seq, line
    (plan.out / "journal.jsonl").write_text(entry + "\n", encoding="utf-8")
    report = run_shadow(plan, events, database_url, redis_url)

    accepted = report.counts["ingest"]["accepted"]
    assert report.counts["ingest"]["journal_pending"] == 0 and report.counts["stream"]["lines"] == accepted
    client = redis.Redis.from_url(redis_url)
    try:
        logged: Any = client.xrange(f"segshadow:shadow:{plan.ruleset.name}:events")
        assert len(list(log_lines(logged))) == accepted
    finally:
        client.close()
    assert "ghost" not in (plan.out / "stream.jsonl").read_text()
    assert (plan.out / "journal.jsonl").read_text() == ""


def test_the_legacy_side_of_a_shadow_run_keeps_its_reach_in_redis(database_url: str, redis_url: str, tmp_path: Path):
    """``run_legacy_side`` PFADDs each as-of's members as it writes them (before any comparison adds evidence)."""
    from segments.events import load_event_log
    from segments.outputs import read_assignments
    from segments.redisstore import RedisStore
    from segments.sqlstore import SqlStore
    from shadow.run import run_legacy_side
    from tests.segments.test_reachstore import assert_legacy_reach_in_redis, legacy_reach_exact

    events = tmp_path / "input.jsonl"
    write_workload("clickstream", events, users=1200, minutes=15, seed=4)
    log = load_event_log(events)
    plan = ShadowPlan(load_ruleset("clickstream"), tmp_path / "run", 120_000, GateParams(), shards=2)
    plan.out.mkdir()
    with SqlStore.open(database_url) as store, RedisStore.open(redis_url) as redis_store:
        store.register_ruleset(plan.ruleset)
        store.clear_events()
        store.insert_events(log.events)
        run_legacy_side(plan, events, log.events, log.counts, store, redis_store)
    assert_legacy_reach_in_redis(redis_url, legacy_reach_exact(read_assignments(plan.out / "legacy.jsonl")))
