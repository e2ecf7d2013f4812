"""``segshadow import|workload|rules``: outputs, printed counts, and exit code 2 with one line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segments.events import load_event_log
from segments.rules import load_ruleset
from segshadow.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command line in-process; (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def test_import_uci_writes_events_and_rejections(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "uci.jsonl"
    source = str(shared_data / "online_retail_10k.csv")
    code, printed, _ = run(["import", "uci-online-retail", source, "--out", str(out)], capsys)
    assert code == 0
    log = load_event_log(out)
    rejected = [json.loads(t) for t in (tmp_path / "uci.jsonl.rejected.jsonl").read_text().splitlines()]
    assert log.rejected == [] and len(log.duplicates) == 0
    assert f"imported {len(log.events)} events" in printed
    assert f"rejected {len(rejected)} (no_customer {len(rejected)})" in printed
    assert len(log.events) + len(rejected) == 10_000
    assert {r["reason"] for r in rejected} == {"no_customer"} and all(r["line"] > 1 and r["raw"] for r in rejected)


def test_import_rees46(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    code, printed, _ = run(["import", "rees46", str(shared_data / "rees46_oct2019_1k.csv"), "--out", str(out)], capsys)
    assert code == 0 and "imported 1000 events" in printed
    assert len(load_event_log(out).events) == 1000


def test_workload_writes_the_file_and_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.jsonl"
    code, printed, _ = run(
        ["workload", "risk", "--users", "200", "--minutes", "20", "--seed", "4", "--out", str(out),
         "--start", "2024-03-01T00:00:00Z"],
        capsys,
    )  # fmt: skip
    assert code == 0
    log = load_event_log(out)
    assert f"{log.lines} lines" in printed and f"{len(log.events)} events" in printed
    assert min(e.event_time for e in log.events) >= 1_709_251_200_000
    again = tmp_path / "again.jsonl"
    run(["workload", "risk", "--users", "200", "--minutes", "20", "--seed", "4", "--out", str(again),
         "--start", "1709251200000"], capsys)  # fmt: skip
    assert again.read_bytes() == out.read_bytes()


def test_rules_show_prints_definition_and_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    risk = load_ruleset("risk")
    code, printed, _ = run(["rules", "show", "risk"], capsys)
    assert code == 0 and risk.digest in printed and "risk_medium" in printed
    code, printed, _ = run(["rules", "show", "risk", "--json"], capsys)
    shown = json.loads(printed)
    assert shown == {"ref": "risk@v1", "digest": risk.digest, "definition": dict(risk.definition)}
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps(shown["definition"]), encoding="utf-8")
    code, printed, _ = run(["rules", "show", str(mine)], capsys)
    assert code == 0 and risk.digest in printed


def test_rules_list_names_the_shipped_sets(capsys: pytest.CaptureFixture[str]) -> None:
    code, printed, _ = run(["rules", "list"], capsys)
    assert code == 0
    assert "clickstream@v1" in printed and "risk@v1" in printed and load_ruleset("clickstream").digest[:12] in printed


def test_rules_list_stored_reads_the_database(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segments.sqlstore import SqlStore

    with SqlStore.open(database_url) as store:
        store.register_ruleset(load_ruleset("risk"))
    code, printed, _ = run(["rules", "list", "--stored", "--database-url", database_url], capsys)
    assert code == 0 and printed.count("risk@v1") == 2 and "stored" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "uci-online-retail", "{tmp}/missing.csv", "--out", "{tmp}/o.jsonl"], "cannot read"),
        (["import", "rees46", "{data}/online_retail_10k.csv", "--out", "{tmp}/o.jsonl"], "missing column"),
        (["import", "uci-online-retail", "{data}/rees46_oct2019_1k.csv", "--out", "{tmp}/o.jsonl"], "missing column"),
        (["workload", "fraud", "--out", "{tmp}/w.jsonl"], "unknown workload 'fraud'"),
        (["workload", "risk", "--users", "0", "--out", "{tmp}/w.jsonl"], "at least 1"),
        (["workload", "risk", "--late-share", "2", "--out", "{tmp}/w.jsonl"], "late_share"),
        (["workload", "risk", "--start", "yesterday", "--out", "{tmp}/w.jsonl"], "--start"),
        (["workload", "risk", "--time-format", "iso", "--out", "{tmp}/w.jsonl"], "time format"),
        (["rules", "show", "fraud"], "unknown rule set 'fraud'"),
        (["rules", "show", "clickstream@v7"], "ships as version 1"),
        (["rules", "show", "{tmp}/bad.yaml"], "rule set: version"),
        (["rules", "show", "{tmp}/missing.yaml"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text("name: mine\nwindow: 10m\n", encoding="utf-8")
    args = [a.format(tmp=tmp_path, data=shared_data) for a in argv]
    code, printed, err = run(args, capsys)
    assert code == 2
    assert err.startswith("segshadow: error: ") and message in err and err.count("\n") == 1, err
    assert "Traceback" not in err and printed == ""
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "w.jsonl").exists(), "no partial output"


def test_usage_errors_from_typer_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(["workload", "risk", "--users", "many", "--out", str(tmp_path / "w.jsonl")], capsys)
    assert code == 2
    code, _, _ = run(["import", "uci-online-retail", "x.csv"], capsys)
    assert code == 2, "--out is required"
