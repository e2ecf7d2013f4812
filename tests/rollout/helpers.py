"""Evidence fixtures with the comparator's parity.json keys, and small helpers for rollout tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from segments.timeutil import format_ms

T0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
MINUTE = 60_000


def good_evidence(generated_ms: int, **overrides: Any) -> dict[str, Any]:
    """A parity.json that passes every gate of the shipped clickstream plan at ``generated_ms``."""
    misses = (14, 9, 17, 8, 11, 6, 9, 5, 6, 4, 5, 3)
    rounds = [
        {
            "as_of": format_ms(generated_ms - (12 - i) * 5 * MINUTE),
            "pairs": 1800 + 20 * i,
            "agree": 1800 + 20 * i - m,
        }
        for i, m in enumerate(misses)
    ]
    data: dict[str, Any] = {
        "pairs": 20_000,
        "agree": 19_950,
        "mismatch": 50,
        "by_cause": {"late_arrival": 40, "dropped_too_late": 8, "mixed": 2, "unexplained": 0},
        "per_segment": {
            "high_value": {
                "both": 900,
                "legacy_only": 10,
                "stream_only": 12,
                "precision": 0.987,
                "recall": 0.989,
            },
            "window_shopper": {
                "both": 4100,
                "legacy_only": 20,
                "stream_only": 8,
                "precision": 0.998,
                "recall": 0.995,
            },
        },
        "ruleset": {"name": "clickstream", "version": 1, "digest": "ab" * 32},
        "events_sha256": "cd" * 32,
        "generated_at": format_ms(generated_ms),
        "as_of_rounds": 12,
        "unexplained_rate": 0.0,
        "unexplained_rate_wilson95": [0.0, 0.000192],
        "agreement_over_time": rounds,
        "latency": {
            "legacy": {
                "p50_ms": 151_000,
                "p95_ms": 285_000,
                "p99_ms": 297_000,
                "max_ms": 300_000,
                "count": 20_000,
            },
            "stream": {"p50_ms": 1.2, "p95_ms": 6.5, "p99_ms": 14.0, "max_ms": 41.0, "count": 20_000},
        },
        "dead_letter": {
            "legacy": {"rejected": 12, "events": 50_000},
            "stream": {"rejected": 12, "too_late": 30, "events": 50_000},
        },
        "verdict": "explained_differences",
    }
    data.update(overrides)
    return data


def bad_evidence(generated_ms: int) -> dict[str, Any]:
    """Evidence whose unexplained mismatches are far over any plan's threshold."""
    return good_evidence(
        generated_ms,
        agree=19_500,
        mismatch=500,
        by_cause={"late_arrival": 40, "dropped_too_late": 8, "mixed": 2, "unexplained": 450},
        verdict="defects",
    )


def write_evidence(directory: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as ``directory/parity.json`` (the comparator's layout); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "parity.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    return directory


class Clock:
    """A settable clock in epoch ms, for injection."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now


def closed_port() -> int:
    """A localhost port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
