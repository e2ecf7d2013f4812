"""The ``segshadow`` command: wires the parts; turns known errors into one line and exit code 2."""

from __future__ import annotations

import logging
import sys

import typer

# Beam logs this at import on every machine without the GCP extras; it is noise for segshadow's users.
logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())

from segments.errors import SegshadowError  # noqa: E402
from segshadow import cmd_compare, cmd_data, cmd_doctor, cmd_legacy, cmd_rollout, cmd_shadow, cmd_stream  # noqa: E402

app = typer.Typer(
    name="segshadow",
    help="Shadow-mode migration harness: legacy SQL batch segments vs an Apache Beam stream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



@app.callback()
def _root() -> None:
    """Shadow-mode migration harness: legacy SQL batch segments vs an Apache Beam stream."""


@app.command("version")
def version() -> None:
    """Print the segshadow version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("segshadow"))


for part in (cmd_data, cmd_legacy, cmd_stream, cmd_compare, cmd_shadow, cmd_rollout, cmd_doctor):
    part.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; exit 0 done, 1 a check failed, 2 bad usage or input (one line, no traceback).

    Usage errors are reported by typer itself (exit 2); ``SegshadowError`` raised
    by any part becomes ``segshadow: error: ...`` and its exit code.
    """
    try:
        app(args=argv, prog_name="segshadow")
    except SegshadowError as exc:
        print(f"segshadow: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("segshadow: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
