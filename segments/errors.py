"""The one exception root of segshadow and its named subclasses.

The command line turns every ``SegshadowError`` into one line on stderr and its
``exit_code``: 2 for bad usage or input, 1 for a check that failed or a run that
failed part-way (``CheckFailed``, ``RunFailed``).
"""

from __future__ import annotations


class SegshadowError(Exception):
    """Root of every error segshadow raises on purpose (bad input, bad config, unreachable server)."""

    exit_code = 2


class UsageError(SegshadowError):
    """A flag, option or argument that cannot be used as given."""


class InputError(SegshadowError):
    """An input file that is missing, unreadable, empty or of the wrong kind."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class RuleSetError(SegshadowError):
    """A rule set that does not validate; ``key`` names the offending key when known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"rule set: {key}: {message}" if key else f"rule set: {message}")
        self.key = key


class StoreUnavailable(SegshadowError):
    """A database or Redis server that cannot be reached (after retries where they apply)."""

    def __init__(self, what: str, url: str, cause: BaseException | None = None) -> None:
        first_line = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        detail = f": {type(cause).__name__}: {first_line}" if cause is not None else ""
        super().__init__(f"cannot reach {what} at {redact(url)}{detail}")
        self.what = what
        self.url = redact(url)


class ConflictError(SegshadowError):
    """A concurrent writer changed durable state first (e.g. two operators advancing a rollout)."""


class CheckFailed(SegshadowError):
    """A gate or check that ran and failed; exit code 1, with the reasons."""

    exit_code = 1


class RunFailed(SegshadowError):
    """A run that failed part-way (a server lost mid-run, a timeout): exit code 1.

    The message names what failed and what was kept (e.g. "the previous complete
    legacy run stays published").
    """

    exit_code = 1


def redact(url: str) -> str:
    """Hide a password in a connection URL so it never reaches a log line or message."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
