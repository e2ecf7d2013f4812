"""Epoch-millisecond instants, RFC 3339 text, and the clock that is injected where time is read."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

Clock = Callable[[], int]
"""A source of "now" in epoch milliseconds; injected so tests control time."""

MAX_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z, exclusive
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# ASCII digits only (``\d`` would also take other scripts' digits), matched in full (``$`` would
# accept a trailing newline).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|z|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)


class TimestampError(ValueError):
    """A timestamp that is not RFC 3339 with an offset at millisecond precision."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def wall_clock_ms() -> int:
    """The real clock, in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def parse_rfc3339_ms(text: str) -> int:
    """Parse RFC 3339 text with an explicit offset into epoch milliseconds.

    Raises ``TimestampError`` with reason ``naive_timestamp`` when the offset is
    missing and ``bad_timestamp`` for anything else (bad shape, impossible date,
    digits below the millisecond that are not zero).
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise TimestampError("bad_timestamp", f"not an RFC 3339 timestamp: {text[:64]!r}")
    year, month, day, hour, minute, second, frac, offset = match.groups()
    if offset is None:
        raise TimestampError("naive_timestamp", f"timestamp has no UTC offset: {text[:64]!r}")
    frac = frac or ""
    if frac[3:].strip("0"):
        raise TimestampError("bad_timestamp", f"finer than a millisecond: {text[:64]!r}")
    millis = int((frac + "000")[:3])
    if offset in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise TimestampError("bad_timestamp", f"bad UTC offset: {text[:64]!r}")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz)
    except ValueError as exc:
        raise TimestampError("bad_timestamp", f"impossible date or time {text[:64]!r}: {exc}") from None
    delta = moment - _EPOCH
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + millis
    if not 0 <= ms < MAX_MS:
        raise TimestampError("bad_timestamp", f"out of range: {text[:64]!r}")
    return ms


_DAY_MS = 86_400_000
_day_text: dict[int, str] = {}


def format_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC text with millisecond precision, e.g. ``2024-01-01T00:00:00.000Z``.

    On the hot path (every transition the stream emits), so the date part is cached per day.
    """
    day, rest = divmod(ms, _DAY_MS)
    date = _day_text.get(day)
    if date is None:
        date = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        if len(_day_text) < 100_000:
            _day_text[day] = date
    seconds, millis = divmod(rest, 1000)
    minutes, sec = divmod(seconds, 60)
    return f"{date}{minutes // 60:02d}:{minutes % 60:02d}:{sec:02d}.{millis:03d}Z"


def to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def from_datetime(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds; a naive one is refused."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
