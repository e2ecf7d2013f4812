"""``segshadow cutover`` and ``segshadow gate check`` through the real command line (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rollout.plan import shipped_plan_text
from segments.timeutil import wall_clock_ms
from segshadow.cli import main
from tests.rollout.helpers import bad_evidence, good_evidence, write_evidence


class Cli:
    def __init__(self, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.common = ["--database-url", database_url, "--data-dir", str(tmp_path / "data")]
        self.capsys = capsys
        self.tmp = tmp_path
        raw = yaml.safe_load(shipped_plan_text("default"))
        raw["name"] = "quick"  # the shipped plan without its waits: relaxes no gate the shipped plan requires
        raw["gates"]["min_time_in_stage"] = None
        for step in raw["steps"]:
            step.get("gates", {}).pop("min_time_in_stage", None)
        self.plan = tmp_path / "quick.yaml"
        self.plan.write_text(yaml.safe_dump(raw), encoding="utf-8")

    def __call__(self, *args: str, common: bool = True) -> tuple[int, str, str]:
        code = 0
        try:
            main([*args, *(self.common if common else [])])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def evidence(self, name: str, bad: bool = False, **overrides: object) -> str:
        now = wall_clock_ms()
        data = bad_evidence(now) if bad else good_evidence(now, **overrides)
        data["run"] = name  # distinct evidence per directory, even within one millisecond
        return str(write_evidence(self.tmp / name, data))

    def start(self) -> None:
        """Pin the quick plan and walk to shadow (moves without evidence name where they start)."""
        assert self("cutover", "advance", "--from", "off", "--plan", str(self.plan))[0] == 0
        assert self("cutover", "advance", "--from", "dual_write")[0] == 0


@pytest.fixture
def cli(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path, database_url, capsys)


def test_status_of_a_new_rollout(cli: Cli) -> None:
    code, out, _ = cli("cutover", "status")
    assert code == 0 and "stage: off (version 0, never moved)" in out and "serves: legacy" in out
    code, out, _ = cli("cutover", "status", "--json")
    assert code == 0 and json.loads(out)["stage"] == "off"


def test_gate_check_exit_codes_pass_fail_inconclusive_and_bad_input(cli: Cli) -> None:
    code, out, _ = cli("gate", "check", "--evidence", cli.evidence("good"))
    assert code == 0 and "verdict: pass" in out and "unexplained" in out and "stream_freshness" in out
    code, out, _ = cli("gate", "check", "--evidence", cli.evidence("bad", bad=True))
    assert code == 1 and "verdict: fail" in out and "450 unexplained in 20000 pairs" in out
    code, out, _ = cli("gate", "check", "--evidence", cli.evidence("few", pairs=10, agree=10))
    assert code == 3 and "verdict: inconclusive" in out and "only 10 compared pairs" in out
    code, _, err = cli("gate", "check", "--evidence", str(cli.tmp / "nowhere"))
    assert code == 2 and err.count("\n") == 1 and "no parity.json" in err
    bad_plan = cli.tmp / "bad.yaml"
    bad_plan.write_text("name: x\nruleset: {name: clickstream, version: 1}\nstepz: []\n", encoding="utf-8")
    code, _, err = cli("gate", "check", "--plan", str(bad_plan), "--evidence", cli.evidence("g2"))
    assert code == 2 and "plan " in err and "stepz" in err and "Traceback" not in err


def test_advance_refuses_on_failing_gates_then_force_is_recorded(cli: Cli) -> None:
    cli.start()
    code, out, err = cli(
        "cutover", "advance", "--plan", str(cli.plan), "--evidence", cli.evidence("bad", bad=True)
    )
    assert code == 1 and "unexplained" in out and "refusing to advance from shadow to canary 1%" in err
    assert "stage: shadow" in cli("cutover", "status")[1]
    code, _, err = cli("cutover", "advance", "--evidence", cli.evidence("bad2", bad=True), "--force")
    assert code == 2 and "--reason" in err
    code, out, _ = cli(
        "cutover",
        "advance",
        "--plan",
        str(cli.plan),
        "--evidence",
        cli.evidence("bad3", bad=True),
        "--force",
        "--reason",
        "CAB-7 approved",
        "--actor",
        "lead",
    )
    assert code == 0 and "FORCED" in out
    code, out, _ = cli("cutover", "history")
    assert (
        code == 0 and "lead: advance shadow → canary 1% FORCED gates fail" in out and "CAB-7 approved" in out
    )


def test_walk_with_the_command_line_then_rollback_and_history(cli: Cli) -> None:
    cli.start()
    for i in range(3):
        code, out, err = cli("cutover", "advance", "--evidence", cli.evidence(f"g{i}"))
        assert code == 0, err
    code, out, _ = cli(
        "cutover", "advance", "--evidence", cli.evidence("g3"), "--percent", "30", "--force", "--reason", "test"
    )
    assert code == 0 and "advanced canary 25% → canary 30%" in out and "FORCED" in out
    code, _, err = cli("cutover", "advance", "--to", "complete", "--evidence", cli.evidence("g4"))
    assert code == 2 and "next stage is live" in err
    assert cli("cutover", "rollback", "--reason", "pager", "--actor", "bo")[0] == 0
    code, out, _ = cli("cutover", "history", "--json")
    decisions = [json.loads(line) for line in out.splitlines()]
    assert [d["to"]["stage"] for d in decisions][-2:] == ["canary", "shadow"]
    assert decisions[-1]["actor"] == "bo" and decisions[-1]["reason"] == "pager"
    assert cli("cutover", "rollback", "--reason", "again")[0] == 2


def test_watch_rolls_back_and_exits_one(cli: Cli) -> None:
    cli.start()
    assert cli("cutover", "advance", "--evidence", cli.evidence("g"))[0] == 0
    code, out, _ = cli(
        "cutover",
        "watch",
        "--evidence",
        cli.evidence("g2"),
        "--iterations",
        "1",
        "--interval",
        "10ms",
    )
    assert code == 0 and "canary 1%: ok" in out
    code, out, err = cli(
        "cutover",
        "watch",
        "--evidence",
        cli.evidence("b", bad=True),
        "--iterations",
        "2",
        "--interval",
        "10ms",
    )
    assert code == 1 and "rolled_back" in out and "shadow: idle" in out and "rolled back to shadow" in err
    assert "auto: rollback canary 1% → shadow" in cli("cutover", "history")[1]


def test_an_unreachable_database_is_one_line_and_exit_two(cli: Cli) -> None:
    code, _, err = cli(
        "cutover", "status", "--database-url", "postgresql://postgres@127.0.0.1:9/none", common=False
    )
    assert (
        code == 2 and err.startswith("segshadow: error: cannot reach the database") and err.count("\n") == 1
    )


def test_status_says_which_store_it_read_and_the_plan_in_force(cli: Cli) -> None:
    code, out, _ = cli("cutover", "status")
    assert code == 0 and ("store: sqlite" in out or "store: postgresql" in out)
    assert "plan: clickstream-default sha256:" in out and "(shipped default)" in out and "not pinned yet" in out
    cli.start()
    code, out, _ = cli("cutover", "status")
    assert "plan: quick sha256:" in out and "(in force)" in out and "--expect-version 2 --evidence DIR" in out


def test_two_concurrent_plain_advances_in_two_processes_one_moves_one_conflicts(cli: Cli) -> None:
    import subprocess
    import sys

    cli.start()
    seen = cli.evidence("seen")  # both operators looked at the rollout in shadow with this evidence
    command = [sys.executable, "-c", "from segshadow.cli import main; main()", "cutover", "advance"]
    procs = [
        subprocess.Popen(
            [*command, "--evidence", seen, "--actor", f"op{i}", *cli.common],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    [(_, _, err)] = [r for r in results if r[0] == 2]
    assert err.count("\n") == 1 and ("changed since it was read" in err or "already admitted decision #3" in err)
    # the loser's command, run again, still does not move the rollout a second step
    assert cli("cutover", "advance", "--evidence", seen)[0] == 2
    out = cli("cutover", "status", "--json")[1]
    assert json.loads(out)["percent"] == 1.0 and json.loads(out)["version"] == 3


def test_history_verify_names_a_tampered_row_and_a_changed_evidence_file(cli: Cli, database_url: str) -> None:
    import sqlalchemy as sa

    from rollout.store import decisions_table
    from segments.db import normalize_url

    cli.start()
    ev = cli.evidence("g")
    assert cli("cutover", "advance", "--evidence", ev)[0] == 0
    code, out, _ = cli("cutover", "history", "--verify")
    assert code == 0 and "log verified: 3 decisions" in out and "1 evidence files re-checked" in out
    parity = Path(ev) / "parity.json"
    parity.write_text(parity.read_text(encoding="utf-8").replace('"unexplained": 0', '"unexplained": 1'))
    code, _, err = cli("cutover", "history", "--verify")
    assert code == 1 and "decision #3: evidence" in err and err.count("\n") == 1
    engine = sa.create_engine(normalize_url(database_url))
    with engine.begin() as conn:
        conn.execute(decisions_table.update().where(decisions_table.c.id == 2).values(actor="mallory"))
    engine.dispose()
    code, out, err = cli("cutover", "history")
    assert code == 1 and "decision #2: edited" in err and "problem: decision #2: edited" in out


def test_a_plan_that_cannot_be_parsed_is_one_line_and_records_nothing(cli: Cli) -> None:
    cli.start()
    broken = cli.tmp / "broken.yaml"
    broken.write_text("name: x\nsteps: [unclosed\n", encoding="utf-8")
    for args in (
        ("cutover", "plan", "set", str(broken), "--reason", "r"),
        ("cutover", "advance", "--plan", str(broken)),
    ):
        code, _, err = cli(*args)
        assert code == 2 and err.count("\n") == 1 and "not valid YAML (line" in err and "Traceback" not in err
    code, out, _ = cli("cutover", "history")
    assert code == 0 and "log verified: 2 decisions" in out


def test_plan_set_is_shown_by_history_and_a_mismatching_plan_flag_points_at_it(cli: Cli) -> None:
    cli.start()
    code, _, err = cli("cutover", "advance", "--plan", "default", "--evidence", cli.evidence("g"))
    assert code == 2 and "the rollout runs plan quick" in err and "cutover plan set" in err
    code, out, _ = cli("cutover", "plan", "set", "default", "--reason", "back to the shipped plan")
    assert code == 0 and "in force from decision #3" in out and "WEAKENED" not in out
    code, out, _ = cli("cutover", "history")
    assert "plan set at shadow" in out and "back to the shipped plan" in out
    assert "[plan clickstream-default sha256:" in out and ", was quick sha256:" in out  # notes, not markup
    code, out, _ = cli("cutover", "plan", "show")
    assert code == 0 and "(shipped default)" in out and "name: clickstream-default" in out
