"""What every command shares: the settings options, duration parsing, console output."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from segments.config import Settings, resolve_settings
from segments.durations import parse_duration_ms

console = Console(stderr=True)

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
    typer.Option("--data-dir", help="where embedded state lives (default .segshadow); env SEGSHADOW_DATA_DIR"),
]


def settings(database_url: str | None, redis_url: str | None, data_dir: str | None = None) -> Settings:
    """Resolve flags over environment over embedded defaults (the only place the environment is read)."""
    return resolve_settings(database_url, redis_url, data_dir)


def duration(text: str) -> int:
    """A command-line duration (``500ms``, ``5s``, ``10m``, ``1h``) in ms; ``UsageError`` otherwise."""
    return parse_duration_ms(text)


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
