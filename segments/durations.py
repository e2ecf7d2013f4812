"""Durations as the command line writes them: ``500ms``, ``5s``, ``10m``, ``1h``."""

from __future__ import annotations

import re

from segments.errors import UsageError

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def parse_duration_ms(text: str) -> int:
    """Return the duration in milliseconds; raise ``UsageError`` naming the text when it is not one.

    A bare ``0`` is accepted; every other value needs a unit.
    """
    if text.strip() == "0":
        return 0
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"bad duration {text!r}: use a whole number and a unit, e.g. 500ms, 5s, 10m, 1h")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def format_duration_ms(ms: int) -> str:
    """The shortest exact spelling of ``ms`` in the units ``parse_duration_ms`` reads."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def readable_duration_ms(ms: float) -> str:
    """``ms`` rounded for people: ``850ms``, ``4.2s``, ``7m 6s``, ``2h 5m``, ``3d 4h`` (never a raw ``425855ms``)."""
    if ms < 1_000:
        return f"{ms:.1f}ms" if ms < 10 and ms != int(ms) else f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s".replace(".0s", "s")
    seconds = round(ms / 1000)
    for big, small, big_unit, small_unit in ((86_400, 3_600, "d", "h"), (3_600, 60, "h", "m"), (60, 1, "m", "s")):
        if seconds >= big:
            whole, rest = divmod(seconds, big)
            part = rest // small
            return f"{whole}{big_unit} {part}{small_unit}" if part else f"{whole}{big_unit}"
    return f"{seconds}s"  # pragma: no cover - every value of a minute or more is handled above
