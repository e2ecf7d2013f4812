"""Events as SPEC §1 defines them: parsing, validation, dead-letter records, arrival order, dedup.

Money is parsed exactly: JSON numbers go through ``Decimal`` (never ``float``) and
are carried as integer micro-units (``amount_micros``), so sums are exact on every
backend and in the stream's state.

**Time range** (bounded work). A valid timestamp can still be absurd (year 9999, or an
``arrival_time`` of ``1``), and the legacy schedule and the stream's state grow with
the span of time the events cover. An event is rejected with reason
``time_out_of_range`` (dead-lettered and counted like any bad line) unless, with the
``TimeBounds`` in force:

1. ``earliest <= event_time < latest`` and ``earliest <= arrival_time < latest``
   (default 1970-01-01T00:00:00Z to 2100-01-01T00:00:00Z; a rule set may narrow it);
2. ``arrival_time - event_time <= max_skew`` (default 1,096 days, three years): an
   event may arrive years late, not decades;
3. ``event_time - arrival_time <= max_ahead`` (default 1 day): an event is not more
   than a day in the future of the newest arrival. In arrival order (SPEC §1) the
   newest arrival seen when an event is read is that event's own ``arrival_time``,
   so the rule is checked against it; being a test of the event alone, it gives the
   same verdict whatever order and batching a reader sees the events in, so legacy
   ingest, the stream's replay and its live source agree line for line.

The check is part of ``event_from_object``, the one validation every reader calls
(``parse_line``); the bounds are the rule set's ``event_times`` when it declares them
(``segments.rules``), else ``DEFAULT_TIME_BOUNDS``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from segments.errors import InputError
from segments.seen import SeenIds
from segments.timeutil import MAX_MS, TimestampError, format_ms, parse_rfc3339_ms

DAY_MS = 86_400_000

KINDS = ("view", "cart", "purchase", "refund", "txn")
MONEY_KINDS = frozenset({"purchase", "refund", "txn"})
MAX_USER_ID = 128
MICROS = 1_000_000
_AMOUNT_LIMIT = Decimal(10) ** 12
_DECIMAL_TEXT = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?", re.ASCII)
_KNOWN_FIELDS = frozenset({"event_id", "user_id", "event_time", "kind", "amount", "arrival_time", "attrs"})

# The reasons a line can be rejected for; each is a stable string that users count and filter on.
REASONS = (
    "bad_json",
    "not_an_object",
    "missing_field",
    "bad_field_type",
    "naive_timestamp",
    "bad_timestamp",
    "unknown_kind",
    "bad_amount",
    "time_out_of_range",
    "too_late",
)


@dataclass(frozen=True)
class TimeBounds:
    """The sane range of an event's times (see the module doc); validated once, at the edge.

    ``earliest_ms`` inclusive and ``latest_ms`` exclusive bound both times;
    ``max_skew_ms`` bounds how much later than ``event_time`` an event may arrive,
    ``max_ahead_ms`` how far ``event_time`` may be ahead of its arrival.
    """

    earliest_ms: int = 0  # 1970-01-01T00:00:00Z: small epoch values stay usable in tests and tools
    latest_ms: int = 4_102_444_800_000  # 2100-01-01T00:00:00Z
    max_skew_ms: int = 1_096 * DAY_MS
    max_ahead_ms: int = DAY_MS
    # What a rule set that declares its own kinds and attributes reads (``segments.rules``); the
    # defaults are SPEC §1's. ``kinds``: the accepted kinds; ``needs_amount``: kinds whose events
    # must carry the summed value; ``amount_field`` / ``merchant_field``: the ``attrs`` field read
    # as the event's amount / merchant instead of ``amount`` / ``attrs.merchant``.
    kinds: frozenset[str] | None = None
    needs_amount: frozenset[str] | None = None
    amount_field: str | None = None
    merchant_field: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.earliest_ms < self.latest_ms <= MAX_MS:
            raise ValueError("event time bounds need 1970 <= earliest < latest <= 10000-01-01")
        if self.max_skew_ms < 0 or self.max_ahead_ms < 0:
            raise ValueError("max skew and max ahead must not be negative")

    @property
    def reads_own(self) -> bool:
        """Whether events are read with a rule set's own kinds or attribute fields (not SPEC §1's)."""
        return (
            self.kinds is not None
            or self.needs_amount is not None
            or self.amount_field is not None
            or self.merchant_field is not None
        )

    def problem(self, event_time: int, arrival_time: int) -> str | None:
        """Why these times are out of range, or None when they are in it."""
        if not self.earliest_ms <= event_time < self.latest_ms:
            return f"event_time {format_ms(event_time)} is outside [{self._range()})"
        if not self.earliest_ms <= arrival_time < self.latest_ms:
            return f"arrival_time {format_ms(arrival_time)} is outside [{self._range()})"
        if arrival_time - event_time > self.max_skew_ms:
            return f"arrival_time is more than {self.max_skew_ms // DAY_MS} days after event_time"
        if event_time - arrival_time > self.max_ahead_ms:
            return f"event_time is more than {self.max_ahead_ms} ms ahead of its arrival"
        return None

    def _range(self) -> str:
        return f"{format_ms(self.earliest_ms)}, {format_ms(self.latest_ms)}"


DEFAULT_TIME_BOUNDS = TimeBounds()


class Event(NamedTuple):
    """One valid event. Immutable; a tuple so that it pickles small and builds fast in the hot path.

    ``amount_micros`` is the amount in millionths of a currency unit (0 when the
    event has no amount); ``merchant`` is ``attrs.merchant`` as text when present;
    ``seq`` is the position in the input (file line or stream entry order).
    """

    event_id: str
    user_id: str
    event_time: int
    kind: str
    amount_micros: int
    arrival_time: int
    merchant: str | None
    seq: int
    has_amount: bool = False
    attrs: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] | None = None

    @property
    def amount(self) -> Decimal | None:
        """The exact amount in currency units, or None when the event carries none."""
        if not self.has_amount:
            return None
        return Decimal(format_micros(self.amount_micros))

    def to_dict(self) -> dict[str, Any]:
        """The event as a SPEC §1 object (amount as a decimal string, times as RFC 3339 UTC)."""
        out: dict[str, Any] = dict(self.extra or {})
        out.update(
            event_id=self.event_id,
            user_id=self.user_id,
            event_time=format_ms(self.event_time),
            kind=self.kind,
        )
        if self.has_amount:
            out["amount"] = format_micros(self.amount_micros)
        if self.arrival_time != self.event_time:
            out["arrival_time"] = format_ms(self.arrival_time)
        if self.attrs is not None:
            out["attrs"] = dict(self.attrs)
        return out

    def to_json(self) -> str:
        """One JSON line for this event, readable back by ``parse_line`` to an equal event.

        Numbers in ``attrs`` and extra fields are written exactly as they were read.
        """
        return dumps_exact(self.to_dict())


@dataclass(frozen=True)
class Rejection:
    """A line that broke SPEC §1 (or an event the stream dropped): the dead-letter record."""

    reason: str
    detail: str
    seq: int
    raw: str = field(repr=False)
    event_id: str | None = None
    user_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "detail": self.detail, "line": self.seq, "raw": self.raw}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.user_id is not None:
            out["user_id"] = self.user_id
        return out

    def to_json(self) -> str:
        """The dead-letter line; always valid UTF-8, even when the rejected line was not."""
        return dumps_exact(self.to_dict())


def dumps_exact(value: Any) -> str:
    """Compact JSON text in which ``Decimal`` values keep their exact number text (never via float).

    Strings holding a lone surrogate (not encodable as UTF-8, e.g. from an undecodable
    input byte) are written as ``\\u`` escapes, so the text can always be written as UTF-8.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except TypeError:
        text = _encode_exact(value, False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _encode_exact(value, True)
    return text


def _encode_exact(value: Any, ascii_only: bool) -> str:
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=ascii_only)}:{_encode_exact(v, ascii_only)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode_exact(v, ascii_only) for v in value) + "]"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"non-finite number {value}")
        return str(value)
    return json.dumps(value, ensure_ascii=ascii_only)


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def format_micros(micros: int) -> str:
    """Micro-units as the shortest exact decimal string, e.g. 12_500_000 -> ``"12.5"``."""
    whole, frac = divmod(micros, MICROS)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:06d}".rstrip("0")


class _NonFinite(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _NonFinite(f"non-finite number {name}")


def _json_number(text: str) -> Decimal:
    """A JSON number with a fraction or exponent, exactly; one whose exponent Decimal cannot hold
    (``1e40000000000000000000``) is a ``ValueError``, so it reads as bad JSON instead of escaping."""
    try:
        return Decimal(text)
    except ArithmeticError:
        raise ValueError(f"number out of range: {text[:40]}") from None


_decoder = json.JSONDecoder(parse_float=_json_number, parse_constant=_no_constants)
_scan = _decoder.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__
_new_tuple = tuple.__new__
# Reads NaN/Infinity as non-finite Decimals, only to tell a non-finite amount from other bad JSON.
_lenient_decoder = json.JSONDecoder(parse_float=_json_number, parse_constant=Decimal)


def parse_time(value: Any, name: str) -> int:
    """A SPEC time (integer ms or RFC 3339 with offset) as epoch ms; raises ``_Reject``."""
    if type(value) is int:
        if not 0 <= value < MAX_MS:
            raise _Reject("bad_timestamp", f"{name} out of range: {value}")
        return value
    if isinstance(value, str):
        try:
            return parse_rfc3339_ms(value)
        except TimestampError as exc:
            raise _Reject(exc.reason, f"{name}: {exc}") from None
    raise _Reject("bad_field_type", f"{name} must be integer ms or an RFC 3339 string")


_PLAIN_AMOUNT = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,6}))?", re.ASCII)  # below 10^12, at most 6 decimals
_INT_LIMIT = 10**12
_DECIMALS_SCALE = (1, 100_000, 10_000, 1_000, 100, 10, 1)  # micro-units per unit of the last of n decimals


def parse_amount_micros(value: Any) -> int:
    """A SPEC amount as exact integer micro-units; raises ``_Reject`` with reason ``bad_amount``.

    Plain amounts (an int, or digits with at most 6 decimals, as text or as the
    Decimal a JSON number becomes) are worked out in integers, a third of the
    cost of the Decimal path; everything else, and every error, takes
    ``parse_amount_micros_in_full``, which gives the same value for those.
    """
    kind = type(value)
    if kind is int:
        if 0 <= value < _INT_LIMIT:
            return value * MICROS
    elif kind is str or kind is Decimal:
        plain = _PLAIN_AMOUNT.fullmatch(value if kind is str else str(value))
        if plain is not None:
            whole, decimals = plain.groups()
            micros = int(whole) * MICROS
            return micros + int(decimals) * _DECIMALS_SCALE[len(decimals)] if decimals else micros
    return parse_amount_micros_in_full(value)


def parse_amount_micros_in_full(value: Any) -> int:
    """``parse_amount_micros`` by way of ``Decimal``, for every input; words each error."""
    if type(value) is int:
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):
            raise _Reject("bad_amount", f"amount is not a decimal number: {value[:40]!r}")
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise _Reject("bad_amount", f"amount is not a decimal number: {value[:40]!r}") from None
    else:
        raise _Reject("bad_amount", f"amount must be a number or decimal string, not {type(value).__name__}")
    if not number.is_finite():
        raise _Reject("bad_amount", "amount is not finite")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        raise _Reject("bad_amount", f"amount has more than 6 digits after the point: {number}")
    if number < 0:
        raise _Reject("bad_amount", f"amount is negative: {number}")
    if number >= _AMOUNT_LIMIT:
        raise _Reject("bad_amount", f"amount is not below 10^12: {number}")
    return int(number * MICROS)


def _require_str(obj: Mapping[str, Any], name: str, limit: int | None = None) -> str:
    if name not in obj:
        raise _Reject("missing_field", f"missing field {name}")
    value = obj[name]
    if not isinstance(value, str):
        raise _Reject("bad_field_type", f"{name} must be a string")
    if not value:
        raise _Reject("bad_field_type", f"{name} is empty")
    if limit is not None and len(value) > limit:
        raise _Reject("bad_field_type", f"{name} is longer than {limit} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Reject("bad_field_type", f"{name} is not valid Unicode (a lone surrogate)") from None
    return value


def event_from_object(obj: Any, seq: int, bounds: TimeBounds = DEFAULT_TIME_BOUNDS) -> Event:
    """Validate a decoded JSON value as a SPEC §1 event within ``bounds``; raises ``_Reject``
    (use ``parse_line``)."""
    if not isinstance(obj, dict):
        raise _Reject("not_an_object", f"line is JSON {type(obj).__name__}, not an object")
    event_id = _require_str(obj, "event_id")
    user_id = _require_str(obj, "user_id", MAX_USER_ID)
    if "event_time" not in obj:
        raise _Reject("missing_field", "missing field event_time")
    event_time = parse_time(obj["event_time"], "event_time")
    if "kind" not in obj:
        raise _Reject("missing_field", "missing field kind")
    kind = obj["kind"]
    if bounds.reads_own:
        return _own_event(obj, seq, bounds, event_id, user_id, event_time, kind)
    if kind not in KINDS:
        raise _Reject("unknown_kind", f"unknown kind {str(kind)[:40]!r}")
    amount = obj.get("amount")
    if amount is None:
        if kind in MONEY_KINDS:
            raise _Reject("missing_field" if "amount" not in obj else "bad_amount", f"{kind} needs an amount")
        micros, has_amount = 0, False
    else:
        micros, has_amount = parse_amount_micros(amount), True
    arrival = obj.get("arrival_time")
    arrival_time = event_time if arrival is None else parse_time(arrival, "arrival_time")
    if not (
        bounds.earliest_ms <= event_time < bounds.latest_ms
        and bounds.earliest_ms <= arrival_time < bounds.latest_ms
        and -bounds.max_ahead_ms <= arrival_time - event_time <= bounds.max_skew_ms
    ):
        raise _Reject("time_out_of_range", bounds.problem(event_time, arrival_time) or "out of range")
    attrs = obj.get("attrs")
    merchant: str | None = None
    if attrs is not None:
        if not isinstance(attrs, dict):
            raise _Reject("bad_field_type", "attrs must be an object")
        raw_merchant = attrs.get("merchant")
        if raw_merchant is not None:
            merchant = raw_merchant if isinstance(raw_merchant, str) else json.dumps(raw_merchant, default=str)
    extra = None
    if len(obj) > len(_KNOWN_FIELDS) or not _KNOWN_FIELDS.issuperset(obj):
        extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS} or None
    # Every field is given, and NamedTuple's own __new__ (Python) costs a third of this function.
    fields = (event_id, user_id, event_time, kind, micros, arrival_time, merchant, seq, has_amount, attrs, extra)
    return _new_tuple(Event, fields)


def _own_event(
    obj: dict[str, Any], seq: int, bounds: TimeBounds, event_id: str, user_id: str, event_time: int, kind: Any
) -> Event:
    """``event_from_object``'s second half for a rule set that declares its own kinds or attribute fields.

    The kind must be one the rule set declares (SPEC §1's when it declares none). The
    event's amount slot holds ``attrs[amount_field]`` when the rule set sums an attribute
    (else ``amount``), its merchant slot ``attrs[merchant_field]`` as text (else
    ``attrs.merchant``): both segmenters read those two slots, so they read the same
    values. An event of a kind a sum reads (``needs_amount``) without that value is
    rejected ``missing_field`` naming it; a missing distinct-counted field counts nothing.
    """
    kinds = KINDS if bounds.kinds is None else bounds.kinds
    if not isinstance(kind, str) or kind not in kinds:
        raise _Reject("unknown_kind", f"unknown kind {str(kind)[:40]!r}")
    attrs = obj.get("attrs")
    if attrs is not None and not isinstance(attrs, dict):
        raise _Reject("bad_field_type", "attrs must be an object")
    needs = MONEY_KINDS if bounds.needs_amount is None else bounds.needs_amount
    if bounds.amount_field is None:
        amount, name = obj.get("amount"), "amount"
    else:
        amount, name = (attrs or {}).get(bounds.amount_field), f"attrs.{bounds.amount_field}"
    if amount is None:
        if kind in needs:
            raise _Reject("missing_field", f"{kind} needs {name}")
        micros, has_amount = 0, False
    else:
        try:
            micros, has_amount = parse_amount_micros(amount), True
        except _Reject as exc:
            raise _Reject(exc.reason, f"{name}: {exc.detail}") from None
    arrival = obj.get("arrival_time")
    arrival_time = event_time if arrival is None else parse_time(arrival, "arrival_time")
    problem = bounds.problem(event_time, arrival_time)
    if problem is not None:
        raise _Reject("time_out_of_range", problem)
    merchant: str | None = None
    raw_merchant = (attrs or {}).get(bounds.merchant_field or "merchant")
    if raw_merchant is not None:
        merchant = raw_merchant if isinstance(raw_merchant, str) else json.dumps(raw_merchant, default=str)
    extra = {k: v for k, v in obj.items() if k not in _KNOWN_FIELDS} or None
    fields = (event_id, user_id, event_time, kind, micros, arrival_time, merchant, seq, has_amount, attrs, extra)
    return _new_tuple(Event, fields)


def parse_line(line: str, seq: int, bounds: TimeBounds = DEFAULT_TIME_BOUNDS) -> Event | Rejection:
    """Parse one JSON line into an ``Event`` (times within ``bounds``), or a ``Rejection`` naming
    the reason. Never raises."""
    if line[:1] == "{":
        # The common case, a bare object: the C scanner straight away (``decode`` wraps it in Python).
        # Anything else, or any failure, takes the full path below, which also words the error.
        try:
            obj, end = _scan(line, 0)
        except (StopIteration, ValueError, RecursionError):
            end = -1
        if end == len(line):
            try:
                return event_from_object(obj, seq, bounds)
            except _Reject as exc:
                return _rejection(obj, exc, seq, line)
    return parse_line_in_full(line, seq, bounds)


def parse_line_in_full(line: str, seq: int, bounds: TimeBounds = DEFAULT_TIME_BOUNDS) -> Event | Rejection:
    """``parse_line`` without its fast path: ``JSONDecoder.decode``, which words every JSON error."""
    try:
        obj = _decoder.decode(line)
    except _NonFinite as exc:
        # NaN and Infinity are not JSON; when the line is otherwise an event, name the field at fault.
        try:
            obj = _lenient_decoder.decode(line)
        except (ValueError, RecursionError) as other:  # a non-finite number in a line broken elsewhere too
            return Rejection("bad_json", f"not valid JSON: {other}", seq, line)
        try:
            event_from_object(obj, seq, bounds)
        except _Reject as inner:
            return _rejection(obj, inner, seq, line)
        return Rejection("bad_json", f"not valid JSON: {exc}", seq, line)
    except (ValueError, RecursionError) as exc:
        return Rejection("bad_json", f"not valid JSON: {exc}", seq, line)
    try:
        return event_from_object(obj, seq, bounds)
    except _Reject as exc:
        return _rejection(obj, exc, seq, line)


def _rejection(obj: Any, exc: _Reject, seq: int, line: str) -> Rejection:
    event_id = obj.get("event_id") if isinstance(obj, dict) else None
    user_id = obj.get("user_id") if isinstance(obj, dict) else None
    return Rejection(
        exc.reason,
        exc.detail,
        seq,
        line,
        event_id if isinstance(event_id, str) else None,
        user_id if isinstance(user_id, str) else None,
    )


def too_late(event: Event, watermark: int, detail: str) -> Rejection:
    """The dead-letter record for an event the stream dropped as too late."""
    return Rejection("too_late", detail, event.seq, event.to_json(), event.event_id, event.user_id)


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a JSON Lines file; ``InputError`` if unreadable."""
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read events: {exc.strerror}", str(path)) from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    yield number, text.rstrip("\r\n")
        except OSError as exc:
            raise InputError(f"cannot read events: {exc.strerror}", str(path)) from None


def arrival_order(events: Iterable[Event]) -> list[Event]:
    """Events sorted by ``arrival_time``, ties kept in input (``seq``) order."""
    return sorted(events, key=lambda e: (e.arrival_time, e.seq))


class Deduper:
    """First arrival of an ``event_id`` counts; later arrivals are duplicates, whatever their payload.

    The ids seen are kept as digests (``segments.seen``), 17-35 bytes an id
    rather than a Python set's 102-119: a stream keeps them for its whole life.
    """

    __slots__ = ("duplicates", "seen")

    def __init__(self) -> None:
        self.seen = SeenIds()
        self.duplicates = 0

    def first(self, event: Event) -> bool:
        """True when this is the first arrival of the event's id (and remember it)."""
        if self.seen.add_if_new(event.event_id):
            return True
        self.duplicates += 1
        return False


@dataclass(frozen=True)
class EventLog:
    """A file's events as both segmenters see them: valid, deduplicated, in arrival order."""

    events: list[Event]
    rejected: list[Rejection]
    duplicates: list[Event]
    lines: int

    @property
    def counts(self) -> dict[str, int]:
        by_reason: dict[str, int] = {}
        for rejection in self.rejected:
            by_reason[rejection.reason] = by_reason.get(rejection.reason, 0) + 1
        return {
            "lines": self.lines,
            "accepted": len(self.events),
            "duplicates": len(self.duplicates),
            "rejected": len(self.rejected),
            **{f"rejected_{reason}": n for reason, n in sorted(by_reason.items())},
        }


def parse_all(
    lines: Iterable[tuple[int, str]], bounds: TimeBounds = DEFAULT_TIME_BOUNDS
) -> tuple[list[Event], list[Rejection], int]:
    """Parse numbered lines into (valid events in input order, rejections, line count)."""
    valid: list[Event] = []
    rejected: list[Rejection] = []
    count = 0
    for number, text in lines:
        count += 1
        parsed = parse_line(text, number, bounds)
        if type(parsed) is Event:
            valid.append(parsed)
        else:
            rejected.append(parsed)  # type: ignore[arg-type]
    return valid, rejected, count


def load_event_log(path: str | Path, bounds: TimeBounds = DEFAULT_TIME_BOUNDS) -> EventLog:
    """Read a JSON Lines file into an ``EventLog`` (arrival order, first arrival of an id wins).

    Raises ``InputError`` when the file cannot be read; bad lines (and times outside
    ``bounds``) become rejections.
    """
    valid, rejected, count = parse_all(iter_lines(path), bounds)
    return dedupe(arrival_order(valid), rejected, count)


def dedupe(ordered: list[Event], rejected: list[Rejection], count: int) -> EventLog:
    """Split arrival-ordered events into first arrivals and duplicates."""
    deduper = Deduper()
    events: list[Event] = []
    duplicates: list[Event] = []
    for event in ordered:
        (events if deduper.first(event) else duplicates).append(event)
    return EventLog(events, rejected, duplicates, count)


def write_jsonl(path: str | Path, records: Iterable[str]) -> int:
    """Write JSON lines atomically (temp file then rename); returns the count written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(target.name + ".partial")
    count = 0
    with open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record)
            handle.write("\n")
            count += 1
    temp.replace(target)
    return count
