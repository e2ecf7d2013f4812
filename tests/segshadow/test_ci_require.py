"""``SEGSHADOW_REQUIRE`` (tests/_require.py, set by .ci/run): where browser or PostgreSQL tests skip, CI fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BROWSER = """
import pytest
pytestmark = [pytest.mark.browser, pytest.mark.skipif(True, reason="headless Chromium is not installed")]
def test_page(): pass
"""
DATABASE = """
import pytest
@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return request.param
def test_store(database_url): pass
def test_dialect(): pytest.skip("the cockroachdb dialect needs a PostgreSQL-wire server")
"""
PLAIN = "def test_nothing_required(): pass\n"


def pytest_run(tmp_path: Path, source: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_it.py").write_text(source, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SEGSHADOW_")} | env
    environ["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests._require", "-p", "no:cacheprovider", "-c", os.devnull,
         "--rootdir", str(tmp_path), "-q", "-rs", str(tmp_path / "test_it.py")],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120,
    )  # fmt: skip


def test_without_the_variable_skips_stay_skips(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, BROWSER)
    assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout


def test_a_required_browser_test_that_skips_fails(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, BROWSER, SEGSHADOW_REQUIRE="browser")
    assert done.returncode == 1, done.stdout
    assert "this browser test must run, but it skipped: headless Chromium is not installed" in done.stdout


def test_required_postgresql_tests_that_skip_fail(tmp_path: Path) -> None:
    source = DATABASE.replace("return request.param", "if request.param == 'postgresql': pytest.skip('no server')\n"
                              "    return request.param")  # fmt: skip
    done = pytest_run(
        tmp_path, source, SEGSHADOW_REQUIRE="postgresql", SEGSHADOW_DATABASE_URL="postgresql://127.0.0.1:9/none"
    )
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed, 1 error" in done.stdout, done.stdout
    assert "PostgreSQL-wire server" in done.stdout and "no server" in done.stdout


def test_postgresql_required_without_its_url_stops_before_collecting(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, DATABASE.replace("    def", "def"), SEGSHADOW_REQUIRE="postgresql")
    assert done.returncode == 4 and "SEGSHADOW_DATABASE_URL is unset" in done.stderr, done.stderr


def test_a_run_where_no_required_test_passed_fails(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, PLAIN, SEGSHADOW_REQUIRE="browser")
    assert done.returncode == 1 and "no browser test passed in this run" in done.stdout, done.stdout
    done = pytest_run(tmp_path, PLAIN)
    assert done.returncode == 0


def test_passing_required_tests_pass(tmp_path: Path) -> None:
    done = pytest_run(
        tmp_path, DATABASE.replace('pytest.skip("the cockroachdb dialect needs a PostgreSQL-wire server")', "pass"),
        SEGSHADOW_REQUIRE="postgresql", SEGSHADOW_DATABASE_URL="postgresql://127.0.0.1:9/none",
    )  # fmt: skip
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout


def test_an_unknown_requirement_is_a_usage_error(tmp_path: Path) -> None:
    done = pytest_run(tmp_path, PLAIN, SEGSHADOW_REQUIRE="browser,gpu")
    assert done.returncode == 4 and "unknown gpu" in done.stderr, done.stderr
