"""``stream replay`` end to end at the millisecond where too late begins, against SPEC §4 in the tests.

The pipeline's admission and the comparator share the production gate; here the
expected drops come from ``spec_admission`` and the expected timeline from brute
force over the events it applies.
"""

from __future__ import annotations

import json
from pathlib import Path

from segments.events import arrival_order, write_jsonl
from segments.lateness import GateParams
from segments.outputs import read_transitions, timelines
from segments.rules import load_ruleset
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay
from tests.streaming.oracle import BASE, MINUTE, brute_force, parse_all, probe_instants, spec_admission

CLICK = load_ruleset("clickstream")


def _line(event_id: str, user: str, t: int, kind: str, arrival: int, amount: str | None = None) -> str:
    row: dict[str, object] = {"event_id": event_id, "user_id": user, "event_time": t, "kind": kind}
    row["arrival_time"] = arrival
    if amount is not None:
        row["amount"] = amount
    return json.dumps(row)


def test_replay_applies_an_event_at_exactly_watermark_minus_allowed_lateness(tmp_path: Path):
    """An early event sets the watermark; purchases 1 ms before the horizon are dropped, the ones at exactly
    the horizon and 1 ms after are applied and make ``high_value``."""
    params = GateParams(5_000, 60_000)
    ahead = BASE + 20 * MINUTE
    horizon = ahead - 65_000
    lines = [_line("x", "w", ahead, "view", BASE)]
    for user, t in (("early", horizon - 1), ("edge", horizon), ("after", horizon + 1)):
        lines.append(_line(f"{user}1", user, t, "purchase", BASE + 1, "150"))
    events_path = tmp_path / "events.jsonl"
    write_jsonl(events_path, lines)
    result = run_replay(events_path, tmp_path / "out.jsonl", StreamConfig(CLICK, params, shards=2))

    events = arrival_order(parse_all(lines))
    spec = spec_admission(events, params.max_out_of_orderness_ms, params.allowed_lateness_ms)
    dropped = [json.loads(line) for line in result.dead_letter_path.read_text().splitlines()]
    assert sorted(d["event_id"] for d in dropped if d["reason"] == "too_late") == ["early1"]
    assert [e.event_id for e in spec.too_late] == ["early1"]
    applied = [e for e, _ in spec.applied]
    lines_of = timelines(read_transitions(result.out_path))
    for user in ("early", "edge", "after"):
        mine = [e for e in applied if e.user_id == user]
        for t in probe_instants(CLICK, [e for e in events if e.user_id == user]):
            got = lines_of[user].at(t) if user in lines_of else frozenset()
            assert got == brute_force(CLICK, mine, t), (user, t)
    assert "high_value" in lines_of["edge"].at(horizon)
