"""Every failure of the command line ends in one line on stderr and a documented exit code (issue 14, item 2).

Usage errors of the CLI framework, inputs that used to escape as tracebacks, values
refused at parse time, errors raised inside Beam, and unexpected exceptions (one
line naming a log file that holds the traceback; ``--debug`` prints it instead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import segments.importers
from segshadow.cli import LOG_NAME, log_candidates, main

ROOT = Path(__file__).resolve().parents[2]
EVENTS = [
    {"event_id": "a1", "user_id": "u1", "event_time": "2024-01-01T00:00:00Z", "kind": "view"},
    {"event_id": "a2", "user_id": "u1", "event_time": "2024-01-01T00:01:00Z", "kind": "purchase", "amount": 200},
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the command line in-process; (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), f"not one line: {err!r}"
    assert err.startswith("segshadow: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EVENTS), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["legacy", "run", "--bogus"], "--bogus"),
        (["workload", "risk", "--users", "many", "--out", "w.jsonl"], "'--users'"),
        (["rules", "show"], "Missing argument"),
        (["legacy"], "a command is required"),
    ],
)
def test_usage_errors_of_the_framework_are_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in one_line(err)


@pytest.mark.parametrize("out", ["{tmp}", "/proc/segshadow-test/out.jsonl", "{tmp}/events.jsonl/x.jsonl"])
def test_an_unusable_out_file_is_refused_before_the_run(
    out: str, tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = out.format(tmp=tmp_path)
    db = tmp_path / "x.db"
    code, _, err = run(
        ["legacy", "run", "--events", str(events), "--rules", "clickstream", "--out", target,
         "--database-url", f"sqlite:///{db}"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "'--out'" in one_line(err)
    assert not db.exists(), "refused at parse time: nothing was run"


def test_an_out_directory_that_is_a_file_is_refused(events: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["shadow", "run", "--events", str(events), "--out", str(events)], capsys)
    assert code == 2 and "not a directory" in one_line(err)


def test_binary_and_deeply_nested_rules_and_plans_are_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 8)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    indented = tmp_path / "indented.yaml"
    indented.write_text("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 5000)), encoding="utf-8")
    for path, needle in ((binary, "not UTF-8"), (deep, "nested too deeply"), (indented, "nested too deeply")):
        code, _, err = run(["rules", "show", str(path)], capsys)
        assert code == 2 and needle in one_line(err) and str(path) in err
        code, _, err = run(["gate", "check", "--plan", str(path), "--evidence", str(tmp_path)], capsys)
        assert code == 2 and needle in one_line(err) and str(path) in err


def test_a_csv_field_over_the_csv_limit_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.csv"
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    big.write_text(header + '536365,85123A,"' + "x" * 1_000_000 + '",6,12/1/2010 8:26,2.55,17850,UK\n', "utf-8")
    code, _, err = run(["import", "uci-online-retail", str(big), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "field larger than field limit" in one_line(err)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["stream", "replay", "--events", "{events}", "--rules", "clickstream", "--out", "{tmp}/s.jsonl",
          "--shards", "0"], "'--shards'"),
        (["shadow", "run", "--events", "{events}", "--out", "{tmp}/run", "--shards", "0"], "'--shards'"),
        (["shadow", "run", "--events", "{events}", "--out", "{tmp}/run", "--shards", "4097"], "'--shards'"),
        (["serve", "--port", "99999"], "'--port'"),
        (["serve", "--port", "0"], "'--port'"),
        (["cutover", "watch", "--evidence", "{tmp}", "--interval", "0s"], "'--interval'"),
        (["cutover", "watch", "--evidence", "{tmp}", "--interval", "99999999999d"], "'--interval'"),
        (["cutover", "watch", "--evidence", "{tmp}", "--iterations", "-1"], "'--iterations'"),
        (["cutover", "advance", "--percent", "0"], "'--percent'"),
        (["cutover", "advance", "--percent", "150"], "'--percent'"),
        (["cutover", "advance", "--percent", "nan"], "'--percent'"),
        (["gate", "check", "--evidence", "{tmp}", "--percent", "-5"], "'--percent'"),
        (["shadow", "run", "--live", "--workload", "risk", "--out", "{tmp}/run", "--rate", "0"], "'--rate'"),
        (["shadow", "run", "--live", "--workload", "risk", "--out", "{tmp}/run", "--duration", "0s"], "'--duration'"),
        (["shadow", "run", "--workload", "risk", "--out", "{tmp}/run", "--users", "0"], "'--users'"),
        (["stream", "live", "--rules", "clickstream", "--poll", "0ms"], "'--poll'"),
        (["stream", "live", "--rules", "clickstream", "--duration", "1" + "0" * 5000 + "ms"], "too many digits"),
        (["serve", "--stream-stale-after", "0s"], "'--stream-stale-after'"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_refused_at_parse_time(
    argv: list[str], needle: str, tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "x.db"
    args = [a.format(tmp=tmp_path, events=events) for a in argv] + ["--database-url", f"sqlite:///{db}"]
    code, _, err = run(args, capsys)
    assert code == 2 and needle in one_line(err)
    assert not db.exists() and not (tmp_path / "run").exists(), "refused before any work"


@pytest.mark.parametrize("text", ["", "\n\n", "not json\n{}\n[1]\n"])
def test_stream_replay_of_a_file_without_a_valid_event_is_exit_2(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text, encoding="utf-8")
    out = tmp_path / "s.jsonl"
    code, _, err = run(
        ["stream", "replay", "--events", str(bad), "--rules", "clickstream", "--out", str(out),
         "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "no valid events" in one_line(err) and not out.exists()


def _plant(monkeypatch: pytest.MonkeyPatch, failure: Callable[[Path], object]) -> None:
    """Make ``import rees46`` run ``failure`` (a stand-in for a bug or a fault deep in a run)."""
    monkeypatch.setitem(segments.importers.IMPORTERS, "rees46", failure)


def _boom(path: Path) -> object:
    raise ZeroDivisionError("planted")


def test_an_unexpected_exception_is_one_line_exit_1_with_its_traceback_in_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _plant(monkeypatch, _boom)
    monkeypatch.delenv("SEGSHADOW_DEBUG", raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("SEGSHADOW_DATA_DIR", str(data))
    code, _, err = run(["import", "rees46", "x.csv", "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 1
    assert one_line(err).startswith("segshadow: error: unexpected ZeroDivisionError: planted (traceback in ")
    log = Path(err.rsplit("traceback in ", 1)[1].rstrip(")\n"))
    assert log.parent == (data / "logs").resolve()
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "_boom" in text and "import rees46" in text


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_prints_the_traceback_instead(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _plant(monkeypatch, _boom)
    monkeypatch.setenv("SEGSHADOW_DATA_DIR", str(tmp_path / "d"))
    argv = ["import", "rees46", "x.csv", "--out", str(tmp_path / "o.jsonl")]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("SEGSHADOW_DEBUG", "1")
    code, _, err = run(argv, capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "_boom" in err
    assert err.splitlines()[-1] == "segshadow: error: unexpected ZeroDivisionError: planted"
    assert not (tmp_path / "d" / "logs").exists()


def test_the_log_goes_to_an_existing_out_directory_first(tmp_path: Path) -> None:
    args = ["shadow", "run", "--out", str(tmp_path), "--data-dir", str(tmp_path / "d")]
    first, second = log_candidates(args, {})
    assert first == tmp_path / LOG_NAME and second.parent == tmp_path / "d" / "logs"
    file_out = ["legacy", "run", "--out", str(tmp_path / "f.jsonl")]
    assert log_candidates(file_out, {})[0].parent == Path(".segshadow/logs")
    beam_options = ["stream", "replay", "--out", str(tmp_path / "f.jsonl"), "--", "--out", str(tmp_path)]
    assert log_candidates(beam_options, {"SEGSHADOW_DATA_DIR": "/x"})[0].parent == Path("/x/logs")


# Raised inside a Beam DoFn, as the stream's sinks and sources raise them; Beam re-raises a copy.
_IN_BEAM = """
import sys
from segshadow.cli import main  # first, as the entry point does
import apache_beam as beam
import segments.importers

def fail(_):
    {raise_it}

def importer(path):
    with beam.Pipeline(runner="FnApiRunner") as p:
        p | beam.Create([1]) | beam.Map(fail)

segments.importers.IMPORTERS["rees46"] = importer
main(["import", "rees46", "x.csv", "--out", sys.argv[1]])
"""
_STORE_UNAVAILABLE = (
    "from segments.errors import StoreUnavailable; "
    "raise StoreUnavailable('Redis', 'redis://127.0.0.1:1/0', ConnectionError('refused'))"
)
_SQL_LOST = "import sqlalchemy as sa; sa.create_engine('sqlite:////nonexistent-dir/x.db').connect()"
_REDIS_LOST = "import redis; redis.Redis(port=1, socket_connect_timeout=1).ping()"


@pytest.mark.parametrize(
    ("raise_it", "code", "line"),
    [
        (_STORE_UNAVAILABLE, 2, "cannot reach Redis at redis://127.0.0.1:1/0: ConnectionError: refused\n"),
        (_SQL_LOST, 1, "the database failed during the run: OperationalError: unable to open database file"),
        (_REDIS_LOST, 1, "Redis failed during the run: ConnectionError: Error 111 connecting to"),
    ],
)  # fmt: skip
def test_errors_raised_inside_beam_are_unwrapped_to_one_line(
    raise_it: str, code: int, line: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SEGSHADOW_DEBUG"}
    env["SEGSHADOW_DATA_DIR"] = str(tmp_path / "d")
    done = subprocess.run(
        [sys.executable, "-c", _IN_BEAM.format(raise_it=raise_it), str(tmp_path / "o.jsonl")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("segshadow: error: " + line), done.stderr
    if code == 1:
        log = Path(done.stderr.rsplit("traceback in ", 1)[1].rstrip(")\n")).read_text(encoding="utf-8")
        assert "apache_beam" in log and "log records" in log, "Beam's own error log is kept in the file"


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """uvicorn's own start-up failure was exit 3 (a gate's 'inconclusive') after two lines."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(["serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'x.db'}"], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in one_line(err)
    assert not (tmp_path / "x.db").exists()


def test_an_error_from_a_beam_worker_process_is_rebuilt_from_its_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Across a process boundary Beam passes only the worker's traceback, as a RuntimeError's text."""
    text = (
        "Traceback (most recent call last):\n  File \"sinks.py\", line 63, in setup\n"
        "segments.errors.InputError: events.jsonl: no valid events (1 lines, 1 rejected)\n\n"
        "During handling of the above exception, another exception occurred:\n"
        "RuntimeError: segments.errors.StoreUnavailable: cannot reach Redis at redis://h:1/0"
        " [while running 'ToRedis']\n"
    )

    def worker_failed(path: Path) -> object:
        raise RuntimeError(text)

    _plant(monkeypatch, worker_failed)
    code, _, err = run(["import", "rees46", "x.csv", "--out", "o.jsonl"], capsys)
    assert code == 2 and one_line(err) == "segshadow: error: cannot reach Redis at redis://h:1/0\n"
