"""Long commands show progress on a terminal and stay quiet in pipes: compare's bar, on and off a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

import segshadow.common
from segments.rules import load_ruleset
from segshadow.cli import main
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")


def _compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool) -> str:
    screen = io.StringIO()
    monkeypatch.setattr(segshadow.common, "console", Console(file=screen, force_terminal=terminal, width=100))
    events = write_events(tmp_path / "events.jsonl", [event(f"v{i}", "u", T0 + (6 + i) * MIN) for i in range(3)])
    legacy = write_legacy(tmp_path / "legacy.jsonl", [(T0 + 10 * MIN, "u", ("window_shopper",))], events, CLICK)
    stream = write_stream(tmp_path / "stream.jsonl", [], events, CLICK)
    argv = ["compare", "--events", str(events), "--legacy", str(legacy), "--stream", str(stream),
            "--rules", "clickstream", "--out", str(tmp_path / "out"), "--fail-on", "never"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return screen.getvalue()


def test_compare_shows_its_progress_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "comparing" in _compare(tmp_path, monkeypatch, terminal=True)


def test_compare_is_quiet_when_stderr_is_not_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _compare(tmp_path, monkeypatch, terminal=False) == ""
