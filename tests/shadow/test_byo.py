"""Put your own job under shadow: a team's export imported with --map, their SQL as the legacy side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legacy_batch.sqlfile import LegacySql
from rollout.evidence import load_evidence
from segments.events import write_jsonl
from segments.importers import import_mapped, parse_field_map
from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import DEFAULT_START_MS, write_workload
from shadow.run import ShadowPlan, run_shadow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "byo"
REES46_MAP = "user_id=user_id,event_time=event_time,kind=event_type,attrs.price=price,attrs.brand=brand"


def test_rees46_export_mapped_runs_end_to_end_with_the_teams_sql(
    shared_data: Path, tmp_path: Path, database_url: str, redis_url: str
) -> None:
    ruleset = load_ruleset(str(EXAMPLES / "rees46.yaml"))
    imported = import_mapped(
        shared_data / "rees46_oct2019_1k.csv", "csv", parse_field_map(REES46_MAP), bounds=ruleset.time_bounds
    )
    assert len(imported.lines) == 1000 and not imported.rejections
    events = tmp_path / "rees46.jsonl"
    write_jsonl(events, imported.lines)
    sql = LegacySql.read(EXAMPLES / "rees46.sql")
    plan = ShadowPlan(ruleset, tmp_path / "run", 60_000, GateParams(), shards=2, legacy_sql=sql)
    run_shadow(plan, events, database_url, redis_url)

    parity = json.loads((plan.out / "parity.json").read_text())
    assert parity["pairs"] > 500 and parity["by_cause"]["unexplained"] == 0, parity["by_cause"]
    rows = (json.loads(line) for line in (plan.out / "legacy.jsonl").read_text().splitlines())
    segments = {name for row in rows for name in row["segments"]}
    assert segments == {"buyer", "brand_browser", "cart_abandoner"}  # every segment reached: not vacuous
    meta = json.loads((plan.out / "legacy.jsonl.meta.json").read_text())
    assert meta["ruleset"]["source"] == "sql" and meta["ruleset"]["sql_sha256"] == sql.sha256
    manifest = json.loads((plan.out / "manifest.json").read_text())
    assert manifest["artifacts"]["legacy_sql"]["sha256"] == sql.sha256  # the manifest names the SQL too
    # The seal re-reads events.jsonl under the run's own rule set (sealed as ruleset.json): its kinds and
    # the price attribute, not SPEC's kinds, under which the ten purchases without an amount were rejects.
    seal = load_evidence(plan.out).data["evidence_seal"]
    assert seal["status"] == "pass", seal["reason"]
    (plan.out / "ruleset.json").write_text(load_ruleset("clickstream").to_canonical_json())
    assert "ruleset.json: SHA-256 differs" in load_evidence(plan.out).data["evidence_seal"]["reason"]


@pytest.mark.parametrize(("sql", "differs"), [("clickstream.sql", False), ("clickstream_ge100.sql", True)])
def test_clickstream_sql_under_shadow(
    tmp_path: Path, database_url: str, redis_url: str, sql: str, differs: bool
) -> None:
    """The exact example agrees as the rule set's own legacy does; the >= 100 one adds unexplained mismatches."""
    events = tmp_path / "input.jsonl"
    write_workload("clickstream", events, users=200, minutes=20, seed=5)
    lines = events.read_text().splitlines()
    when = DEFAULT_START_MS + 60_000
    spend = {"event_id": "edge", "user_id": "exactly-100", "event_time": when, "kind": "purchase", "amount": "100"}
    events.write_text("\n".join([json.dumps(spend), *lines]) + "\n")
    plan = ShadowPlan(load_ruleset("clickstream"), tmp_path / "run", 300_000, GateParams(), shards=2,
                      legacy_sql=LegacySql.read(EXAMPLES / sql))  # fmt: skip
    run_shadow(plan, events, database_url, redis_url)
    mismatches = [json.loads(x) for x in (plan.out / "mismatches.jsonl").read_text().splitlines()]
    unexplained = [m for m in mismatches if m["cause"] == "unexplained"]
    if not differs:
        assert unexplained == []
        return
    assert unexplained and {m["user_id"] for m in unexplained} == {"exactly-100"}
    assert all(set(m["legacy"]) - set(m["stream"]) == {"high_value"} for m in unexplained)
