"""``shadow run --live --transform`` (issue 18, item 3): the live shadow run with a team's Beam transform as the
stream side; its sidecar and the sealed manifest name the transform, and its differences from legacy are
explained as for segshadow's own stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segments.outputs import read_meta
from segshadow.cli import main
from streaming.byo import CAUSE

EXAMPLE = "examples.byo.clickstream_windows:ClickstreamWindows"
pytestmark = pytest.mark.slow  # a minute of live traffic: the example evaluates on the minute grid


def test_shadow_run_live_with_the_example_transform(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """66 s at 40 events/s, legacy every minute (the example's grid): every compared as-of agrees or differs
    for a reason the comparator names; the transitions are the transform's; provenance names it."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["shadow", "run", "--live", "--workload", "clickstream", "--rate", "40", "--duration", "66s",
              "--every", "1m", "--transform", EXAMPLE, "--out", str(out), "--redis-url", redis_url,
              "--database-url", f"sqlite:///{tmp_path / 'live.db'}", "--fail-on", "never"])  # fmt: skip
    assert done.value.code == 0, capsys.readouterr().err
    parity = json.loads((out / "parity.json").read_text())
    assert parity["pairs"] > 0 and parity["by_cause"]["unexplained"] == 0, parity["by_cause"]
    assert parity["provenance"]["stream"]["logic"]["ref"] == EXAMPLE
    meta = read_meta(out / "stream.jsonl")
    assert meta["ruleset"]["logic"]["kind"] == "transform" and meta["ruleset"]["claims"]["ruleset"] == "clickstream@v1"
    causes = {json.loads(line)["cause"] for line in (out / "stream.jsonl").read_text().splitlines()}
    assert causes == {CAUSE}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["stream"]["logic"]["ref"] == EXAMPLE
