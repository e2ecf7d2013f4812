"""One segment drift figure: the comparator's ``parity.json``, the doctor (its fallback computed from the outputs
included), the report and the dashboard all show the same ``compare.drift`` section of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compare.doctor import sides_at
from compare.drift import drift_from_sides, worst_per_segment
from homepage.dashboard import drift_rows
from segments.config import DATABASE_ENV
from segments.outputs import read_assignments, read_transitions
from tests.compare.test_doctor_faults import _run, shadow_run_with_fault

pytestmark = pytest.mark.slow


def test_doctor_report_and_dashboard_read_the_drift_parity_json_and_the_gate_read(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a tight-watermark run (the sides differ), every reader's drift equals parity.json's, row for row."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    out = shadow_run_with_fault(tmp_path, redis_url, "tight-watermark")
    parity = json.loads((out / "parity.json").read_text())["segment_drift"]
    assert parity["population"] == "pairs" and parity["max_psi"] > 0, parity["max_psi"]

    # the doctor's own computation from the outputs (used when parity.json is missing) is the same definition
    meta = json.loads((out / "legacy.jsonl.meta.json").read_text())
    sides = sides_at([int(t) for t in meta["as_of_times"]], read_assignments(out / "legacy.jsonl"),
                     read_transitions(out / "stream.jsonl"))
    assert drift_from_sides(sides) == parity

    _run(["doctor", "--evidence", str(out)])
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["drift"] == parity["per_as_of"] and doctor["drift_source"] == "parity.json"
    assert doctor["drift_max_psi"] == parity["max_psi"]

    (out / "parity.json").unlink()  # without the comparison, the doctor computes the same rows itself
    _run(["doctor", "--evidence", str(out)])
    again = json.loads((out / "doctor.json").read_text())
    assert again["drift"] == parity["per_as_of"] and again["drift_source"].startswith("outputs")

    page = (out / "report.html").read_text()
    worst = max(worst_per_segment(parity), key=lambda r: r["psi_sides"])
    assert f"{worst['psi_sides']:.4f}" in page and f"{worst['chi2_sides']:.2f}" in page
    shown = {r["segment"]: r["max_psi"] for r in drift_rows(parity) or []}
    assert shown[worst["segment"]] == f"{worst['psi_sides']:.4f}"
