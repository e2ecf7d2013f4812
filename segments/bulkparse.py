"""Parsing many lines at once: ``parse_line``'s results for a chunk of lines, the common case inlined.

``parse_many`` gives, for a chunk of numbered lines, exactly what
``segments.events.parse_line`` gives line by line (the same ``Event`` tuples with
the same field values, the same ``Rejection`` records in the same order); a
property test pins the two together on generated and broken lines.

What it saves is ``parse_line``'s calls per line (``event_from_object``, two
``_require_str``, ``parse_time``, the ``TimeBounds`` lookups): each line is still
read by the same C scanner, and the checks of SPEC §1 are made inline in one loop
for the common event, one whose

- line is one JSON object and nothing else;
- ``event_id`` and ``user_id`` are non-empty ASCII strings (``user_id`` at most
  ``MAX_USER_ID`` characters);
- ``event_time`` and ``arrival_time`` (when given) are integer milliseconds;
- ``kind`` is one of SPEC §1's kinds, with an amount that ``parse_amount_micros``
  reads when its kind needs one (or when it carries one);
- times are within the bounds (``TimeBounds``);
- ``attrs`` is absent, null or an object whose ``merchant`` is absent, null or a string;
- fields are all SPEC §1's (no extra field).

Anything else (every bad line, RFC 3339 times, non-ASCII ids, extra fields, a
rule set that reads its own kinds or attribute fields) is handed to
``parse_line`` itself, so every rejection, with its reason and detail, comes from
the one per-line path. The fast path never decides a rejection.
"""

from __future__ import annotations

from collections.abc import Iterable

from segments import events
from segments.events import (
    DEFAULT_TIME_BOUNDS,
    KINDS,
    MAX_USER_ID,
    MONEY_KINDS,
    Event,
    Rejection,
    TimeBounds,
    parse_amount_micros,
    parse_line,
)

_KINDS = frozenset(KINDS)
_FIELDS = events._KNOWN_FIELDS  # SPEC §1's fields: any other goes to an event's ``extra``
_FIELD_COUNT = len(_FIELDS)
_new_tuple = tuple.__new__
_scan = events._scan  # the one configured C scanner (exact numbers, no NaN), the one ``parse_line`` reads with


def parse_many(
    numbered: Iterable[tuple[int, str]], valid: list[Event], bounds: TimeBounds = DEFAULT_TIME_BOUNDS
) -> list[Rejection]:
    """Parse ``(line number, text)`` pairs: append each line's ``Event`` to ``valid`` (in input order) and
    return the ``Rejection`` of every other line (in input order). For every line the result is
    ``parse_line(text, number, bounds)``. Never raises for bad input."""
    rejected: list[Rejection] = []
    if bounds.reads_own:
        for number, text in numbered:
            parsed = parse_line(text, number, bounds)
            (valid if type(parsed) is Event else rejected).append(parsed)  # type: ignore[arg-type]
        return rejected
    scan = _scan
    earliest, latest = bounds.earliest_ms, bounds.latest_ms
    behind, ahead = bounds.max_skew_ms, -bounds.max_ahead_ms
    kinds, money, fields, field_count = _KINDS, MONEY_KINDS, _FIELDS, _FIELD_COUNT
    amount_of, new, append = parse_amount_micros, _new_tuple, valid.append
    for number, text in numbered:
        if text[:1] == "{":
            try:
                obj, end = scan(text, 0)
            except (StopIteration, ValueError, RecursionError):
                end = -1
            if end == len(text) and len(obj) <= field_count and fields.issuperset(obj):
                event_id = obj.get("event_id")
                user_id = obj.get("user_id")
                event_time = obj.get("event_time")
                kind = obj.get("kind")
                if (
                    type(event_id) is str
                    and event_id
                    and event_id.isascii()
                    and type(user_id) is str
                    and 0 < len(user_id) <= MAX_USER_ID
                    and user_id.isascii()
                    and type(event_time) is int
                    and earliest <= event_time < latest
                    and type(kind) is str
                    and kind in kinds
                ):
                    amount = obj.get("amount")
                    arrival = obj.get("arrival_time")
                    attrs = obj.get("attrs")
                    merchant = None if attrs is None or type(attrs) is not dict else attrs.get("merchant")
                    if (
                        (arrival is None or (type(arrival) is int and earliest <= arrival < latest))
                        and (amount is not None or kind not in money)
                        and (attrs is None or type(attrs) is dict)
                        and (merchant is None or type(merchant) is str)
                    ):
                        arrival_time = event_time if arrival is None else arrival
                        if ahead <= arrival_time - event_time <= behind:
                            micros = 0
                            if amount is not None:
                                try:
                                    micros = amount_of(amount)
                                except Exception:  # a bad amount: the per-line path words it
                                    micros = -1  # amounts are never negative (SPEC §1)
                            if micros >= 0:
                                append(
                                    new(
                                        Event,
                                        (
                                            event_id,
                                            user_id,
                                            event_time,
                                            kind,
                                            micros,
                                            arrival_time,
                                            merchant,
                                            number,
                                            amount is not None,
                                            attrs,
                                            None,
                                        ),
                                    )
                                )
                                continue
        parsed = parse_line(text, number, bounds)
        (valid if type(parsed) is Event else rejected).append(parsed)  # type: ignore[arg-type]
    return rejected
