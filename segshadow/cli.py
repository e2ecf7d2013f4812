"""The ``segshadow`` command: wires the parts; every failure ends in one line on stderr and an exit code.

Exit codes (SPEC §6): 0 done; 1 a gate or check failed, defects found, or a run
failed part-way; 2 bad usage or unreadable input; 3 a gate is inconclusive; 130
interrupted. ``main`` turns each way a command can fail into ``segshadow: error: ...``:

- the CLI framework's usage errors (unknown command or option, a missing or bad
  option value, a value outside its range) -> exit 2;
- ``SegshadowError`` -> its own exit code, also when Beam wrapped it (a DoFn's
  error re-raised by the runner keeps the original in its ``__context__``);
- a database or Redis error that escaped a run (SQLAlchemy's ``DBAPIError``,
  redis-py's ``RedisError``) -> exit 1, naming which store failed;
- any other exception -> exit 1, naming its type and message.

For the last two the full traceback, with the log records captured during the
run, goes to a log file that the line names: ``segshadow-error.log`` in the
``--out`` directory when the command was given an existing one, else
``logs/`` in the data directory (``--data-dir``, ``SEGSHADOW_DATA_DIR``,
``.segshadow``), else a temporary file. ``segshadow --debug`` (or
``SEGSHADOW_DEBUG=1``) prints the traceback and every log record instead.

Logging: while a command runs, records go to that capture and not to stderr,
except segshadow's own warnings (a retry, a journaled write), which print as
``segshadow: warning: ...`` one line each.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

try:  # typer 0.2x vendors click as typer._click; earlier versions use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]

# Beam logs this at import on every machine without the GCP extras; it is noise for segshadow's users.
logging.getLogger().addFilter(lambda record: "apitools not found" not in record.getMessage())

from segments.config import DATA_DIR_ENV  # noqa: E402
from segments.errors import SegshadowError  # noqa: E402
from segshadow import cmd_compare, cmd_data, cmd_doctor, cmd_legacy, cmd_rollout, cmd_shadow, cmd_stream  # noqa: E402
from segshadow.common import plain_help  # noqa: E402

DEBUG_ENV = "SEGSHADOW_DEBUG"
LOG_NAME = "segshadow-error.log"
_CAPTURED_RECORDS = 5_000  # the newest log records kept for the error log (older ones are dropped)
_MAX_MESSAGE = 300  # characters of an exception's first line shown on the one line
_BEAM_STEP = re.compile(r" \[while running '[^']*'\]")

app = typer.Typer(
    name="segshadow",
    help="Shadow-mode migration harness: legacy SQL batch segments vs an Apache Beam stream.",
    no_args_is_help=True, rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class Invocation:
    """What ``main`` learns about a run while it goes: the global options (passed to click as ``obj``)."""

    debug: bool = False
    records: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_CAPTURED_RECORDS))


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug/--no-debug",
            help=f"print the traceback of an unexpected failure instead of logging it; env {DEBUG_ENV}",
        ),
    ] = False,
) -> None:
    """Shadow-mode migration harness: legacy SQL batch segments vs an Apache Beam stream."""
    if debug and isinstance(ctx.obj, Invocation):
        ctx.obj.debug = True


@app.command("version")
def version() -> None:
    """Print the segshadow version."""
    from importlib.metadata import version as dist_version

    typer.echo(dist_version("segshadow"))


for part in (cmd_data, cmd_legacy, cmd_stream, cmd_compare, cmd_shadow, cmd_rollout, cmd_doctor):
    part.register(app)
plain_help(app)


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with its code; a failure prints one line on stderr (see the module doc)."""
    args = list(sys.argv[1:] if argv is None else argv)
    run = Invocation(debug=os.environ.get(DEBUG_ENV, "") not in ("", "0"))
    with _logging_to(run):
        code = _run(args, run)
    sys.exit(code)


def _run(args: list[str], run: Invocation) -> int:
    try:
        code = app(args=args, prog_name="segshadow", standalone_mode=False, obj=run)
    except click_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        return _say(f"{_where(exc.ctx)}: a command is required (listed above)", 2)
    except click_errors.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _say(f"{_where(exc.ctx)}: {_one_line(exc.format_message())}{hint}", 2)
    except click_errors.FileError as exc:
        return _say(_one_line(exc.format_message()), 2)
    except click_errors.ClickException as exc:
        return _say(_one_line(exc.format_message()), exc.exit_code)
    except typer.Abort:
        return _say("interrupted", 130, prefix="segshadow: ")
    except KeyboardInterrupt:
        return _say("interrupted", 130, prefix="segshadow: ")
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _say("output closed early (broken pipe)", 1)
    except Exception as exc:
        return _failed(exc, args, run)
    if code == 130:
        return _say("interrupted", 130, prefix="segshadow: ")
    return code if isinstance(code, int) else 0


def _failed(exc: Exception, args: Sequence[str], run: Invocation) -> int:
    """The one line for an exception that escaped a command; tracebacks go to a log (or stderr with --debug)."""
    known = _in_chain(exc, SegshadowError) or _remote_error(exc)
    if isinstance(known, SegshadowError):
        if run.debug:
            traceback.print_exception(exc)
        return _say(_one_line(str(known)), known.exit_code)
    store = _store_error(exc)
    if store is not None:
        what, cause = store
        message = f"{what} failed during the run: {_describe(cause)}"
    else:
        message = f"unexpected {_describe(next(_chain(exc), exc))}"
    if run.debug:
        for record in run.records:
            print(record, file=sys.stderr)
        traceback.print_exception(exc)
        return _say(message, 1)
    log = _write_log(exc, args, run)
    return _say(f"{message} (traceback in {log})" if log else f"{message} (no log file could be written)", 1)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, skipping Beam's re-raised copies.

    Beam re-raises a DoFn's error as a new exception (the same type with the step's
    name appended, or a ``RuntimeError`` when that type cannot be rebuilt), tagged
    ``_tagged_with_step`` and raised while handling the original, so the original
    follows it in the chain. A context suppressed with ``raise ... from None`` is not followed.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not getattr(current, "_tagged_with_step", False):
            yield current
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__


def _in_chain(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s chain (see ``_chain``), if any."""
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


_REMOTE = re.compile(r"^(?:\w+: )?segments\.errors\.(\w+): (.+)$", re.MULTILINE)


def _remote_error(exc: BaseException) -> SegshadowError | None:
    """A ``SegshadowError`` that a Beam worker process raised, from the traceback text the runner passed on.

    Across a process boundary only text comes back (a ``RuntimeError`` holding the
    worker's traceback); its last ``segments.errors.Name: message`` line is rebuilt.
    """
    from segments import errors

    found = _REMOTE.findall(str(exc))
    if not found:
        return None
    name, message = found[-1]
    kind = getattr(errors, name, None)
    if not (isinstance(kind, type) and issubclass(kind, SegshadowError)):
        return None
    rebuilt = SegshadowError(message)
    rebuilt.exit_code = kind.exit_code
    return rebuilt


def _store_error(exc: BaseException) -> tuple[str, BaseException] | None:
    """("the database" | "Redis", the error) when a store's client error is in ``exc``'s chain."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None:
        found = _in_chain(exc, sa_exc.DBAPIError)
        if found is not None:
            return "the database", getattr(found, "orig", None) or found
    redis_exc = sys.modules.get("redis.exceptions")
    if redis_exc is not None:
        found = _in_chain(exc, redis_exc.RedisError)
        if found is not None:
            return "Redis", found
    return None


def _describe(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        lines = lines[-1:]  # a worker's traceback as text: its last line says what was raised
    first = _one_line(lines[0] if lines else "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _one_line(text: str) -> str:
    flat = " ".join(_BEAM_STEP.sub("", text).split())
    return flat if len(flat) <= _MAX_MESSAGE else flat[: _MAX_MESSAGE - 3] + "..."


def _where(ctx: click_errors.Context | None) -> str:
    """The command path after the program's name (``legacy run``), or ``usage`` at the top level."""
    path = ctx.command_path.split(" ", 1) if ctx is not None else []
    return path[1] if len(path) > 1 else "usage"


def _say(message: str, code: int, prefix: str = "segshadow: error: ") -> int:
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    return code


def _option(args: Sequence[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` or ``--name=VALUE`` before a ``--`` (where Beam's options start)."""
    value = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def log_candidates(args: Sequence[str], environ: dict[str, str] | os._Environ[str]) -> list[Path]:
    """Where the error log may go, best first: the ``--out`` directory, the data directory's ``logs/``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    found: list[Path] = []
    out = _option(args, "--out")
    if out and Path(out).is_dir():
        found.append(Path(out) / LOG_NAME)
    data_dir = _option(args, "--data-dir") or environ.get(DATA_DIR_ENV) or ".segshadow"
    found.append(Path(data_dir) / "logs" / f"error-{stamp}-{os.getpid()}.log")
    return found


def _write_log(exc: BaseException, args: Sequence[str], run: Invocation) -> Path | None:
    text = "".join(
        [
            f"segshadow {' '.join(args)}\n",
            f"failed at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n\n",
            *traceback.format_exception(exc),
            "\nlog records (newest last):\n" if run.records else "",
            *(record + "\n" for record in run.records),
        ]
    )
    for path in log_candidates(args, os.environ):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", errors="backslashreplace")
            return path.resolve()
        except OSError:
            continue
    try:
        fd, name = tempfile.mkstemp(prefix="segshadow-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(text)
        return Path(name)
    except OSError:
        return None


class _Capture(logging.Handler):
    """Keeps formatted records (tracebacks included) for the error log; with --debug, prints them."""

    def __init__(self, run: Invocation) -> None:
        super().__init__(logging.DEBUG)
        self.run = run
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            text = self.format(record)
            if self.run.debug:
                print(text, file=sys.stderr, flush=True)
            else:
                self.run.records.append(text)


class _Warnings(logging.Handler):
    """segshadow's own warnings, one line each on stderr (their tracebacks stay in the capture)."""

    def __init__(self, run: Invocation) -> None:
        super().__init__(logging.WARNING)
        self.run = run

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("segshadow") and not self.run.debug

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            level = "warning" if record.levelno < logging.ERROR else "error"
            print(f"segshadow: {level}: {_one_line(record.getMessage())}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _logging_to(run: Invocation) -> Iterator[None]:
    """While a command runs, the root logger feeds the capture and nothing else writes log records to a terminal.

    A handler that ``logging.basicConfig`` put on the root logger (Beam calls it; so
    does any ``logging.warning`` before one exists) is set aside for the run, so Beam's
    own error logs (a traceback for every failed DoFn) do not reach stderr. Other
    handlers (a test's log capture) stay.
    """
    root = logging.getLogger()
    terminals = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    aside = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in terminals]
    handlers: list[logging.Handler] = [_Capture(run), _Warnings(run)]
    level = root.level
    for terminal in aside:
        root.removeHandler(terminal)
    for handler in handlers:
        root.addHandler(handler)
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        for terminal in aside:
            root.addHandler(terminal)
        root.setLevel(level)


if __name__ == "__main__":
    main()
