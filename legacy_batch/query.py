"""The legacy job's one set-based query: every user's aggregates at an as-of, built from a rule set.

For a rule set and an as-of ``t`` the query reads the events table once and groups
by user. It sees only events that had arrived (``arrival_time <= t``), and each
aggregate counts the events of its kinds in its own window ``(t - width, t]``,
the same edges as ``segments.windows.in_window``:

- ``count``: ``COUNT(CASE WHEN kind IN (...) AND in-window THEN 1 END)``
- ``sum`` of amounts with a weight per kind:
  ``SUM(CASE WHEN kind IN (kinds of weight w) AND in-window THEN amount_micros * w ... ELSE 0 END)``
  over exact integer micro-units
- ``count_distinct`` of merchants: ``COUNT(DISTINCT CASE WHEN ... THEN merchant END)``

``HAVING`` keeps the users for whom some segment's condition holds (the conditions
compiled to SQL over the same aggregate expressions): exactly the users with a
non-empty set, since a group only drops a segment when another of the group holds.
Those rows then go through ``RuleSet.classify``, the evaluation both segmenters share,
which decides the set (and the group exclusivity).
When no segment can hold for a user with no event in any window (true for the
shipped sets) the WHERE clause keeps only the events of the longest window and the
rule set's kinds, which the ``event_time`` index serves. Otherwise every user with
an arrived event is a candidate and the window tests move into the CASE arms.

The statement is built once per rule set with bound parameters (``t`` and the
lower edge of each width), so SQLAlchemy compiles it once and every backend runs
the same SQL with new values.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from segments.outputs import Assignment
from segments.rules import Aggregate, AllOf, Compare, Condition, RuleSet
from segments.sqlstore import events_table, from_sql_text


@dataclass(frozen=True)
class AggregateQuery:
    """The compiled-once aggregate query of one rule set.

    ``columns`` are the aggregate names in the order of the statement's columns after
    ``user_id``; ``widths`` the distinct window widths, each bound as ``lo_<i>``;
    ``everyone`` says whether users with no event in any window are candidates.
    """

    ruleset: RuleSet
    statement: sa.Select[Any]
    columns: tuple[str, ...]
    widths: tuple[int, ...]
    everyone: bool

    def params(self, t: int) -> dict[str, int]:
        """The bound values for as-of ``t``."""
        values = {"t": t}
        for index, width in enumerate(self.widths):
            values[f"lo_{index}"] = t - width
        return values

    def aggregates_at(self, conn: Connection, t: int) -> Iterator[tuple[str, dict[str, int]]]:
        """(user id, aggregate values) for every user whose set at ``t`` is not empty, in no order."""
        names = self.columns
        for row in conn.execute(self.statement, self.params(t)):
            values = {name: int(value or 0) for name, value in zip(names, row[1:], strict=True)}
            yield from_sql_text(row[0]), values

    def assignments_at(self, conn: Connection, t: int) -> list[Assignment]:
        """Every user's non-empty segment set at ``t`` (SPEC §3), sorted by user id."""
        classify = self.ruleset.classify
        out: list[Assignment] = []
        for user_id, values in self.aggregates_at(conn, t):
            segments = classify(values)
            if segments:
                out.append(Assignment(t, user_id, tuple(sorted(segments))))
        out.sort(key=lambda a: a.user_id)
        return out


def build_query(ruleset: RuleSet, table: sa.Table = events_table) -> AggregateQuery:
    """The aggregate query of ``ruleset`` over ``table`` (the events table's columns)."""
    widths = ruleset.widths
    span = ruleset.span_ms
    everyone = bool(ruleset.classify(dict.fromkeys((a.name for a in ruleset.aggregates), 0)))
    t = sa.bindparam("t", type_=sa.BigInteger)
    lows = {width: sa.bindparam(f"lo_{i}", type_=sa.BigInteger) for i, width in enumerate(widths)}
    event_time = table.c.event_time

    def in_window(width: int) -> list[sa.ColumnElement[bool]]:
        if everyone:
            return [event_time > lows[width], event_time <= t]
        return [] if width == span else [event_time > lows[width]]

    expressions = {agg.name: _aggregate_column(table, agg, in_window(agg.window_ms)) for agg in ruleset.aggregates}
    columns = [expressions[agg.name].label(f"a{i}") for i, agg in enumerate(ruleset.aggregates)]
    where: list[sa.ColumnElement[bool]] = [table.c.arrival_time <= t]
    if not everyone:
        where += [event_time > lows[span], event_time <= t, table.c.kind.in_(sorted(ruleset.kinds))]
    nonempty = sa.or_(*(_condition(segment.when, expressions) for segment in ruleset.segments))
    statement = sa.select(table.c.user_id, *columns).where(*where).group_by(table.c.user_id).having(nonempty)
    return AggregateQuery(ruleset, statement, tuple(a.name for a in ruleset.aggregates), widths, everyone)


_SQL_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def _condition(condition: Condition, expressions: Mapping[str, Any]) -> sa.ColumnElement[bool]:
    """``holds(condition, values)`` as SQL over the aggregate expressions (thresholds bound)."""
    if isinstance(condition, Compare):
        threshold = sa.literal(condition.value, sa.BigInteger)
        return _SQL_OPS[condition.op](expressions[condition.agg], threshold)
    parts = [_condition(part, expressions) for part in condition.parts]
    return sa.and_(*parts) if isinstance(condition, AllOf) else sa.or_(*parts)


def _kind_in(table: sa.Table, kinds: list[str]) -> sa.ColumnElement[bool]:
    return table.c.kind == kinds[0] if len(kinds) == 1 else table.c.kind.in_(kinds)


def _aggregate_column(table: sa.Table, agg: Aggregate, window: list[sa.ColumnElement[bool]]) -> Any:
    if agg.op == "sum":
        by_weight: dict[int, list[str]] = {}
        for kind, weight in sorted(agg.weights.items()):
            by_weight.setdefault(weight, []).append(kind)
        arms = [
            (sa.and_(_kind_in(table, kinds), *window), _weighted(table.c.amount_micros, weight))
            for weight, kinds in sorted(by_weight.items(), reverse=True)
        ]
        return sa.func.coalesce(sa.func.sum(sa.case(*arms, else_=0)), 0)
    condition = sa.and_(_kind_in(table, sorted(agg.weights)), *window)
    if agg.op == "count":
        return sa.func.count(sa.case((condition, 1)))
    return sa.func.count(sa.distinct(sa.case((condition, table.c.merchant))))


def _weighted(amount: sa.ColumnElement[Any], weight: int) -> sa.ColumnElement[Any]:
    if weight == 1:
        return amount
    if weight == -1:
        return -amount
    return amount * sa.literal(weight, sa.BigInteger)


def compile_sql(query: AggregateQuery, dialect: sa.engine.Dialect) -> str:
    """The query's SQL text for ``dialect`` (for logs and tests; values stay bound)."""
    return str(query.statement.compile(dialect=dialect))

