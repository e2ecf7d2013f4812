"""What every command shares: the settings options, duration parsing, parse-time checks, console output.

The parse-time checks are typer callbacks: a value they refuse is a usage error
(one line, exit 2) before the command starts any work. Output paths must be
writable where they point (``writable_file``, ``writable_dir``); ports, shard
counts, rates and sizes are bounded with typer's ``min``/``max``; durations with
``duration_between``, which keeps the text (commands parse it themselves) and
only refuses what is outside its documented range.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from typer.core import TyperArgument, TyperCommand, TyperOption

from segments.config import Settings, resolve_settings
from segments.durations import format_duration_ms, parse_duration_ms
from segments.errors import SegshadowError, UsageError

console = Console(stderr=True)


class PlainUsage(TyperCommand):
    """A command whose usage line names required arguments as ``CSV_PATH``, not typer's ``{CSV_PATH}``,
    and whose options name their value in a word (``--every DURATION``), not by type tag (``<str>``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperOption) and not param.is_flag and not param.count and param.metavar is None:
                param.metavar = _metavar(param)
            elif isinstance(param, TyperArgument):
                # its name already says what it is (CSV_PATH); typer would add "<path>" after it
                param.display_type_rich = _no_type  # type: ignore[method-assign]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [_BRACED.sub(r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


def _no_type(ctx: Any) -> None:
    return None


_BRACED = re.compile(r"\{([^{}]*)\}")


def _metavar(option: TyperOption) -> str:
    """What an option's value is, in a word: N, NUMBER, PATH, URL, DURATION, else its name."""
    described = option.type_descriptor
    kind = described.ranged_type_name if described.is_ranged else getattr(described.annotation, "__name__", "")
    name = (option.name or "value").upper()
    if described.is_path:
        return "PATH"
    if kind == "int":
        return "N"
    if kind == "float":
        return "NUMBER"
    if name.endswith("URL"):
        return "URL"
    if name in _DURATIONS or (isinstance(option.default, str) and _is_duration(option.default)):
        return "DURATION"
    if name in _DIRECTORIES:
        return "DIR"
    return name if len(name) <= 12 else "TEXT"


_DURATIONS = frozenset(
    {"EVERY", "MAX_OUT_OF_ORDERNESS", "ALLOWED_LATENESS", "DURATION", "DURATION_TEXT", "SINCE", "POLL"}
)
_DIRECTORIES = frozenset({"DATA_DIR", "EVIDENCE", "RUN"})


def _is_duration(text: str) -> bool:
    try:
        parse_duration_ms(text)
    except (UsageError, ValueError):
        return False
    return not text.isdigit()


def plain_help(app: typer.Typer) -> typer.Typer:
    """Make every command of ``app`` (and its groups) print plain help; returns ``app``.

    Docstrings mark code with double backticks for readers of the source; typer would
    print them literally, so a command without an explicit ``help`` gets its
    docstring without them. Usage lines name arguments without braces (``PlainUsage``).
    """
    for info in app.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.help = inspect.cleandoc(info.callback.__doc__).replace("``", "")
        if info.cls in (None, TyperCommand):
            info.cls = PlainUsage
    for group in app.registered_groups:
        if group.typer_instance is not None:
            plain_help(group.typer_instance)
    return app


DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (sqlite, postgresql, cockroachdb); env SEGSHADOW_DATABASE_URL"),
]
RedisOpt = Annotated[
    str | None,
    typer.Option("--redis-url", help="redis:// URL; env SEGSHADOW_REDIS_URL; default: an embedded Valkey"),
]
DataDirOpt = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        help="where embedded state lives (default: $XDG_DATA_HOME/segshadow, else ~/.local/share/segshadow); "
        "env SEGSHADOW_DATA_DIR",
    ),
]


def settings(database_url: str | None, redis_url: str | None, data_dir: str | None = None) -> Settings:
    """Resolve flags over environment over embedded defaults (the only place the environment is read)."""
    return resolve_settings(database_url, redis_url, data_dir)


def duration(text: str) -> int:
    """A command-line duration (``500ms``, ``5s``, ``10m``, ``1h``) in ms; ``UsageError`` otherwise."""
    try:
        return parse_duration_ms(text)
    except ValueError:  # more digits than Python converts to an int
        raise UsageError(f"bad duration '{text[:20]}...': too many digits") from None


def duration_between(minimum: str, maximum: str) -> Callable[[str | None], str | None]:
    """A typer callback: the value must be a duration in [minimum, maximum]; it is returned unchanged."""
    low, high = duration(minimum), duration(maximum)

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ms = duration(value)
        except SegshadowError as exc:
            raise typer.BadParameter(str(exc)) from None
        if not low <= ms <= high:
            raise typer.BadParameter(
                f"{value.strip()} is outside {format_duration_ms(low)}..{format_duration_ms(high)}"
            )
        return value

    return check


def percentage(value: float | None) -> float | None:
    """A typer callback: a percentage above 0 and at most 100."""
    if value is not None and not (math.isfinite(value) and 0 < value <= 100):
        raise typer.BadParameter(f"{value} is not a percentage above 0 and at most 100")
    return value


def bloom_rate(value: float) -> float:
    """A typer callback: a Bloom filter's target false-positive rate, 0.000001 to 0.5."""
    if not (math.isfinite(value) and 1e-6 <= value <= 0.5):
        raise typer.BadParameter(f"{value} is not a false-positive rate from 0.000001 to 0.5")
    return value


def listen_port(ctx: typer.Context, value: int) -> int:
    """A typer callback for a port to serve on: 1-65535 and free to listen on.

    The probe binds on ``--host`` when it was read first (it is declared first, so
    it is unless given after ``--port``), else on 127.0.0.1; a port in use is a usage
    error here rather than the server's own start-up failure later.
    """
    if not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a port (1-65535)")
    host = ctx.params.get("host") or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, value, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return value  # the server reports a host it cannot resolve
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise typer.BadParameter(f"cannot listen on {host}:{value}: {exc.strerror or exc}") from None
    return value


def _probe(directory: Path) -> None:
    """Create and remove a file in the nearest existing ancestor of ``directory``; ``BadParameter`` if that fails."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise typer.BadParameter(f"cannot create {directory}: {existing} is not a directory")
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=".segshadow-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise typer.BadParameter(f"cannot write in {existing}: {exc.strerror or exc}") from None


def writable_file(value: Path | None) -> Path | None:
    """A typer callback for an output file: not a directory, and its directory writable (or creatable)."""
    if value is None:
        return None
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory; give a file name")
    _probe(value.parent if str(value.parent) else Path("."))
    return value


def writable_dir(value: Path | None) -> Path | None:
    """A typer callback for an output directory: not an existing file, and writable (or creatable)."""
    if value is None:
        return None
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} exists and is not a directory")
    _probe(value)
    return value


class StageBars:
    """A rich progress bar per stage; called as ``bars(stage, done, total)`` (a progress hook)."""

    def __init__(self, progress: Progress, labels: Mapping[str, str]) -> None:
        self.progress = progress
        self.labels = labels
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(self.labels.get(stage, stage), total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@contextlib.contextmanager
def progress_bars(labels: Mapping[str, str], transient: bool = True) -> Iterator[StageBars]:
    """Progress bars on stderr, shown only when stderr is a terminal (logs and CI stay clean)."""
    progress = Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    )
    with progress:
        yield StageBars(progress, labels)


@contextlib.contextmanager
def busy(label: str) -> Iterator[None]:
    """An indeterminate bar with the elapsed time for one step whose size is not known in advance.

    For work that has no count to report (a Beam pipeline, a comparison); like
    ``progress_bars`` it is shown only when stderr is a terminal and goes away when done.
    """
    with progress_bars({"busy": label}) as bars:
        bars.progress.add_task(label, total=None)
        yield


@contextlib.contextmanager
def status_lines(sample: Callable[[], str], every_s: float = 5.0) -> Iterator[None]:
    """While the block runs, print ``sample()`` on stderr every ``every_s`` seconds, only on a terminal.

    ``sample`` must not raise (a status line is never worth failing a run for).
    """
    if not console.is_terminal:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            console.print(sample(), highlight=False, soft_wrap=True)

    thread = threading.Thread(target=loop, name="segshadow-status", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
