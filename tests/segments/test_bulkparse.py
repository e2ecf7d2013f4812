"""``parse_many`` (the chunk parser the replay reads with) gives exactly ``parse_line``'s results, line by line."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from segments.bulkparse import parse_many
from segments.events import DAY_MS, Event, Rejection, TimeBounds, parse_line

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z

BOUNDS = (
    TimeBounds(),
    TimeBounds(earliest_ms=T0, latest_ms=T0 + DAY_MS, max_skew_ms=60_000, max_ahead_ms=1_000),
    TimeBounds(kinds=frozenset({"view", "purchase", "tap"})),  # a rule set's own kinds: the per-line path
)

_ascii = st.text(alphabet="abcxyz0123456789-_", min_size=1, max_size=6)
_good_ids = st.one_of(_ascii, st.sampled_from(["é", "u" * 128, "user 42"]))
_bad_ids = st.sampled_from(["", "x" * 129, "\ud800", "a\udcff", 7, None, ["u"], True])
_LATEST = TimeBounds().latest_ms
# Near T0, and at the edges of the bounds above (the last millisecond each allows).
_good_times = st.one_of(
    st.integers(T0 - DAY_MS, T0 + DAY_MS), st.sampled_from([T0, T0 + DAY_MS - 1, _LATEST - 1, _LATEST - 500])
)
_bad_times = st.sampled_from(
    [0, -1, 253_402_300_800_000, 4_102_444_800_000, 10**30, T0 - 1_096 * DAY_MS - 1, True, None, 1.5,
     "2024-01-01T00:00:00Z", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z", ""]
)  # fmt: skip
_good_kinds = st.sampled_from(["view", "cart", "purchase", "refund", "txn", "tap"])
_bad_kinds = st.sampled_from(["View", "", None, 1, ["view"], "nope"])
_good_amounts = st.sampled_from(['"12.50"', "7", "12.5", "0.000001", '"999999999999.999999"', "0", "150", "-0"])
_bad_amounts = st.sampled_from(
    ['"-1"', "-1", "1e2", "1E+2", "0.1234567", "1000000000000", '"abc"', "NaN", "true", "null", '"1.5e-3"', "[]"]
)
_good_attrs = st.one_of(
    st.none(), st.dictionaries(st.sampled_from(["merchant", "device"]), _ascii, max_size=2)
)
_bad_attrs = st.one_of(
    st.sampled_from([[], "m", 3, {"merchant": 7}, {"merchant": None, "w": [1]}, {"merchant": {"a": 1}}]),
    st.dictionaries(st.sampled_from(["merchant", "device"]), st.one_of(_bad_ids, _bad_times), max_size=2),
)
_FRAGMENTS = st.sampled_from(
    [" ", "{", "}", "[", "]", ",", ":", '"', "NaN", "1.5", "null", '"\\ud800"', '"a":1,"a":2', '"x":1', "\t"]
)


def _one(draw: Any, good: Any, bad: Any) -> Any:
    """Mostly a good value, one time in six a bad one."""
    return draw(bad if draw(st.integers(0, 5)) == 0 else good)


@st.composite
def lines(draw: Any) -> str:
    """A JSON line near an event: each field good, bad or missing; sometimes spliced with JSON fragments."""
    parts: list[str] = []

    def put(name: str, value: Any, raw: bool = False) -> None:
        parts.append(json.dumps(name) + ":" + (value if raw else json.dumps(value, ensure_ascii=ascii_only)))

    ascii_only = draw(st.booleans())
    event_time: Any = T0
    for name, good, bad in (
        ("event_id", _good_ids, _bad_ids),
        ("user_id", _good_ids, _bad_ids),
        ("event_time", _good_times, _bad_times),
        ("kind", _good_kinds, _bad_kinds),
    ):
        if draw(st.integers(0, 15)):
            value = _one(draw, good, bad)
            put(name, value)
            if name == "event_time" and type(value) is int:
                event_time = value
    if draw(st.booleans()):
        put("amount", _one(draw, _good_amounts, _bad_amounts), raw=True)
    if draw(st.booleans()):
        offsets = st.one_of(
            st.integers(-2 * DAY_MS, 2 * DAY_MS), st.sampled_from([-DAY_MS, -1_000, -1, 1, 499, 500, 60_000, 60_001])
        )
        arrival = offsets.map(lambda offset: event_time + offset)
        put("arrival_time", _one(draw, arrival, _bad_times))
    if draw(st.booleans()):
        put("attrs", _one(draw, _good_attrs, _bad_attrs))
    if draw(st.integers(0, 7)) == 0:
        put(draw(st.sampled_from(["note", "event_id", "Kind"])), draw(st.one_of(st.integers(), _ascii)))
    parts = draw(st.permutations(parts))
    text = "{" + ",".join(parts) + "}"
    if draw(st.integers(0, 5)) == 0:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + "".join(draw(st.lists(_FRAGMENTS, max_size=3))) + text[cut:]
    return text


def _outcomes(parsed: list[Event | Rejection]) -> list[str]:
    """What a reader sees of each result, exactly: its repr (Decimal, not float), and its JSON line."""
    return [repr(p) + "\n" + p.to_json() for p in parsed]


def check_chunk(texts: list[str], bounds: TimeBounds) -> None:
    numbered = list(enumerate(texts, start=11))
    expected = [parse_line(text, number, bounds) for number, text in numbered]
    valid: list[Event] = []
    rejected = parse_many(numbered, valid, bounds)
    assert _outcomes(valid) == _outcomes([p for p in expected if isinstance(p, Event)])
    assert _outcomes(rejected) == _outcomes([p for p in expected if isinstance(p, Rejection)])


@settings(max_examples=1_500, deadline=None)
@given(st.lists(lines(), min_size=1, max_size=8), st.sampled_from(BOUNDS))
def test_parse_many_gives_parse_lines_events_and_dead_letters_on_generated_lines(
    texts: list[str], bounds: TimeBounds
) -> None:
    """Events, rejections (reason, detail, raw line) and their order: the same as parse_line one line at a time."""
    check_chunk(texts, bounds)


def test_parse_many_on_the_edges_the_fast_path_must_hand_over() -> None:
    """Each line here is one the inlined checks must pass to ``parse_line``, or accept with its exact value."""
    base = '{"event_id":"e1","user_id":"u1","event_time":1704067200000,"kind":"view"'
    texts = [
        base + "}",
        base + ',"arrival_time":1704067200500}',
        base + ',"arrival_time":1704067100000}',  # arrives before its event time: within max_ahead
        base + ',"arrival_time":1704240000001}',  # more than max_ahead ahead
        base + ',"arrival_time":"2024-01-01T00:00:01Z"}',
        base + ',"attrs":{"merchant":"m1","w":[0.10]}}',  # a Decimal inside attrs, kept as it was read
        base + ',"attrs":{"merchant":7}}',  # a merchant that is not text: JSON text
        base + ',"attrs":null,"amount":null}',
        base + ',"amount":12.50}',
        base + ',"amount":"0.0000001"}',
        base + ',"note":"x"}',  # an extra field is kept in ``extra``
        base + "} ",
        " " + base + "}",
        base + ',"user_id":"' + "u" * 129 + '"}',
        base + ',"user_id":"\\ud800"}',
        base + ',"event_id":""}',
        base + ',"event_time":true}',
        base + ',"kind":"purchase"}',
        base.replace('"view"', '"purchase"') + ',"amount":7}',
        base.replace('"view"', '"refund"') + ',"amount":-1}',
        base.replace('"view"', '"txn"') + ',"amount":NaN}',
        base + ',"event_time":4102444800000}',
        base + ',"event_time":-5}',
        "[]",
        "",
        "{",
        base,
    ]
    for bounds in BOUNDS:
        check_chunk(texts, bounds)
