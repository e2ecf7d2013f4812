"""``segshadow compare``: the parity of a legacy and a stream output of the same events (SPEC §5, §6).

Outputs made elsewhere (``compare.foreign``): ``--legacy-format`` / ``--stream-format``
(jsonl, csv, parquet) read a side with no sidecar, ``--legacy-columns`` /
``--stream-columns`` name its columns, ``--legacy-query`` reads legacy from SQL
(``--database-url``). What a sidecar would state comes from ``--every``,
``--max-out-of-orderness``, ``--allowed-lateness`` and ``--rules`` (or
``--legacy-rules`` / ``--stream-rules`` when a side ran another rule set), and the
report and manifest record that provenance as declared, not verified.

Exit 0 when the comparison is done and its verdict passes ``--fail-on``; 1 when the
verdict is ``defects`` (``--fail-on defects``, the default), any mismatch
(``--fail-on mismatch``), never (``--fail-on never``), after every output is written
and sealed; 2 with one line for inputs that cannot be compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compare.comparison import run_comparison
from compare.foreign import LEGACY_COLUMNS, STREAM_COLUMNS, ForeignOutput, foreign_format, parse_columns
from compare.inputs import GateFlags
from compare.parity import FAIL_ON, fails
from segments.errors import CheckFailed, UsageError
from segments.rules import load_ruleset
from segshadow.common import busy, duration, writable_dir

FailOnOpt = Annotated[
    str,
    typer.Option(
        "--fail-on", help="exit 1 on: defects (unexplained mismatches, default), mismatch (any), never"
    ),
]


def fail_on_verdict(verdict: str, summary: str, fail_on: str) -> None:
    """Raise ``CheckFailed`` (exit 1) with ``summary`` when ``verdict`` fails under ``fail_on``."""
    if fails(verdict, fail_on):
        raise CheckFailed(f"{summary} (--fail-on {fail_on})")


def check_fail_on(fail_on: str) -> None:
    """``UsageError`` for a ``--fail-on`` value that is not one of ``FAIL_ON`` (before anything runs)."""
    if fail_on not in FAIL_ON:
        raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")


def _foreign(
    side: str,
    path: Path | None,
    format_given: str | None,
    columns: str | None,
    sep: str,
    query: str | None = None,
    database_url: str | None = None,
) -> ForeignOutput | None:
    """The side as an output made elsewhere, or None for a segshadow output with its sidecar."""
    allowed = LEGACY_COLUMNS if side == "legacy" else STREAM_COLUMNS
    mapping = parse_columns(columns, allowed, f"--{side}-columns")
    if query is not None:
        if path is not None:
            raise UsageError("give --legacy or --legacy-query, not both")
        if not database_url:
            raise UsageError("--legacy-query needs --database-url")
        return ForeignOutput("sql", query=query, database_url=database_url, columns=mapping, sep=sep)
    if path is None:
        raise UsageError(f"--{side} is required")
    if format_given is None and not mapping:
        return None
    return ForeignOutput(foreign_format(path, format_given), path=path, columns=mapping, sep=sep)


def compare(
    events: Annotated[Path, typer.Option("--events", help="the events file both sides ran on (SPEC §1)")],
    stream: Annotated[Path, typer.Option("--stream", help="stream output (SPEC §4 lines + .meta.json)")],
    rules: Annotated[str, typer.Option("--rules", help="rule set: clickstream, risk, name@vN or a file")],
    out: Annotated[
        Path,
        typer.Option("--out", help="directory for parity.json, mismatches.jsonl, report.html", callback=writable_dir),
    ],
    legacy: Annotated[
        Path | None, typer.Option("--legacy", help="legacy output (SPEC §3 lines + .meta.json, or see --legacy-format)")
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="legacy as-of interval (default: the legacy sidecar's, else 5m)")
    ] = None,
    max_out_of_orderness: Annotated[
        str | None,
        typer.Option("--max-out-of-orderness", help="stream watermark lag (default: its sidecar's, else 5s)"),
    ] = None,
    allowed_lateness: Annotated[
        str | None,
        typer.Option("--allowed-lateness", help="stream allowed lateness (default: its sidecar's, else 60s)"),
    ] = None,
    noise_legacy: Annotated[
        Path | None, typer.Option("--noise-legacy", help="a second legacy output, for the noise floor")
    ] = None,
    noise_stream: Annotated[
        Path | None, typer.Option("--noise-stream", help="a second stream output, for the noise floor")
    ] = None,
    stream_latency: Annotated[
        Path | None, typer.Option("--stream-latency", help="live stream latencies, one ms value per line")
    ] = None,
    fail_on: FailOnOpt = "defects",
    legacy_rules: Annotated[
        str | None, typer.Option("--legacy-rules", help="the rule set legacy ran, when not --rules")
    ] = None,
    stream_rules: Annotated[
        str | None, typer.Option("--stream-rules", help="the rule set the stream ran, when not --rules")
    ] = None,
    legacy_format: Annotated[
        str | None,
        typer.Option("--legacy-format", help="legacy has no sidecar: jsonl, csv or parquet (provenance declared)"),
    ] = None,
    stream_format: Annotated[
        str | None,
        typer.Option("--stream-format", help="the stream has no sidecar: jsonl, csv or parquet (provenance declared)"),
    ] = None,
    legacy_columns: Annotated[
        str | None,
        typer.Option("--legacy-columns", help="as_of=COL,user_id=COL,segments=COL or segment=COL (no sidecar)"),
    ] = None,
    stream_columns: Annotated[
        str | None,
        typer.Option(
            "--stream-columns",
            help="user_id=COL,segments=COL,effective_time=COL[,revision=,emitted_at=,cause=] (no sidecar)",
        ),
    ] = None,
    segments_sep: Annotated[
        str, typer.Option("--segments-sep", help="separator of segment names in a text column")
    ] = "|",
    legacy_query: Annotated[
        str | None,
        typer.Option("--legacy-query", help="read legacy from SQL: SELECT as_of, user_id, segment FROM ..."),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="SQLAlchemy URL for --legacy-query")
    ] = None,
) -> None:
    """Compare a legacy and a stream output: agreement, causes, latency; write the parity report."""
    check_fail_on(fail_on)
    if not segments_sep:
        raise UsageError("--segments-sep must not be empty")
    legacy_side = _foreign("legacy", legacy, legacy_format, legacy_columns, segments_sep, legacy_query, database_url)
    stream_side = _foreign("stream", stream, stream_format, stream_columns, segments_sep)
    legacy_path = legacy if legacy is not None else out / "legacy.query.jsonl"
    every_ms = duration(every) if every is not None else None
    if every_ms is not None and every_ms <= 0:
        raise UsageError(f"--every must be positive, not {every!r}")
    flags = GateFlags(
        duration(max_out_of_orderness) if max_out_of_orderness is not None else None,
        duration(allowed_lateness) if allowed_lateness is not None else None,
    )
    with busy("comparing"):
        result = run_comparison(
            events,
            legacy_path,
            stream,
            load_ruleset(rules),
            every_ms,
            flags,
            out,
            noise_legacy=noise_legacy,
            noise_stream=noise_stream,
            stream_latency=stream_latency,
            legacy_rules=load_ruleset(legacy_rules) if legacy_rules is not None else None,
            stream_rules=load_ruleset(stream_rules) if stream_rules is not None else None,
            legacy_foreign=legacy_side,
            stream_foreign=stream_side,
        )
    typer.echo(f"{result.summary_line()} -> {out / 'report.html'}")
    fail_on_verdict(result.verdict, result.summary_line(), fail_on)


def register(app: typer.Typer) -> None:
    """Add ``segshadow compare`` to the top-level app."""
    app.command("compare")(compare)
