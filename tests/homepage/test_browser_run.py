"""A newcomer's path in headless Chromium: `shadow run`, then `serve --run` shows that run, no server needed.

Both commands run as subprocesses without any ``SEGSHADOW_*`` variable, so they use
the embedded defaults only: the run's SQLite file and an embedded Valkey that the run
saves into ``serving.jsonl`` and ``serve --run`` loads into a fresh one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from segments.redisstore import decode_user_id
from segments.snapshot import read_serving
from tests.homepage.test_browser import CHROMEDRIVER, CHROMIUM, browser, open_page, screenshot
from tests.rollout.helpers import closed_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="headless Chromium is not installed: apt-get install -y chromium chromium-driver",
    ),
]
__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_browser


def _bare_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGSHADOW_")}
    env["SEGSHADOW_DATA_DIR"] = str(tmp / "data")  # keep the default data dir out of the working tree
    return env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A small clickstream run served with ``serve --run``: (base URL, a high_value user id)."""
    tmp = tmp_path_factory.mktemp("recorded")
    run_dir = tmp / "demo"
    env = _bare_env(tmp)
    cli = [sys.executable, "-m", "segshadow.cli"]
    small = ["--users", "100", "--minutes", "10"]  # the smallest run whose last as-of has a high_value user
    done = subprocess.run(
        [*cli, "shadow", "run", "--workload", "clickstream", *small, "--out", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"serve --run {run_dir}" in done.stdout
    high_value = read_serving(run_dir / "serving.jsonl").users_with("legacy", "high_value")
    assert high_value, "the run has no high_value user at its last as-of"
    port = closed_port()
    log = open(tmp / "serve.log", "w+b")  # noqa: SIM115
    process = subprocess.Popen(
        [*cli, "serve", "--run", str(run_dir), "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"serve --run did not start: {log.read().decode()[-2000:]}") from None
            time.sleep(0.1)
    try:
        yield base, decode_user_id(high_value[0])
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.seek(0)
        said = log.read().decode()
        log.close()
    assert "high_value: http://" in said  # the start-up lines name a page to open


def test_serve_run_shows_a_high_value_user_the_premium_page(recorded: tuple[str, str], browser) -> None:
    base, user = recorded
    find = open_page(browser, f"{base}/?user={quote(user)}")
    assert find("h1").text == "Your premium picks"
    assert find("body").get_attribute("data-theme") == "premium"
    badge = find(".badge").text
    assert badge.startswith("served by legacy") and "stale" not in badge
    screenshot(browser, "recorded-run-high-value")


def test_serve_run_shows_the_runs_dashboard(recorded: tuple[str, str], browser) -> None:
    base, _ = recorded
    find = open_page(browser, f"{base}/dashboard")
    assert find("#current-stage").text == "off"
    assert find(".chart polyline") is not None
    assert "clickstream@v1" in find("body").text
    screenshot(browser, "recorded-run-dashboard")
