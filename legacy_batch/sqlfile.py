"""Your legacy SQL: a team's own query, run by the harness at each as-of over an arrival-cut view.

``legacy run --sql FILE.sql`` and ``shadow run --legacy-sql FILE.sql`` run a query the
team already has in place of the SQL the harness builds from a rule set
(``legacy_batch.query``). Everything else stays the harness's: the schedule of
as-ofs, the events table, the outputs (SPEC §3 lines, staged then published in SQL,
Redis), the sidecar and the provenance.

**What the query sees.** A relation named ``events`` that holds only what had arrived
by the as-of (``arrival_time <= :as_of``), the *arrival cut*: the query cannot see
the future whatever it does. Its columns:

=================  ===========================================================
``event_id``       text
``user_id``        text (as stored: an id SQL cannot hold, e.g. with a NUL, is escaped
                   and read back unescaped, so return the column as it is)
``event_time``     epoch milliseconds (integer)
``arrival_time``   epoch milliseconds (integer), at most ``:as_of``
``kind``           text (``view``, ``cart``, ``purchase``, ...)
``amount_micros``  the exact amount in millionths (integer), NULL when none
``merchant``       ``attrs.merchant`` as text, NULL when none
``payload``        ``{"attrs": ..., "extra": ...}`` as JSON text, NULL when none
=================  ===========================================================

**Bind parameters** (write them ``:name``; all integers, epoch ms):

- ``:as_of``: the as-of ``t``;
- ``:window_start``: ``t - window`` (exclusive), with ``window`` the declared rule
  set's window (``--rules``), so the window is ``event_time > :window_start AND
  event_time <= :as_of``;
- ``:window_end``: the same as ``:as_of`` (for readability);
- ``:window_ms``: the window's length.

The harness prepends the view as a common table expression (``WITH events AS
(SELECT ... FROM segshadow_events WHERE arrival_time <= :as_of)``; a query that starts
with its own ``WITH`` gets it as the first entry), so one file runs unchanged on
SQLite, PostgreSQL and CockroachDB. The file holds one statement (``SELECT`` or
``WITH``; a trailing ``;`` is allowed); it must return two columns, ``user_id`` and
``segment`` (text), one row per segment a user holds. Duplicate rows count once; a
user with no row holds no segment.

**Provenance.** The output's sidecar names the SQL file and its SHA-256 (``logic``),
and its ``ruleset`` states the rule set the query is *declared* to implement (name
and version, no digest: the harness did not derive the logic from it, so nothing
proves they agree); ``ruleset.source`` is ``"sql"`` and ``ruleset.sql_sha256`` stands
where the digest would. The declared rule set gives the window and the event
validation (time bounds), and the name the outputs are stored and compared under.

Errors (one line, exit 2): an unreadable or empty file, more than one statement, a
statement that is not a query, and a query the database refuses (its message, at the
first as-of, before anything is published) or that returns other than two columns or
a NULL ``user_id``/``segment``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from segments.errors import InputError
from segments.outputs import Assignment
from segments.rules import RuleSet
from segments.sqlstore import events_table, from_sql_text

PARAMS = ("as_of", "window_start", "window_end", "window_ms")
VIEW_COLUMNS = ("event_id", "user_id", "event_time", "arrival_time", "kind", "amount_micros", "merchant", "payload")
_LEADING = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)
_WITH = re.compile(r"WITH(\s+RECURSIVE)?\s", re.IGNORECASE)
_SELECT = re.compile(r"SELECT\s", re.IGNORECASE)
_TRAILING = re.compile(r";(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*\Z", re.DOTALL)


@dataclass(frozen=True)
class LegacySql:
    """A team's query, read once: its text, path and SHA-256 (of the file's bytes)."""

    path: str
    text: str
    sha256: str

    @classmethod
    def read(cls, path: str | Path) -> LegacySql:
        """Read and check ``path``; ``InputError`` naming the file when it cannot be used."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the legacy SQL: {exc.strerror}", str(path)) from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"the legacy SQL is not UTF-8 text (byte {exc.start})", str(path)) from None
        body = statement_of(text, str(path))
        return cls(str(path), body, hashlib.sha256(data).hexdigest())

    def provenance(self, ruleset: RuleSet) -> dict[str, Any]:
        """The sidecar's ``logic`` block: which query, and the rule set it is declared to implement."""
        return {
            "source": "sql",
            "sql": self.path,
            "sql_sha256": self.sha256,
            "declared_ruleset": ruleset.ref,
            "view": "events (arrival_time <= :as_of)",
            "params": list(PARAMS),
        }


def statement_of(text: str, where: str) -> str:
    """The one statement of ``text`` without a trailing ``;``; ``InputError`` if it is not one query."""
    body = _TRAILING.sub("", text.strip())
    start = _LEADING.match(body)
    head = body[start.end() if start else 0 :]
    if not head:
        raise InputError("the legacy SQL file holds no statement", where)
    if ";" in _strip_literals(head):
        raise InputError("the legacy SQL file must hold one statement (found a ';' inside it)", where)
    if not (_SELECT.match(head) or _WITH.match(head)):
        raise InputError("the legacy SQL must be a query (SELECT ... or WITH ...)", where)
    return head


def _strip_literals(text: str) -> str:
    """``text`` without quoted strings and comments (to look for a statement separator)."""
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", "", text, flags=re.DOTALL)


def wrapped(statement: str, table: str = events_table.name) -> str:
    """``statement`` with the arrival-cut view ``events`` as its first common table expression."""
    view = f"events AS (SELECT {', '.join(VIEW_COLUMNS)} FROM {table} WHERE arrival_time <= :as_of)"
    with_clause = _WITH.match(statement)
    if with_clause is None:
        return f"WITH {view}\n{statement}"
    keyword = "WITH RECURSIVE" if with_clause.group(1) else "WITH"
    return f"{keyword} {view},\n{statement[with_clause.end() :]}"


@dataclass(frozen=True)
class SqlFileQuery:
    """``AggregateQuery``'s interface (``ruleset``, ``assignments_at``) for a team's query."""

    ruleset: RuleSet
    sql: LegacySql
    statement: sa.TextClause

    @classmethod
    def build(cls, sql: LegacySql, ruleset: RuleSet) -> SqlFileQuery:
        return cls(ruleset, sql, sa.text(wrapped(sql.text)))

    def params(self, t: int) -> dict[str, int]:
        """The bound values at as-of ``t`` (only those the query names are sent)."""
        window = self.ruleset.window_ms
        values = {"as_of": t, "window_start": t - window, "window_end": t, "window_ms": window}
        named = set(self.statement._bindparams)
        return {k: v for k, v in values.items() if k in named}

    def assignments_at(self, conn: Connection, t: int) -> list[Assignment]:
        """Every user's non-empty segment set at ``t`` from the query's (user_id, segment) rows."""
        try:
            result = conn.execute(self.statement, self.params(t))
        except sa.exc.DBAPIError as exc:
            if _is_failure(exc, conn.dialect.name):
                raise
            message = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise InputError(f"the database refused the legacy SQL: {message}", self.sql.path) from None
        if len(result.keys()) != 2:
            raise InputError(
                f"the legacy SQL must return two columns (user_id, segment), not {len(result.keys())}",
                self.sql.path,
            )
        sets: dict[str, set[str]] = {}
        for user_id, segment in result:
            if user_id is None or segment is None:
                raise InputError("the legacy SQL returned a NULL user_id or segment", self.sql.path)
            sets.setdefault(from_sql_text(str(user_id)), set()).add(str(segment))
        return [Assignment(t, user, tuple(sorted(segs))) for user, segs in sorted(sets.items())]


def _is_failure(exc: sa.exc.DBAPIError, dialect: str) -> bool:
    """A lost server, a timeout or a lock (the job's ``RunFailed`` path), not an error in the query.

    PostgreSQL and CockroachDB report errors in a query as ``ProgrammingError`` (and kin)
    and lost connections as ``OperationalError``; SQLite reports both as
    ``OperationalError``, so there its message decides.
    """
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    if dialect != "sqlite":
        return True
    text = str(exc.orig).lower()
    return any(word in text for word in ("locked", "disk", "unable to open", "interrupted"))
