"""The logic layer finds a rule set that changed DURING the compared period, from the store's history.

Pure: ``changes_in_period`` and ``in_force`` over plain uses, and the re-evaluation that
only credits a change where the two sides' definitions differed. Real: a shadow run whose
legacy side switched to the next version half way (its store's as-of runs and its
output both carry the switch), diagnosed by ``segshadow doctor``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from compare.doctor import RuleSetUse, changes_in_period, in_force, rule_change_share
from segments.config import DATABASE_ENV
from segments.events import Event
from segments.faults import changed_rules
from segments.rules import compile_ruleset, shipped_ruleset
from segments.timeutil import format_ms
from tests.compare.test_doctor_faults import _run

T0 = 1_704_067_200_000
M = 60_000


def test_a_switch_within_the_period_is_a_change_and_outside_it_or_in_parallel_is_not() -> None:
    """Legacy v1 then v2 inside [first, last] is a change at v2's first as-of; a switch after ``last`` is not;
    a stream that started under v2 later than under v1 is one; the store's first registration is not."""
    uses = [RuleSetUse("legacy", "r@v1", "d1", T0 + i * 5 * M) for i in range(4)]
    uses += [RuleSetUse("legacy", "r@v2", "d2", T0 + i * 5 * M) for i in range(4, 8)]
    uses += [RuleSetUse("stream", "r@v1", "d1", T0), RuleSetUse("stream", "r@v2", "d2", T0 + 50 * M)]
    uses += [RuleSetUse("store", "r@v1", "d1", 1_000), RuleSetUse("store", "r@v2", "d2", 5_000)]
    changes = changes_in_period(uses, T0, T0 + 35 * M, wall=(2_000, 9_000))
    assert [(c.side, c.before, c.after, c.at) for c in changes] == [
        ("legacy", "r@v1", "r@v2", T0 + 20 * M), ("store", "r@v1", "r@v2", 5_000)]
    assert "legacy switched from r@v1 to r@v2 at " + format_ms(T0 + 20 * M) == changes[0].text()
    assert [c.side for c in changes_in_period(uses, T0, T0 + 60 * M, wall=(6_000, 9_000))] == ["legacy", "stream"]
    assert changes_in_period(uses, T0, T0 + 15 * M, wall=(500, 900)) == []  # one rule set on each side in it
    # two full replays into one store started before the period: both in force from before it, no switch in it
    parallel = [RuleSetUse("stream", "r@v1", "d1", T0 - M), RuleSetUse("stream", "r@v2", "d2", T0 - M // 2)]
    assert changes_in_period(parallel, T0, T0 + 60 * M) == []
    later = [parallel[0], RuleSetUse("stream", "r@v2", "d2", T0 + 30 * M)]  # v1 in force at the start, v2 from 30m
    assert [(c.before, c.after, c.at) for c in changes_in_period(later, T0, T0 + 60 * M)] == \
        [("r@v1", "r@v2", T0 + 30 * M)]
    assert changes_in_period([RuleSetUse("store", "r@v1", "d1", 5_000)], T0, T0, wall=(0, 9_000)) == []
    assert in_force(uses, "legacy", [T0 - 1, T0, T0 + 22 * M]) == {T0: "r@v1", T0 + 22 * M: "r@v2"}


def test_re_evaluation_credits_the_change_only_where_the_sides_definitions_differed() -> None:
    """Spend 60 (high_value at > 50 in v2, not at > 100 in v1): legacy under v2 at t2 differs from the stream under
    v1, and v2 over the stream's events gives legacy's set; at t1, where both ran v1, the same pair is not credited."""
    v1 = shipped_ruleset("clickstream")
    v2 = compile_ruleset(changed_rules(v1))
    t1, t2 = T0 + 10 * M, T0 + 15 * M
    events = [Event("e1", "u", T0 + 9 * M, "purchase", 60_000_000, T0 + 9 * M, "m1", 0)]
    want = v2.segments_at_sorted([e.event_time for e in events], events, t2)
    assert "high_value" in want and "high_value" not in v1.segments_at_sorted([events[0].event_time], events, t2)
    stream_set = v1.segments_at_sorted([events[0].event_time], events, t2)
    sides = {t1: ({"u": want}, {"u": stream_set}), t2: ({"u": want}, {"u": stream_set})}
    mismatched, accounted, examples = rule_change_share(
        sides, v1, events, legacy_at={t1: v1, t2: v2}, stream_digest_at={t1: v1.digest, t2: v1.digest})
    assert (mismatched, accounted) == (2, 1) and format_ms(t2) in examples[0] and "clickstream@v2" in examples[0]


@pytest.mark.slow
def test_doctor_names_a_legacy_rule_set_switch_half_way_through_the_period(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Legacy ran v1 for the first as-ofs and v2 (high_value's threshold halved) after: the sidecars agree (v1), yet
    the logic layer fails first on the switch, with the threshold in the diff and the mismatches it accounts for."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    workload = tmp_path / "input.jsonl"
    assert _run(["workload", "clickstream", "--users", "200", "--minutes", "25", "--out", str(workload),
                 "--fault", "rule-change"]) == 0
    v2_path = tmp_path / "input.jsonl.stream-rules.yaml"
    out = tmp_path / "run"
    assert _run(["shadow", "run", "--events", str(workload), "--rules", "clickstream", "--out", str(out),
                 "--redis-url", redis_url]) == 0
    assert _run(["doctor", "--evidence", str(out)]) == 0  # one rule set on each side: no change

    db = f"sqlite:///{out / 'segshadow.db'}"
    v2_out = tmp_path / "legacy-v2.jsonl"
    assert _run(["legacy", "run", "--events", str(out / "events.jsonl"), "--rules", str(v2_path), "--out",
                 str(v2_out), "--database-url", db, "--redis-url", redis_url]) == 0
    as_ofs = json.loads((out / "legacy.jsonl.meta.json").read_text())["as_of_times"]
    switch = as_ofs[len(as_ofs) // 2]
    engine = sa.create_engine(db)
    with engine.begin() as conn:  # the store's history of one legacy side that switched at ``switch``
        conn.execute(sa.text("DELETE FROM segshadow_legacy_runs WHERE (ruleset = 'clickstream@v1' AND as_of >= :t) "
                             "OR (ruleset = 'clickstream@v2' AND as_of < :t)"), {"t": switch})
    engine.dispose()
    lines = [line for line in (out / "legacy.jsonl").read_text().splitlines() if json.loads(line)["as_of"] <
             format_ms(switch)]
    lines += [line for line in v2_out.read_text().splitlines() if json.loads(line)["as_of"] >= format_ms(switch)]
    (out / "legacy.jsonl").write_text("\n".join(lines) + "\n")

    capsys.readouterr()
    assert _run(["doctor", "--evidence", str(out)]) == 1
    assert "segments[high_value]" in capsys.readouterr().out  # the table shows the brackets (no rich markup)
    doctor = json.loads((out / "doctor.json").read_text())
    logic = next(layer for layer in doctor["layers"] if layer["layer"] == "logic")
    assert doctor["first_failing"] == "logic", logic["summary"]
    assert logic["summary"].startswith("the rule set changed during the compared period: legacy switched from "
                                       f"clickstream@v1 to clickstream@v2 at {format_ms(switch)}")
    assert "clickstream@v1 -> clickstream@v2: segments[high_value].when.value: 100 (clickstream@v1) -> 50 " \
        "(clickstream@v2)" in logic["figures"]["diff"]
    figures = logic["figures"]
    assert 0 < figures["accounted_by_change"] <= figures["mismatched_pairs"]
    assert all(example.split(" at ")[1][:24] >= format_ms(switch)[:24] for example in logic["examples"])
    print(f"switch: {figures['accounted_by_change']} of {figures['mismatched_pairs']} mismatched pairs accounted")


@pytest.mark.slow
def test_a_full_replay_under_the_next_version_into_the_same_store_is_a_rule_set_difference_not_a_switch(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream replayed from the start under v2 into the run's store (its transitions under v1 stay there): both
    started before the first as-of, so the doctor names the sides' different rule sets, not a change in the period."""
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    workload = tmp_path / "input.jsonl"
    assert _run(["workload", "clickstream", "--users", "200", "--minutes", "25", "--out", str(workload),
                 "--fault", "rule-change"]) == 0
    out = tmp_path / "run"
    assert _run(["shadow", "run", "--events", str(workload), "--rules", "clickstream", "--out", str(out),
                 "--redis-url", redis_url]) == 0
    assert _run(["stream", "replay", "--events", str(out / "events.jsonl"), "--rules",
                 str(tmp_path / "input.jsonl.stream-rules.yaml"), "--out", str(out / "stream.jsonl"),
                 "--database-url", f"sqlite:///{out / 'segshadow.db'}", "--redis-url", redis_url]) == 0
    assert _run(["doctor", "--evidence", str(out)]) == 1
    layers = json.loads((out / "doctor.json").read_text())["layers"]
    logic = next(layer for layer in layers if layer["layer"] == "logic")
    assert logic["summary"].startswith("the sides ran different rule sets"), logic["summary"]
    assert logic["figures"]["ruleset_history"].startswith("checked in the store: 2 stored versions")
