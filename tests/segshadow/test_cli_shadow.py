"""``segshadow shadow run`` ends by saying what the shipped plan's gates would decide, and why, and keeps
what the shop serves in the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.evidence import load_evidence
from segments.snapshot import read_serving
from tests.segshadow.test_cli_data import run


@pytest.mark.slow
def test_a_replay_run_explains_its_inconclusive_gates_and_keeps_its_serving_data(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["shadow", "run", "--workload", "clickstream", "--users", "100", "--minutes", "10", "--out", str(out)]
    argv += ["--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}", "--redis-url", redis_url]
    code, printed, err = run(argv, capsys)
    assert code == 0, err
    head = "gates of the shipped plan clickstream-default to enter canary 1%: inconclusive"
    assert head in printed
    # a replay has no processing latency, and 100 users give too few pairs for the plan's minimum
    assert "inconclusive stream_freshness:" in printed
    assert "inconclusive min_pairs:" in printed
    assert "'Evidence that passes'" in printed
    outlook = (out / "gates.md").read_text(encoding="utf-8")
    assert f"# Gates: {head}" in outlook and "- inconclusive stream_freshness:" in outlook
    # the outlook is written beside the sealed evidence, never into it
    assert load_evidence(out).data["evidence_seal"]["status"] == "pass"
    snapshot = read_serving(out / "serving.jsonl")
    assert snapshot.users_with("legacy", "high_value")
    assert any(e["key"].startswith("segshadow:stream:u:") for e in snapshot.entries)
    assert f"segshadow serve --run {out}" in printed
