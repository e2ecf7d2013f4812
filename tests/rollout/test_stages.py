"""The stage table, legal moves, and the canary cohort hash."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.stages import (
    MEANINGS,
    ORDER,
    IllegalTransition,
    Position,
    Stage,
    check_advance,
    check_rollback,
    cohort,
    needs_gates,
    stream_serves,
)


def test_stages_are_the_launchdarkly_names_with_a_canary_in_order() -> None:
    assert [s.value for s in ORDER] == [
        "off",
        "dual_write",
        "shadow",
        "canary",
        "live",
        "rampdown",
        "complete",
    ]
    assert set(MEANINGS) == set(ORDER)


def test_every_stage_states_ingest_compute_compare_and_serving() -> None:
    serves = {s: MEANINGS[s].serves for s in ORDER}
    assert (
        serves[Stage.SHADOW] == "legacy"
        and serves[Stage.CANARY] == "cohort"
        and serves[Stage.LIVE] == "stream"
    )
    assert [s for s in ORDER if MEANINGS[s].compared] == [
        Stage.SHADOW,
        Stage.CANARY,
        Stage.LIVE,
        Stage.RAMPDOWN,
    ]
    assert [s for s in ORDER if MEANINGS[s].fallback] == [Stage.CANARY, Stage.LIVE]


def test_positions_imply_their_percentage_and_refuse_impossible_ones() -> None:
    assert Position.at("shadow").percent == 0 and Position.at("live").percent == 100
    assert Position.at("canary", 5).percent == 5
    for bad in (
        lambda: Position.at("canary"),
        lambda: Position.at("canary", 0),
        lambda: Position.at("canary", 100),
        lambda: Position.at("live", 50),
        lambda: Position.at("nonsense"),
    ):
        with pytest.raises(Exception) as info:
            bad()
        assert info.value.__class__.__name__ in ("IllegalTransition", "UsageError")


def test_advance_goes_one_stage_at_a_time_and_canaries_only_grow() -> None:
    walk = [Position.at(s) for s in ORDER[:3]] + [Position.at("canary", 1), Position.at("canary", 5)]
    walk += [Position.at(s) for s in ORDER[4:]]
    for current, target in pairwise(walk):
        check_advance(current, target)
    with pytest.raises(IllegalTransition):
        check_advance(Position.at("shadow"), Position.at("live"))
    with pytest.raises(IllegalTransition):
        check_advance(Position.at("canary", 5), Position.at("canary", 5))
    with pytest.raises(IllegalTransition):
        check_advance(Position.at("canary", 5), Position.at("canary", 1))
    with pytest.raises(IllegalTransition):
        check_advance(Position.at("complete"), Position.at("complete"))
    with pytest.raises(IllegalTransition):
        check_advance(Position.at("off"), Position.at("shadow"))


def test_rollback_is_from_canary_or_live_only() -> None:
    check_rollback(Position.at("canary", 25))
    check_rollback(Position.at("live"))
    for stage in ("off", "dual_write", "shadow", "rampdown", "complete"):
        with pytest.raises(IllegalTransition):
            check_rollback(Position.at(stage))


def test_gates_apply_from_shadow_on() -> None:
    assert [s for s in ORDER if needs_gates(Position.at(s, 5 if s is Stage.CANARY else None))] == [
        Stage.SHADOW,
        Stage.CANARY,
        Stage.LIVE,
        Stage.RAMPDOWN,
    ]


@given(st.text(min_size=1, max_size=128), st.text(max_size=16))
def test_cohort_is_in_range_and_deterministic(user: str, salt: str) -> None:
    value = cohort(user, salt)
    assert 0 <= value < 100
    assert cohort(user, salt) == value


@given(st.text(min_size=1, max_size=64), st.floats(0.01, 99.99), st.floats(0.01, 99.99))
def test_a_user_in_a_canary_stays_in_it_as_the_percentage_grows(user: str, p: float, q: float) -> None:
    low, high = sorted((p, q))
    if stream_serves(Position.at("canary", low), user):
        assert stream_serves(Position.at("canary", high), user)
    assert stream_serves(Position.at("live"), user) and not stream_serves(Position.at("shadow"), user)


def test_cohort_is_the_same_in_another_process_with_another_hash_seed() -> None:
    users = ["u1", "user-42", "名前", "a:b%c", "<script>"]
    code = "import sys; from rollout.stages import cohort; print(repr([cohort(u) for u in sys.argv[1:]]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run(
        [sys.executable, "-c", code, *users], capture_output=True, text=True, env=env, check=True
    )
    assert output.stdout.strip() == repr([cohort(u) for u in users])


def test_a_canary_takes_about_its_share_of_users() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    for percent in (1, 5, 25, 50):
        share = sum(cohort(u) < percent for u in users) / len(users) * 100
        assert abs(share - percent) < 1.5, (percent, share)


def test_the_documented_stage_table_is_the_code() -> None:
    readme = (Path(__file__).resolve().parents[2] / "rollout" / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[0].strip("`") in {s.value for s in ORDER}:
            rows[Stage(cells[0].strip("`"))] = cells[1:]
    assert set(rows) == set(ORDER)
    for stage, (ingest, computes, compared, serves, fallback) in rows.items():
        m = MEANINGS[stage]
        assert (ingest, computes, serves) == (m.ingest, m.computes, m.serves), stage
        assert (compared, fallback) == ("yes" if m.compared else "no", "yes" if m.fallback else "no"), stage
