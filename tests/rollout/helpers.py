"""Evidence fixtures with the comparator's parity.json keys, and small helpers for rollout tests."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

from compare.causes import CAUSES
from compare.drift import drift_section
from compare.latency import not_measured, summarize
from compare.manifest import comparison_artifacts, seal
from compare.stats import rate
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
        # What rollout.evidence puts here after verifying the seal (replaced whenever a file is loaded).
        "evidence_seal": {"status": "pass", "reason": "sealed (a pure value for gate tests)", "verify": "counts"},
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


PARAMS = {"every_ms": 5 * MINUTE, "max_out_of_orderness_ms": 5_000, "allowed_lateness_ms": 60_000, "span_ms": 600_000}


def write_evidence(directory: Path, data: dict[str, Any]) -> Path:
    """Write sealed evidence for ``data`` in the comparator's layout; returns the directory.

    The artifacts are made so that ``rollout.evidence`` re-derives ``data``'s gated
    numbers from them: ``pairs`` legacy lines over ``as_of_rounds`` as-ofs, one
    mismatch record per ``by_cause`` count, an events file with the dead-letter
    counts (too-late events an hour behind), live freshness samples whose exact
    p50/p95/p99/max are ``data``'s, then ``manifest.json``. The fields derived from
    those (``agree``, ``mismatch``, ``per_segment``, ``agreement_over_time``,
    ``segment_drift``, the rate and verdict) are rewritten to match; ``pairs``, ``by_cause`` (cut, in
    cause order, to at most ``pairs`` mismatches), the dead letters, the freshness figure,
    ``generated_at`` and ``ruleset`` stay as given.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data = json.loads(json.dumps(data))
    data.setdefault("params", dict(PARAMS))
    rounds = data.get("as_of_rounds") if type(data.get("as_of_rounds")) is int else 1
    rounds = max(rounds, 1)
    pairs = int(data.get("pairs") or 0)
    causes = {c: int((data.get("by_cause") or {}).get(c, 0)) for c in CAUSES}
    room = pairs  # a mismatch is a pair: more than ``pairs`` cannot be (and the drift recount refuses it)
    for c in CAUSES:
        causes[c] = min(causes[c], room)
        room -= causes[c]
    as_ofs = [T0 + i * 5 * MINUTE for i in range(rounds)]
    stamps = [format_ms(t) for t in as_ofs]
    mismatch_rows = [(c, n) for c in CAUSES for n in range(causes[c])]
    legacy_lines = [
        json.dumps({"as_of": stamps[i % rounds], "user_id": f"u{i}", "segments": ["window_shopper"]})
        for i in range(pairs)
    ]
    mismatches = [
        json.dumps(
            {
                "as_of": stamps[i % rounds],
                "user_id": f"u{i}",
                "legacy": ["window_shopper"],
                "stream": ["high_value", "window_shopper"],
                "cause": cause,
            }
        )
        for i, (cause, _) in enumerate(mismatch_rows)
    ]
    _lines(directory / "legacy.jsonl", legacy_lines)
    _lines(directory / "mismatches.jsonl", mismatches)
    _lines(directory / "stream.jsonl", [])
    (directory / "legacy.jsonl.meta.json").write_text(json.dumps({"as_of_times": as_ofs}), encoding="utf-8")
    (directory / "stream.jsonl.meta.json").write_text("{}", encoding="utf-8")
    dead = data.get("dead_letter")
    _write_events(directory / "events.jsonl", dead)
    if isinstance(dead, dict) and isinstance(dead.get("legacy"), dict) and isinstance(dead.get("stream"), dict):
        applied = int(dead["legacy"].get("events") or 1) - int(dead["stream"].get("too_late") or 0)
        dead["stream"].update(events=applied, rejected=int(dead["legacy"].get("rejected") or 0))
    mismatch = len(mismatches)
    data.update(
        mismatch=mismatch,
        agree=pairs - mismatch,
        by_cause=causes,
        unexplained_rate=rate(causes["unexplained"], pairs),
        verdict="parity" if not mismatch else "defects" if causes["unexplained"] else "explained_differences",
        per_segment={
            "high_value": {"both": 0, "legacy_only": 0, "stream_only": mismatch},
            "window_shopper": {"both": pairs, "legacy_only": 0, "stream_only": 0},
        },
        agreement_over_time=[
            {
                "as_of": stamps[r],
                "pairs": len(range(r, pairs, rounds)),
                "agree": len(range(r, pairs, rounds)) - len(range(r, mismatch, rounds)),
            }
            for r in range(rounds)
        ],
    )
    lines_at = {t: len(range(r, pairs, rounds)) for r, t in enumerate(as_ofs)}
    high_at = {t: len(range(r, mismatch, rounds)) for r, t in enumerate(as_ofs)}
    data["segment_drift"] = drift_section(
        as_ofs,
        lines_at,
        {t: {"window_shopper": lines_at[t]} for t in as_ofs},
        {t: {"window_shopper": lines_at[t], "high_value": high_at[t]} for t in as_ofs},
    )
    artifacts = comparison_artifacts(
        directory, directory / "events.jsonl", directory / "legacy.jsonl", directory / "stream.jsonl"
    )
    latency = data.setdefault("latency", {})
    stream = latency.get("stream") if isinstance(latency, dict) else None
    if isinstance(stream, dict) and stream.get("source") != "replay" and stream.get("p99_ms") is not None:
        samples = _samples(stream)
        (directory / "stream_latency.txt").write_text("".join(f"{v!r}\n" for v in samples), encoding="utf-8")
        latency["stream"] = summarize(samples, "live").to_dict()
        artifacts["stream_latency"] = directory / "stream_latency.txt"
    elif isinstance(latency, dict):
        latency["stream"] = not_measured("replay").to_dict()
    (directory / "parity.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    seal(directory, data, {role: path for role, path in artifacts.items() if path.exists()})
    return directory


def _lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_events(path: Path, dead: Any) -> None:
    """``events`` valid events (``too_late`` of them an hour late) and ``rejected`` bad lines."""
    legacy = dead.get("legacy", {}) if isinstance(dead, dict) else {}
    stream = dead.get("stream", {}) if isinstance(dead, dict) else {}
    events, rejected = int(legacy.get("events") or 1), int(legacy.get("rejected") or 0)
    late = set(range(10, 10 + int(stream.get("too_late") or 0)))
    lines = []
    for i in range(events):
        arrival = T0 + i
        when = arrival - 3_600_000 if i in late else arrival
        lines.append(
            f'{{"event_id":"e{i}","user_id":"u{i % 97}","event_time":{when},"arrival_time":{arrival},"kind":"view"}}'
        )
    lines += ["not json"] * rejected
    _lines(path, lines)


def _samples(stream: dict[str, Any]) -> list[float]:
    """``count`` samples whose exact nearest-rank p50, p95, p99 and max are ``stream``'s."""
    n = int(stream.get("count") or 100)
    cuts = [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")]
    values: list[float] = []
    for q, key in cuts:
        upto = math.ceil(q * n)
        values += [float(stream.get(key) or stream["p99_ms"])] * (upto - len(values))
    values += [float(stream.get("max_ms") or stream["p99_ms"])] * (n - len(values))
    return values


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
