"""Outputs made elsewhere (issue 18, item 4): sidecar-less JSON Lines, CSV, Parquet and SQL outputs compare
exactly as the canonical files they were made from, and the run says their provenance was declared."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from compare.comparison import run_comparison
from compare.foreign import ForeignOutput
from legacy_batch.job import run_legacy
from segments.db import normalize_url
from segments.errors import InputError
from segments.rules import load_ruleset
from segments.sqlstore import SqlStore
from segments.workloads import write_workload
from segshadow.cli import main
from streaming.pipeline import StreamConfig
from streaming.replay import run_replay

CLICK = load_ruleset("clickstream")
PARITY_KEYS = ("pairs", "agree", "mismatch", "by_cause", "per_segment", "as_of_rounds", "agreement_over_time")


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A canonical run (legacy SQL job and Beam replay, with sidecars) over a late clickstream workload."""
    d = tmp_path_factory.mktemp("canonical")
    events = d / "events.jsonl"
    write_workload("clickstream", events, users=150, minutes=25, seed=7, late_share=0.15)
    with SqlStore.open(f"sqlite:///{d / 'db.sqlite'}") as store:
        run_legacy(events, CLICK, 300_000, d / "legacy.jsonl", store)
    run_replay(events, d / "stream.jsonl", StreamConfig(CLICK))
    return d


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _parity(result: dict) -> dict:
    return {key: result[key] for key in PARITY_KEYS}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_sidecarless_csv_and_parquet_compare_to_the_same_parity(canonical: Path, tmp_path: Path) -> None:
    """CSV (one row per segment for legacy, renamed columns, epoch-ms times) and Parquet (lists, timestamps)
    copies of a canonical run give exactly the canonical parity; provenance is recorded as declared."""
    events = canonical / "events.jsonl"
    expected = run_comparison(
        events, canonical / "legacy.jsonl", canonical / "stream.jsonl", CLICK, out_dir=tmp_path / "canon"
    ).to_dict()
    assert expected["pairs"] > 100 and expected["mismatch"] > 0  # a comparison with content

    legacy = _lines(canonical / "legacy.jsonl")
    stream = _lines(canonical / "stream.jsonl")
    legacy_csv, stream_csv = tmp_path / "legacy.csv", tmp_path / "stream.csv"
    _write_csv(
        legacy_csv,
        ["run_at", "customer", "seg"],
        [[row["as_of"], row["user_id"], name] for row in legacy for name in row["segments"]],
    )
    from segments.timeutil import parse_rfc3339_ms

    _write_csv(
        stream_csv,
        ["uid", "segs", "at", "rev"],
        [
            [t["user_id"], "|".join(t["segments"]), parse_rfc3339_ms(t["effective_time"]), t["revision"]]
            for t in stream
        ],
    )
    legacy_pq, stream_pq = tmp_path / "legacy.parquet", tmp_path / "stream.parquet"
    ts = pa.timestamp("ms", "UTC")
    pq.write_table(
        pa.table(
            {
                "as_of": pa.array([parse_rfc3339_ms(r["as_of"]) for r in legacy], pa.int64()).cast(ts),
                "user_id": [r["user_id"] for r in legacy],
                "segments": pa.array([r["segments"] for r in legacy], pa.list_(pa.string())),
            }
        ),
        legacy_pq,
    )
    pq.write_table(
        pa.table(
            {
                "user_id": [t["user_id"] for t in stream],
                "segments": pa.array([t["segments"] for t in stream], pa.list_(pa.string())),
                "effective_time": pa.array([parse_rfc3339_ms(t["effective_time"]) for t in stream]).cast(ts),
                "revision": [t["revision"] for t in stream],
            }
        ),
        stream_pq,
    )
    csv_result = run_comparison(
        events,
        legacy_csv,
        stream_csv,
        CLICK,
        every_ms=300_000,
        out_dir=tmp_path / "csv",
        legacy_foreign=ForeignOutput(
            "csv", legacy_csv, columns={"as_of": "run_at", "user_id": "customer", "segment": "seg"}
        ),
        stream_foreign=ForeignOutput(
            "csv", stream_csv, columns={"user_id": "uid", "segments": "segs", "effective_time": "at", "revision": "rev"}
        ),
    ).to_dict()
    parquet_result = run_comparison(
        events,
        legacy_pq,
        stream_pq,
        CLICK,
        every_ms=300_000,
        out_dir=tmp_path / "parquet",
        legacy_foreign=ForeignOutput("parquet", legacy_pq),
        stream_foreign=ForeignOutput("parquet", stream_pq),
    ).to_dict()
    for got, name in ((csv_result, "csv"), (parquet_result, "parquet")):
        assert _parity(got) == _parity(expected), name
        assert got["provenance"]["legacy"]["source"] == "declared"
        assert got["provenance"]["stream"]["source"] == "declared"
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        assert manifest["provenance"]["legacy"]["source"] == "declared"
        assert "legacy_meta" not in manifest["artifacts"] and "stream_meta" not in manifest["artifacts"]
        assert "not verified" in (tmp_path / name / "report.html").read_text()
        assert "not verified" in (tmp_path / name / "summary.md").read_text()
    assert expected["provenance"]["legacy"]["source"] == "sidecar"
    assert "not verified" not in (tmp_path / "canon" / "report.html").read_text()


def test_legacy_from_a_sql_query_and_the_command_line(
    canonical: Path, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``compare --legacy-query ... --database-url`` and ``--stream-format jsonl`` (no sidecar) through the
    command line give the canonical parity; the query's rows are kept in the run directory and sealed."""
    events = canonical / "events.jsonl"
    expected = run_comparison(
        events, canonical / "legacy.jsonl", canonical / "stream.jsonl", CLICK, out_dir=tmp_path / "canon"
    ).to_dict()
    legacy = _lines(canonical / "legacy.jsonl")
    from segments.timeutil import parse_rfc3339_ms

    engine = sa.create_engine(normalize_url(database_url))
    table = "byo_legacy_" + tmp_path.name.replace("-", "_")[-20:]
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {table} (as_of BIGINT, user_id TEXT, segment TEXT)"))
        connection.execute(
            sa.text(f"INSERT INTO {table} VALUES (:t, :u, :s)"),
            [
                {"t": parse_rfc3339_ms(r["as_of"]), "u": r["user_id"], "s": name}
                for r in legacy
                for name in r["segments"]
            ],
        )
    stream_copy = tmp_path / "stream_copy.jsonl"
    stream_copy.write_text((canonical / "stream.jsonl").read_text())  # no sidecar beside it
    out = tmp_path / "sql"
    try:
        try:
            main(
                [
                    "compare", "--events", str(events), "--rules", "clickstream", "--out", str(out),
                    "--legacy-query", f"SELECT as_of, user_id, segment FROM {table}", "--database-url", database_url,
                    "--stream", str(stream_copy), "--stream-format", "jsonl", "--every", "5m",
                ]
            )  # fmt: skip
            code = 0
        except SystemExit as done:
            code = int(done.code or 0)
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()
    captured = capsys.readouterr()
    assert code == (1 if expected["verdict"] == "defects" else 0), captured.err
    got = json.loads((out / "parity.json").read_text())
    assert _parity(got) == _parity(expected)
    assert got["provenance"]["legacy"]["format"] == "sql"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"]["legacy"]["path"] == "legacy.query.jsonl"


def test_a_missing_column_is_one_named_refusal(canonical: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A column flag naming a column the file lacks: exit 2, one line naming it and the columns found."""
    bad = tmp_path / "legacy.csv"
    _write_csv(bad, ["as_of", "user_id", "segment"], [["2024-01-01T00:05:00Z", "u1", "high_value"]])
    with pytest.raises(InputError, match="no column 'when' for as_of"):
        run_comparison(
            canonical / "events.jsonl",
            bad,
            canonical / "stream.jsonl",
            CLICK,
            legacy_foreign=ForeignOutput("csv", bad, columns={"as_of": "when"}),
        )
    with pytest.raises(SystemExit) as done:
        main(
            [
                "compare", "--events", str(canonical / "events.jsonl"), "--rules", "clickstream",
                "--out", str(tmp_path / "o"), "--legacy", str(bad), "--legacy-columns", "as_of=when",
                "--stream", str(canonical / "stream.jsonl"),
            ]
        )  # fmt: skip
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no column 'when' for as_of" in err, err
