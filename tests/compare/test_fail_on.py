"""`compare` exits 1 on a `defects` verdict (`--fail-on defects|mismatch|never`), after writing and sealing."""

from __future__ import annotations

from pathlib import Path

import pytest

from compare.parity import fails
from segments.rules import load_ruleset
from segshadow.cli import main
from tests.compare.builders import MIN, T0, event, write_events, write_legacy, write_stream

CLICK = load_ruleset("clickstream")
WS = ("window_shopper",)


def test_fail_on_rules() -> None:
    assert fails("defects", "defects") and not fails("explained_differences", "defects")
    assert fails("explained_differences", "mismatch") and not fails("parity", "mismatch")
    assert not fails("defects", "never")


@pytest.mark.parametrize(("fail_on", "code"), [(None, 1), ("defects", 1), ("mismatch", 1), ("never", 0)])
def test_compare_exits_1_on_defects_after_sealing_its_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fail_on: str | None, code: int
) -> None:
    events = write_events(tmp_path / "events.jsonl", [event(f"v{i}", "u", T0 + (6 + i) * MIN) for i in range(3)])
    legacy = write_legacy(tmp_path / "legacy.jsonl", [(T0 + 10 * MIN, "u", WS)], events, CLICK)
    stream = write_stream(tmp_path / "stream.jsonl", [], events, CLICK)  # the stream never assigns: a defect
    out = tmp_path / "out"
    argv = ["compare", "--events", str(events), "--legacy", str(legacy), "--stream", str(stream),
            "--rules", "clickstream", "--every", "5m", "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + (["--fail-on", fail_on] if fail_on else []))
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert (out / "manifest.json").exists() and (out / "parity.json").exists()
    if code:
        assert "defects" in err and len(err.strip().splitlines()) == 1


def test_a_bad_fail_on_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--events", "e", "--legacy", "l", "--stream", "s", "--rules", "clickstream",
              "--out", str(tmp_path), "--fail-on", "sometimes"])
    assert exit_info.value.code == 2 and "--fail-on" in capsys.readouterr().err
