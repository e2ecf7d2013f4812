"""``segshadow cutover history``: outside text (actor, reason) is printed with its bidi controls visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.segshadow.test_cli_data import run


def test_history_shows_bidi_controls_in_actor_and_reason_visibly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--database-url", f"sqlite:///{tmp_path / 'r.db'}", "--data-dir", str(tmp_path)]
    argv = ["cutover", "advance", "--from", "off", "--actor", "\u202eeve", "--reason", "ok\u2067 go", *where]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    code, printed, err = run(["cutover", "history", *where], capsys)
    assert code == 0, err
    assert "\u202e" not in printed and "\u2067" not in printed
    assert "[U+202E]eve: advance off → dual_write" in printed and "ok[U+2067] go" in printed
