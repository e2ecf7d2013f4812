"""``segshadow compare``: the parity of a legacy and a stream output of the same events (SPEC §5, §6).

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


def compare(
    events: Annotated[Path, typer.Option("--events", help="the events file both sides ran on (SPEC §1)")],
    legacy: Annotated[Path, typer.Option("--legacy", help="legacy output (SPEC §3 lines + .meta.json)")],
    stream: Annotated[Path, typer.Option("--stream", help="stream output (SPEC §4 lines + .meta.json)")],
    rules: Annotated[str, typer.Option("--rules", help="rule set: clickstream, risk, name@vN or a file")],
    out: Annotated[
        Path,
        typer.Option("--out", help="directory for parity.json, mismatches.jsonl, report.html", callback=writable_dir),
    ],
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
) -> None:
    """Compare a legacy and a stream output: agreement, causes, latency; write the parity report."""
    check_fail_on(fail_on)
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
            legacy,
            stream,
            load_ruleset(rules),
            every_ms,
            flags,
            out,
            noise_legacy=noise_legacy,
            noise_stream=noise_stream,
            stream_latency=stream_latency,
        )
    typer.echo(f"{result.summary_line()} -> {out / 'report.html'}")
    fail_on_verdict(result.verdict, result.summary_line(), fail_on)


def register(app: typer.Typer) -> None:
    """Add ``segshadow compare`` to the top-level app."""
    app.command("compare")(compare)
