"""Bounded work: peak memory of ``legacy run`` and ``shadow run`` does not grow with the span of time.

The issue's two extreme events (``event_time`` in 9999, ``arrival_time`` 1) once made
both commands build every as-of from 1970 to 9999 in memory (23.9 GB). They are now
dead-lettered as ``time_out_of_range``; these tests run the real command line in a
subprocess on an 11-line file holding them and read the child's peak RSS
(``getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper process, so no other child counts).
An address-space limit of 3 GB keeps a regression from taking the machine with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIMIT_MB = 300
BASE = 1_704_067_200_000  # 2024-01-01T00:00:00Z
EXTREMES = [
    '{"event_id":"a3","user_id":"u3","event_time":"9999-12-31T23:59:59.999Z","kind":"view"}',
    json.dumps({"event_id": "a4", "user_id": "u4", "event_time": BASE, "arrival_time": 1, "kind": "view"}),
]
_MEASURE = """
import resource, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(done.returncode, peak_kb)
sys.stderr.write(done.stderr)
"""


def _eleven_lines(path: Path) -> Path:
    lines = [
        json.dumps({"event_id": f"e{n}", "user_id": f"u{n % 3}", "event_time": BASE + n * 60_000, "kind": "view"})
        for n in range(8)
    ]
    purchase = {"event_id": "p", "user_id": "u0", "event_time": BASE, "kind": "purchase", "amount": "150"}
    lines.append(json.dumps(purchase))
    path.write_text("\n".join(lines + EXTREMES) + "\n", encoding="utf-8")
    assert len(path.read_text().splitlines()) == 11
    return path


def _peak_mb(argv: list[str]) -> tuple[int, float, str]:
    command = [sys.executable, "-m", "segshadow.cli", *argv]
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, timeout=180)
    code, peak_kb = done.stdout.split()
    return int(code), int(peak_kb) / 1024, done.stderr


@pytest.mark.slow
def test_legacy_run_on_the_extreme_events_stays_under_300_mb(tmp_path: Path) -> None:
    events = _eleven_lines(tmp_path / "events.jsonl")
    out = tmp_path / "legacy.jsonl"
    code, peak, err = _peak_mb(["legacy", "run", "--events", str(events), "--rules", "clickstream", "--out", str(out),
                                "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"])  # fmt: skip
    assert code == 0, err
    assert peak < LIMIT_MB, f"legacy run peaked at {peak:.0f} MB"
    meta = json.loads((tmp_path / "legacy.jsonl.meta.json").read_text())
    assert meta["counts"]["rejected_time_out_of_range"] == 2 and meta["as_of_count"] <= 4


@pytest.mark.slow
def test_shadow_run_on_the_extreme_events_stays_under_300_mb(tmp_path: Path) -> None:
    events = _eleven_lines(tmp_path / "events.jsonl")
    out = tmp_path / "shadow"
    code, peak, err = _peak_mb(["shadow", "run", "--events", str(events), "--rules", "clickstream", "--out", str(out),
                                "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"])  # fmt: skip
    assert code == 0, err
    assert peak < LIMIT_MB, f"shadow run peaked at {peak:.0f} MB"
    dead = [json.loads(line) for line in (out / "ingest.deadletter.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] for d in dead) == ["time_out_of_range", "time_out_of_range"]
