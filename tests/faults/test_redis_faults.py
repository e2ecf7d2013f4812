"""Redis hurt during ``shadow run --live``: killed (with and without an append-only file) or frozen.

Each test runs the real command line against a private ``redis-server`` on
127.0.0.1, hurts the server two seconds into producing and brings it back three
seconds later (a restart on the same port and directory: without AOF it comes
back empty), then asserts: exit 0, no traceback, and the accounting of
``tests.faults.accounting`` (nothing lost, nothing applied twice, both logs the same).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from tests.faults.accounting import STREAM_KEY, check_live_run, table_row
from tests.faults.servers import RedisServer

pytestmark = pytest.mark.slow

OUTAGE_S = 3.0
INTO_PRODUCING_S = 2.0


def live_command(out: Path, redis_url: str, database_url: str, duration: str = "8s", rate: int = 300) -> list[str]:
    """``shadow run --live`` through the real command line, on the given stores."""
    return [
        sys.executable, "-m", "segshadow.cli", "shadow", "run", "--live", "--workload", "clickstream",
        "--rate", str(rate), "--duration", duration, "--every", "2s", "--shards", "2", "--seed", "3",
        "--out", str(out), "--redis-url", redis_url, "--database-url", database_url,
    ]  # fmt: skip


def wait_for_log(url: str, timeout_s: float = 120.0) -> None:
    """Until the run's stream child has made its group: producing starts right after."""
    client = redis.Redis.from_url(url, socket_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                if client.exists(STREAM_KEY) and client.xinfo_groups(STREAM_KEY):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
    finally:
        client.close()
    raise AssertionError("the live run never started reading")


class Finished:
    """A command run to its end on another thread (so the test can hurt servers meanwhile)."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout = self.stderr = ""
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        self.stdout, self.stderr = self.process.communicate()

    def wait(self, timeout_s: float = 180.0) -> int:
        self._reader.join(timeout=timeout_s)
        if self._reader.is_alive():
            self.process.kill()
            self._reader.join()
            raise AssertionError(f"the command did not end within {timeout_s:.0f} s")
        return int(self.process.returncode)

    def assert_clean(self, code: int = 0) -> None:
        """The documented exit code and no traceback on either stream."""
        assert "Traceback" not in self.stderr + self.stdout, self.stderr[-3000:]
        assert self.process.returncode == code, self.stderr[-3000:]


@pytest.mark.parametrize(
    ("fault", "aof"),
    [("SIGKILL", False), ("SIGKILL", True), ("SIGSTOP", False)],
    ids=["kill-no-aof", "kill-aof", "stop"],
)
def test_live_run_survives_redis_hurt_mid_run_and_loses_nothing(tmp_path: Path, fault: str, aof: bool):
    """Redis killed (restarted empty without AOF) or frozen for 3 s mid-run: exit 0, every line accounted for."""
    server = RedisServer(tmp_path / "redis", aof=aof).start()
    out = tmp_path / "run"
    database_url = f"sqlite:///{tmp_path / 'live.db'}"
    try:
        run = Finished(live_command(out, server.url, database_url))
        wait_for_log(server.url)
        time.sleep(INTO_PRODUCING_S)
        if fault == "SIGKILL":
            server.kill()
            time.sleep(OUTAGE_S)
            server.start()
        else:
            server.freeze()
            time.sleep(OUTAGE_S)
            server.thaw()
        code = run.wait()
        run.assert_clean(0)
        counts = check_live_run(out, server.url, database_url)
    finally:
        server.stop()
    if fault == "SIGKILL" and not aof:  # the log came back empty: it was re-seeded and the stream regrouped
        assert counts["resent"] > 0 and counts["regroups"] == 1
    else:
        assert counts["resent"] == 0 and counts["regroups"] == 0
    injected = f"{fault} of Redis{' (AOF everysec)' if aof else ' (no persistence)'} 2 s into producing, back 3 s later"
    table_row(f"redis {fault.lower()}{' aof' if aof else ''}", injected, counts, code)
