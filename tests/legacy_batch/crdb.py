"""Running the CockroachDB code paths where no CockroachDB exists: its dialect against PostgreSQL.

sqlalchemy-cockroachdb derives from the PostgreSQL dialect and speaks the same wire
protocol, so a ``cockroachdb://`` URL to the PostgreSQL test server exercises
everything segshadow does differently for CockroachDB (the dialect's transaction
retry loop, the executemany and RETURNING bulk paths, no index rebuild) on a real
server. What it cannot show is CockroachDB's own behaviour (serialization retries).
"""

from __future__ import annotations

import os

import pytest

from segments.config import DATABASE_ENV

DIALECTS = ["native", "cockroachdb"] if os.environ.get(DATABASE_ENV, "").startswith("postgresql://") else ["native"]


def with_dialect(database_url: str, dialect: str) -> str:
    """``database_url`` itself, or its PostgreSQL schema reached through the cockroachdb dialect."""
    if dialect == "native":
        return database_url
    if not database_url.startswith("postgresql://"):
        pytest.skip("the cockroachdb dialect needs a PostgreSQL-wire server")
    return "cockroachdb://" + database_url.removeprefix("postgresql://")
