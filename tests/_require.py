"""CI cannot pass by skipping: ``SEGSHADOW_REQUIRE=browser,postgresql`` makes those tests mandatory.

Without the variable (a developer's machine) nothing changes: the browser tests
skip, saying why, where Chromium is absent, and the PostgreSQL variants of the
``database_url`` tests are not generated without ``SEGSHADOW_DATABASE_URL``.
``.ci/run`` sets it, and then:

- ``postgresql``: ``SEGSHADOW_DATABASE_URL`` must name a PostgreSQL server (else
  pytest stops before collecting: a usage error, exit 4);
- a test of a required kind that skips fails instead, with the skip's reason
  (browser: marked ``browser``; postgresql: the ``database_url`` fixture's
  ``postgresql`` variant, or a skip whose reason names PostgreSQL);
- the run fails at the end if no test of a required kind passed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Generator

import pytest

REQUIRE_ENV = "SEGSHADOW_REQUIRE"
KINDS = ("browser", "postgresql")
_PASSED = pytest.StashKey[Counter[str]]()
_REQUIRED = pytest.StashKey[frozenset[str]]()


def required(environ: os._Environ[str] | dict[str, str]) -> frozenset[str]:
    """The kinds named in ``SEGSHADOW_REQUIRE`` (comma-separated); ``pytest.UsageError`` for an unknown one."""
    names = frozenset(n.strip() for n in environ.get(REQUIRE_ENV, "").split(",") if n.strip())
    unknown = names - set(KINDS)
    if unknown:
        raise pytest.UsageError(f"{REQUIRE_ENV}: unknown {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
    return names


def pytest_configure(config: pytest.Config) -> None:
    names = required(os.environ)
    config.stash[_REQUIRED] = names
    config.stash[_PASSED] = Counter()
    url = os.environ.get("SEGSHADOW_DATABASE_URL", "")
    if "postgresql" in names and not url.startswith("postgresql"):
        raise pytest.UsageError(
            f"{REQUIRE_ENV}=postgresql but SEGSHADOW_DATABASE_URL is {url or 'unset'}: "
            "the PostgreSQL variants of the tests would not be generated"
        )


def _kinds(item: pytest.Item, reason: str) -> set[str]:
    kinds = set()
    if item.get_closest_marker("browser") is not None:
        kinds.add("browser")
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("database_url") if callspec is not None else None
    if backend == "postgresql":
        kinds.add("postgresql")
    # A skip naming PostgreSQL counts, except on the SQLite variant of a backend-parametrized test (the
    # cockroachdb dialect over SQLite is a combination that cannot run, and says so).
    if backend != "sqlite" and "postgresql" in reason.lower():
        kinds.add("postgresql")
    return kinds


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    names = item.config.stash.get(_REQUIRED, frozenset())
    if not names:
        return report
    reason = _skip_reason(report) if report.skipped else ""
    kinds = _kinds(item, reason) & names
    if report.skipped and kinds:
        report.outcome = "failed"
        need = f"{REQUIRE_ENV}={','.join(sorted(names))}"
        report.longrepr = f"{need}: this {'/'.join(sorted(kinds))} test must run, but it skipped: {reason}"
    elif report.passed and report.when == "call":
        item.config.stash[_PASSED].update(kinds)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    names = session.config.stash.get(_REQUIRED, frozenset())
    passed = session.config.stash.get(_PASSED, Counter())
    missing = sorted(name for name in names if not passed[name])
    if missing and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"{REQUIRE_ENV}: no {' and no '.join(missing)} test passed in this run"
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_report_header(config: pytest.Config) -> str | None:
    names = config.stash.get(_REQUIRED, frozenset())
    return f"{REQUIRE_ENV}: {', '.join(sorted(names))} tests must run (skips fail)" if names else None
