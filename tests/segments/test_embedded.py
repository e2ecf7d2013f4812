"""The embedded Valkey: it stops with its context and dies with the process that started it, even on SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from segments.embedded import embedded_valkey, server_pid

_STARTER = """
import sys, time
from segments.embedded import embedded_valkey
from segments.embedded import server_pid
with embedded_valkey() as url:
    print(url, server_pid(url), flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


def _accepts(url: str) -> bool:
    where = urlparse(url)
    try:
        with socket.create_connection((where.hostname, where.port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_server_dies_with_a_sigkilled_starter() -> None:
    root = Path(__file__).resolve().parents[2]
    starter = subprocess.Popen(
        [sys.executable, "-c", _STARTER], cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    try:
        assert starter.stdout is not None
        url, pid_text = starter.stdout.readline().split()
        pid = int(pid_text)
        assert _alive(pid) and _accepts(url)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
        gone = _wait_until(lambda: not _alive(pid), 5)
        if not gone:  # do not leak it from the test either
            os.kill(pid, signal.SIGKILL)
        assert gone, "the embedded Valkey outlived the process that started it"
        assert not _accepts(url)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()


def test_a_normal_exit_stops_the_server_and_its_watchdog() -> None:
    with embedded_valkey() as url:
        pid = server_pid(url)
        assert _alive(pid) and len(_watchdogs(pid)) == 1
    assert not _alive(pid) and not _accepts(url)
    assert _watchdogs(pid) == [], "the watchdog kept running after a normal exit"


def _watchdogs(server: int) -> list[int]:
    """Live processes whose command line is the watchdog of ``server``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _alive(int(name)):
            argv = _cmdline(int(name)).split("\0")
            if "os.read(fd, 1)" in "".join(argv) and str(server) in argv:
                found.append(int(name))
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
