"""The main job end to end on real servers and on the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segments.config import DATABASE_ENV, REDIS_ENV
from segments.lateness import GateParams
from segments.rules import load_ruleset
from segments.workloads import write_workload
from segshadow.cli import main
from shadow.run import ShadowPlan, run_shadow

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
