"""Servers the fault tests start, hurt and stop themselves: a private Redis on 127.0.0.1 and a free port.

``RedisServer`` runs the machine's ``redis-server`` (Redis 7) in a directory of its
own, with or without an append-only file, and can be killed (SIGKILL), frozen
(SIGSTOP), thawed (SIGCONT) and started again on the same port with the same
directory, as an operator's restart would. ``stop`` always ends it, frozen or not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """The machine's ``redis-server``; the test is skipped, saying so, when there is none."""
    found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    return found


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1; ``aof`` turns on the append-only file (fsync every second)."""

    def __init__(self, workdir: Path, aof: bool = False) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aof = aof
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        command = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec",
            "--logfile", str(self.workdir / "redis.log"), "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.frozen = False
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}: see {self.workdir}/redis.log")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: whatever was not persisted is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections and answers nothing until ``thaw``."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
