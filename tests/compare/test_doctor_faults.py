"""Planted faults through the real commands: ``doctor`` names each fault's layer first, and none on clean runs.

Each case writes a workload with ``segshadow workload --fault``, runs ``shadow
run`` with the run options the fault file names (and, for ``rule-change``, the
stream side again with the changed rule set), then ``segshadow doctor``. The
confusion table of the lead's note is these cases' (expected, named) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segments.config import DATABASE_ENV
from segments.faults import LAYER_OF
from segshadow.cli import main

pytestmark = pytest.mark.slow
USERS, MINUTES = "200", "25"


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code or 0)


def shadow_run_with_fault(tmp_path: Path, redis_url: str, fault: str | None, noise: bool = False) -> Path:
    """A shadow run directory with ``fault`` planted (None: a clean run)."""
    workload = tmp_path / "input.jsonl"
    argv = ["workload", "clickstream", "--users", USERS, "--minutes", MINUTES, "--out", str(workload)]
    assert _run(argv + (["--fault", fault] if fault else [])) == 0
    run_args: list[str] = []
    description: dict = {}
    if fault:
        description = json.loads((tmp_path / "input.jsonl.fault.json").read_text())
        assert description["layer"] == LAYER_OF[fault]
        run_args = description["run_args"]
    out = tmp_path / "run"
    base = ["shadow", "run", "--events", str(workload), "--rules", "clickstream", "--out", str(out),
            "--redis-url", redis_url]
    assert _run(base + (["--noise"] if noise else []) + run_args) == 0
    if "stream_rules" in description:
        stream = ["stream", "replay", "--events", str(out / "events.jsonl"), "--rules", description["stream_rules"],
                  "--out", str(out / "stream.jsonl"), "--redis-url", redis_url]
        assert _run(stream) == 0
    return out


@pytest.mark.parametrize(
    ("fault", "noise"),
    [(None, False), (None, True), *((f, False) for f in LAYER_OF)],
    ids=["clean", "noise-floor", *LAYER_OF],
)
def test_doctor_names_the_planted_faults_layer_first_and_none_on_clean_runs(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, fault: str | None, noise: bool
) -> None:
    """The first failing layer is the fault's own (exit 1); a clean or noise-floor run has none (exit 0)."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    out = shadow_run_with_fault(tmp_path, redis_url, fault, noise)
    code = _run(["doctor", "--evidence", str(out)])
    doctor = json.loads((out / "doctor.json").read_text())
    expected = LAYER_OF[fault] if fault else None
    verdicts = {layer["layer"]: layer["verdict"] for layer in doctor["layers"]}
    print(f"confusion: planted {fault or ('noise-floor' if noise else 'clean')} (layer {LAYER_OF.get(fault or '')}) "
          f"-> first failing {doctor['first_failing']}; verdicts {verdicts}")
    assert doctor["first_failing"] == expected, verdicts
    assert code == (1 if fault else 0)
    assert "segshadow doctor: begin" in (out / "report.html").read_text()


def test_lateness_table_matches_a_real_rerun_of_the_stream_at_two_suggested_values(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a tight-watermark run, each suggested allowed lateness drops exactly what the stream then drops."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    out = shadow_run_with_fault(tmp_path, redis_url, "tight-watermark")
    _run(["doctor", "--evidence", str(out)])
    doctor = json.loads((out / "doctor.json").read_text())
    table = next(layer for layer in doctor["layers"] if layer["layer"] == "state")["figures"]["lateness_table"]
    chosen = [row for row in table if row["suggested"]]
    chosen += [row for row in table[1:] if row not in chosen]
    assert len(chosen) >= 2
    for row in chosen[:2]:
        target = tmp_path / f"replay-{row['allowed_lateness']}.jsonl"
        argv = ["stream", "replay", "--events", str(out / "events.jsonl"), "--rules", "clickstream",
                "--allowed-lateness", row["allowed_lateness"], "--out", str(target)]
        assert _run(argv) == 0
        counts = json.loads(Path(f"{target}.meta.json").read_text())["counts"]
        assert counts["too_late"] == row["dropped"], row
        print(f"allowed lateness {row['allowed_lateness']}: table {row['dropped']}, stream {counts['too_late']}")
