"""The site in headless Chromium (the OS package) driven by selenium, against `segshadow serve`.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian: ``apt-get install -y
chromium chromium-driver``); skipped with that reason when they are absent. With
``SEGSHADOW_SCREENSHOTS=DIR`` the tests also save screenshots of the pages there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from rollout.router import stage_key
from rollout.stages import Position
from rollout.store import Draft, RolloutStore, decisions_table, state_table
from segments.outputs import Transition
from segments.redisstore import RedisStore
from segments.timeutil import wall_clock_ms
from tests.rollout.helpers import closed_port, good_evidence, write_evidence

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="headless Chromium is not installed: apt-get install -y chromium chromium-driver",
    ),
]
HOSTILE = "<script>alert(1)</script>"


class Server:
    """`segshadow serve` on a free localhost port, over the test's SQLite file and Redis."""

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.port = closed_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database_url = f"sqlite:///{tmp / 'site.db'}"
        self.redis_url = redis_url
        self.evidence = write_evidence(tmp / "evidence", good_evidence(wall_clock_ms()))
        self.log = open(tmp / "serve.log", "w+b")  # noqa: SIM115
        argv = [sys.executable, "-m", "segshadow.cli", "serve", "--port", str(self.port)]
        argv += [
            "--database-url",
            self.database_url,
            "--redis-url",
            redis_url,
            "--evidence",
            str(self.evidence),
        ]
        argv += ["--plan", "default", "--data-dir", str(tmp / "data")]
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError(
                        f"segshadow serve did not start: {self.log.read().decode()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        self.redis = RedisStore.open(redis_url)

    def legacy(self, user: str, *segments: str) -> None:
        self.redis.write_legacy(wall_clock_ms(), [(user, frozenset(segments))])

    def stream(self, user: str, *segments: str) -> None:
        now = wall_clock_ms()
        self.redis.write_stream([Transition(user, tuple(sorted(segments)), now, 1, now, "event")])

    def reset(self) -> None:
        """Back to a rollout at ``off`` with no decisions (test-only: the log is append-only otherwise)."""
        with RolloutStore.open(self.database_url) as store, store.engine.begin() as conn:
            conn.execute(decisions_table.delete())
            conn.execute(state_table.update().values(stage="off", percent=0.0, version=0, entered_at=None))
        self.redis.client.delete(stage_key())

    def move_to(self, *targets: Position) -> None:
        with RolloutStore.open(self.database_url) as store:
            for target in targets:
                state = store.state()
                store.record(state.version, Draft("demo", "advance", state.position, target, reason="demo"))
        self.redis.client.delete(stage_key())

    def stop(self) -> None:
        self.redis.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, _redis_server: str) -> Iterator[Server]:
    started = Server(tmp_path_factory.mktemp("site"), _redis_server)
    yield started
    started.stop()


@pytest.fixture
def server(running: Server, redis_url: str, browser) -> Iterator[Server]:
    """The module's server with an empty Redis (``redis_url`` flushes it) and the rollout at off."""
    running.reset()
    yield running
    browser.get("about:blank")  # closes the page's event stream


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="segshadow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1360,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, url: str):
    from selenium.webdriver.common.by import By

    browser.get(url)
    return lambda css: browser.find_element(By.CSS_SELECTOR, css)


def screenshot(browser, name: str, full_height: bool = True) -> None:
    directory = os.environ.get("SEGSHADOW_SCREENSHOTS")
    if not directory:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    if full_height:
        height, chrome = browser.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
        )
        browser.set_window_size(1360, min(int(height) + int(chrome), 2600))
    browser.save_screenshot(str(Path(directory) / f"{name}.png"))
    browser.set_window_size(1360, 1000)


def test_a_high_value_user_sees_premium_content(server: Server, browser) -> None:
    server.legacy("ann@example.com", "high_value")
    find = open_page(browser, f"{server.base}/?user={quote('ann@example.com')}")
    assert find("h1").text == "Your premium picks"
    assert "Free express shipping" in find(".announce").text
    assert find(".badge").text.startswith("served by legacy")
    assert find("body").get_attribute("data-theme") == "premium"
    screenshot(browser, "homepage-high-value")


def test_a_window_shopper_sees_the_nudge(server: Server, browser) -> None:
    server.legacy("bo", "window_shopper")
    server.stream("bo", "window_shopper")
    server.move_to(Position.at("dual_write"), Position.at("shadow"), Position.at("canary", 99.99))
    find = open_page(browser, f"{server.base}/?user=bo")
    assert find("h1").text == "Still thinking it over?"
    assert "15%" in find(".announce").text and "30 minutes" in find(".announce").text
    assert "served by stream" in find(".badge").text and "canary 99.99%" in find(".badge").text
    screenshot(browser, "homepage-window-shopper")


def test_a_hostile_user_id_renders_as_text(server: Server, browser) -> None:
    find = open_page(browser, f"{server.base}/?user={quote(HOSTILE)}")
    assert find(".hello .user-id").text == HOSTILE
    assert find(".account .who").text == HOSTILE
    alerts = browser.execute_script("return document.querySelectorAll('script:not([src])').length")
    assert alerts == 0
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018


def test_the_page_changes_when_the_users_segments_change(server: Server, browser) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    server.legacy("cy", "window_shopper")
    find = open_page(browser, f"{server.base}/?user=cy")
    assert find("h1").text == "Still thinking it over?"
    WebDriverWait(browser, 5).until(
        lambda b: find("body").get_attribute("data-updates") == "1"
    )  # SSE connected
    changed = time.monotonic()
    server.legacy("cy", "high_value")
    WebDriverWait(browser, 5, poll_frequency=0.05).until(lambda b: find("h1").text == "Your premium picks")
    elapsed = time.monotonic() - changed
    assert elapsed < 1.5, elapsed
    assert (
        "Walnut Record Console" in find(".grid").text
        and find("body").get_attribute("data-theme") == "premium"
    )
    assert browser.execute_script("return document.querySelectorAll('.grid > li').length") == 4


def test_the_account_page_shows_a_hold_for_high_risk(server: Server, browser) -> None:
    server.legacy("dee", "risk_high")
    find = open_page(browser, f"{server.base}/account?user=dee")
    assert find(".notice h2").text == "Your account is on hold"
    screenshot(browser, "account-risk-high")


def test_the_dashboard_renders(server: Server, browser) -> None:
    server.move_to(
        Position.at("dual_write"), Position.at("shadow"), Position.at("canary", 1), Position.at("canary", 5)
    )
    with RolloutStore.open(server.database_url) as store:
        state = store.state()
        rollback = Draft(
            "auto", "rollback", state.position, Position.at("shadow"), reason="unexplained failed"
        )
        store.record(state.version, rollback)
    server.move_to(Position.at("canary", 1), Position.at("canary", 5))
    find = open_page(browser, f"{server.base}/dashboard")
    assert find("#current-stage").text == "canary 5%"
    assert "unexplained failed" in find(".action-rollback").text
    assert find(".chart polyline") is not None
    screenshot(browser, "dashboard")
