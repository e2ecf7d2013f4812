"""SPEC §1: parsing, validation, dead-letter reasons, exact amounts, arrival order and dedup."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.errors import InputError
from segments.events import (
    DAY_MS,
    REASONS,
    Event,
    Rejection,
    TimeBounds,
    format_micros,
    load_event_log,
    parse_line,
    parse_line_in_full,
)

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def line(**fields: Any) -> str:
    """A JSON line with the fields given (``None`` drops the field); defaults make a valid view."""
    obj: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "event_time": T0, "kind": "view"}
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not None}, ensure_ascii=False)


def raw_amount(kind: str, amount_text: str) -> str:
    """A line whose amount is written verbatim (a JSON number, or a literal json.dumps cannot write)."""
    return '{"event_id":"e","user_id":"u","event_time":0,"kind":"' + kind + '","amount":' + amount_text + "}"


def event(text: str) -> Event:
    parsed = parse_line(text, 1)
    assert isinstance(parsed, Event), parsed
    return parsed


def rejection(text: str) -> Rejection:
    parsed = parse_line(text, 7)
    assert isinstance(parsed, Rejection), parsed
    return parsed


# ---- valid events --------------------------------------------------------------------------------


def test_minimal_view_with_integer_ms() -> None:
    e = event(line())
    assert (e.event_id, e.user_id, e.event_time, e.kind) == ("e1", "u1", T0, "view")
    assert e.arrival_time == T0, "absent arrival_time means event_time"
    assert not e.has_amount and e.amount is None and e.amount_micros == 0


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-01-01T00:00:00Z", T0),
        ("2024-01-01T00:00:00z", T0),
        ("2024-01-01T00:00:00.000Z", T0),
        ("2024-01-01T00:00:00.123Z", T0 + 123),
        ("2024-01-01T00:00:00.5Z", T0 + 500),
        ("2024-01-01T00:00:00.123000Z", T0 + 123),
        ("2024-01-01 00:00:00Z", T0),
        ("2024-01-01T02:00:00+02:00", T0),
        ("2023-12-31T18:30:00-05:30", T0),
        ("2024-01-01T00:00:00+00:00", T0),
        ("2024-01-01T00:00:00-00:00", T0),
        ("2024-01-01T05:45:00.250+05:45", T0 + 250),
    ],
)
def test_rfc3339_with_offsets_is_read_as_epoch_ms(text: str, ms: int) -> None:
    assert event(line(event_time=text)).event_time == ms
    assert event(line(arrival_time=text, event_time=T0 - 5)).arrival_time == ms


def test_integer_ms_and_text_times_mix() -> None:
    e = event(line(event_time="2024-01-01T00:00:00Z", arrival_time=T0 + 1500))
    assert (e.event_time, e.arrival_time) == (T0, T0 + 1500)


def test_user_id_of_128_characters_and_any_unicode_is_accepted() -> None:
    for user in ("x" * 128, "😀" * 128, "a:b c'\"<script>", "ünï¢ødé"):
        assert event(line(user_id=user)).user_id == user


def test_unknown_extra_fields_are_kept_and_written_back() -> None:
    e = event(line(source="app", nested={"a": [1, 2.5]}, attrs={"merchant": "m1", "score": 0.25}))
    assert e.extra == {"source": "app", "nested": {"a": [1, Decimal("2.5")]}}
    assert e.merchant == "m1"
    again = json.loads(e.to_json(), parse_float=Decimal)
    assert again["source"] == "app" and again["nested"] == {"a": [1, Decimal("2.5")]}
    assert again["attrs"]["score"] == Decimal("0.25")


def test_to_json_reads_back_to_the_same_event() -> None:
    for text in (
        line(kind="purchase", amount="12.345678", arrival_time=T0 + 9, attrs={"merchant": "m", "x": 1e-3}),
        line(kind="txn", amount=0, attrs={"merchant": 5}),
        line(kind="view", extra_field=[1, {"deep": 1.5}]),
    ):
        e = event(text)
        assert event(e.to_json()) == e


# ---- exact money ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "micros"),
    [
        ("0.1", 100_000),
        ("12.345678", 12_345_678),
        ("999999999999.999999", 999_999_999_999_999_999),
        ("0", 0),
        ("-0", 0),
        ("+5", 5_000_000),
        ("007.50", 7_500_000),
    ],
)
def test_decimal_string_amounts_are_exact(raw: str, micros: int) -> None:
    assert event(line(kind="purchase", amount=raw)).amount_micros == micros


@pytest.mark.parametrize(
    ("number", "micros"),
    [("0.1", 100_000), ("0.2", 200_000), ("33.33", 33_330_000), ("1.5e2", 150_000_000), ("100", 100_000_000)],
)
def test_json_number_amounts_never_pass_through_float(number: str, micros: int) -> None:
    e = event(raw_amount("txn", number))
    assert e.amount_micros == micros
    assert isinstance(e.amount, Decimal) and not isinstance(e.amount, float)


def test_point_one_plus_point_two_is_exactly_point_three() -> None:
    parts = [event(line(event_id=f"e{i}", kind="purchase", amount=a)) for i, a in enumerate(("0.1", "0.2"))]
    assert sum(p.amount_micros for p in parts) == event(line(kind="purchase", amount="0.3")).amount_micros
    assert event(raw_amount("txn", "0.1")).amount_micros * 3 == 300_000
    assert format_micros(300_000) == "0.3"


def test_no_float_survives_parsing() -> None:
    e = event('{"event_id":"e","user_id":"u","event_time":0,"kind":"txn","amount":0.1,'
              '"attrs":{"lat":51.5,"deep":[0.25,{"x":1e-9}]},"score":0.75}')  # fmt: skip

    def floats(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [f for v in value.values() for f in floats(v)]
        if isinstance(value, list | tuple):
            return [f for v in value for f in floats(v)]
        return [value] if isinstance(value, float) else []

    assert floats(list(e)) == []


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0"), (1, "0.000001"), (12_500_000, "12.5"), (100_000_000, "100"), (33_330_000, "33.33")],
)
def test_format_micros_is_the_shortest_exact_text(micros: int, text: str) -> None:
    assert format_micros(micros) == text


# ---- every rejection reason ----------------------------------------------------------------------

REJECTED: list[tuple[str, str]] = [
    # bad_json
    ("{", "bad_json"),
    ("", "bad_json"),
    ('{"event_id":"e1",}', "bad_json"),
    ('{"event_id":NaN "e1"}', "bad_json"),  # a non-finite number in a line broken elsewhere too
    ("{'event_id': 'e1'}", "bad_json"),
    (line() + " trailing", "bad_json"),
    ('{"event_id":"e","user_id":"u","event_time":0,"kind":"view","attrs":{"x":NaN}}', "bad_json"),
    ("[" * 100_000, "bad_json"),
    # not_an_object
    ("[]", "not_an_object"),
    ('["e1", "u1"]', "not_an_object"),
    ('"a string"', "not_an_object"),
    ("42", "not_an_object"),
    ("null", "not_an_object"),
    ("true", "not_an_object"),
    # missing_field, one by one
    (line(event_id=None), "missing_field"),
    (line(user_id=None), "missing_field"),
    (line(event_time=None), "missing_field"),
    (line(kind=None), "missing_field"),
    (line(kind="purchase"), "missing_field"),
    (line(kind="refund"), "missing_field"),
    (line(kind="txn"), "missing_field"),
    # bad_field_type
    (line(event_id=5), "bad_field_type"),
    (line(event_id=""), "bad_field_type"),
    (line(event_id=["e1"]), "bad_field_type"),
    (line(user_id=17850), "bad_field_type"),
    (line(user_id=""), "bad_field_type"),
    (line(user_id="x" * 129), "bad_field_type"),
    (line(user_id="😀" * 129), "bad_field_type"),
    ('{"event_id":"e","user_id":"\\ud800","event_time":0,"kind":"view"}', "bad_field_type"),
    (line(event_time=True), "bad_field_type"),
    (line(event_time=1.5), "bad_field_type"),
    (line(event_time=[T0]), "bad_field_type"),
    (line(event_time={"ms": T0}), "bad_field_type"),
    (line(arrival_time=False), "bad_field_type"),
    (line(attrs=["merchant"]), "bad_field_type"),
    (line(attrs="merchant=m1"), "bad_field_type"),
    # naive_timestamp
    (line(event_time="2024-01-01T00:00:00"), "naive_timestamp"),
    (line(event_time="2024-01-01T00:00:00.123"), "naive_timestamp"),
    (line(event_time="2024-01-01 00:00:00"), "naive_timestamp"),
    (line(arrival_time="2024-01-01T00:00:05"), "naive_timestamp"),
    # bad_timestamp (incl. precision finer than a millisecond)
    (line(event_time="2024-01-01T00:00:00.1234Z"), "bad_timestamp"),
    (line(event_time="2024-01-01T00:00:00.000001Z"), "bad_timestamp"),
    (line(arrival_time="2024-01-01T00:00:00.0001+01:00"), "bad_timestamp"),
    (line(event_time="2024-02-30T00:00:00Z"), "bad_timestamp"),
    (line(event_time="2024-01-01T24:00:00Z"), "bad_timestamp"),
    (line(event_time="2024-01-01T00:00:60Z"), "bad_timestamp"),
    (line(event_time="2024-01-01T00:00:00+24:00"), "bad_timestamp"),
    (line(event_time="2024-01-01T00:00:00+0100"), "bad_timestamp"),
    (line(event_time="2024-01-01T00:00:00.Z"), "bad_timestamp"),
    (line(event_time="yesterday"), "bad_timestamp"),
    (line(event_time="1704067200000"), "bad_timestamp"),
    (line(event_time="２０２４-01-01T00:00:00Z"), "bad_timestamp"),
    (line(event_time="2024-01-01T00:00:00Z\n"), "bad_timestamp"),
    (line(event_time=-1), "bad_timestamp"),
    (line(event_time=10**20), "bad_timestamp"),
    # time_out_of_range (the two events, and each bound just past its edge)
    ('{"event_id":"a3","user_id":"u3","event_time":"9999-12-31T23:59:59.999Z","kind":"view"}', "time_out_of_range"),
    (line(arrival_time=1), "time_out_of_range"),
    (line(event_time=4_102_444_800_000), "time_out_of_range"),
    (line(event_time="2100-01-01T00:00:00Z", arrival_time="2099-12-31T23:59:59.999Z"), "time_out_of_range"),
    (line(arrival_time=T0 + 1_096 * DAY_MS + 1), "time_out_of_range"),
    (line(arrival_time=T0 - DAY_MS - 1), "time_out_of_range"),
    # unknown_kind
    (line(kind="click"), "unknown_kind"),
    (line(kind="VIEW"), "unknown_kind"),
    (line(kind=""), "unknown_kind"),
    (line(kind=3), "unknown_kind"),
    # bad_amount
    (line(kind="purchase", amount=-1), "bad_amount"),
    (line(kind="purchase", amount="-0.01"), "bad_amount"),
    (raw_amount("purchase", "NaN"), "bad_amount"),
    (raw_amount("purchase", "Infinity"), "bad_amount"),
    (raw_amount("txn", "-Infinity"), "bad_amount"),
    (line(kind="purchase", amount="NaN"), "bad_amount"),
    (line(kind="purchase", amount="Infinity"), "bad_amount"),
    (raw_amount("purchase", "1e12"), "bad_amount"),
    (line(kind="purchase", amount=10**12), "bad_amount"),
    (line(kind="purchase", amount="1000000000000"), "bad_amount"),
    (raw_amount("purchase", "0.1234567"), "bad_amount"),
    (line(kind="purchase", amount="0.0000001"), "bad_amount"),
    (line(kind="purchase", amount="1.1000000"), "bad_amount"),
    (line(kind="purchase", amount=True), "bad_amount"),
    (line(kind="purchase", amount=False), "bad_amount"),
    (line(kind="purchase", amount="12.5abc"), "bad_amount"),
    (line(kind="purchase", amount="12.5\n"), "bad_amount"),
    (line(kind="purchase", amount=" 12.5"), "bad_amount"),
    (line(kind="purchase", amount="1e3"), "bad_amount"),
    (line(kind="purchase", amount="12."), "bad_amount"),
    (line(kind="purchase", amount=".5"), "bad_amount"),
    (line(kind="purchase", amount="0x10"), "bad_amount"),
    (line(kind="purchase", amount="1_000"), "bad_amount"),
    (line(kind="purchase", amount="١٢"), "bad_amount"),
    (line(kind="purchase", amount=""), "bad_amount"),
    (line(kind="purchase", amount=[1]), "bad_amount"),
    (line(kind="purchase", amount={"value": 1}), "bad_amount"),
    (raw_amount("purchase", "null"), "bad_amount"),
    (line(kind="view", amount="-3"), "bad_amount"),
]


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_a_bad_line_is_rejected_with_its_reason(text: str, reason: str) -> None:
    r = rejection(text)
    assert r.reason == reason, r.detail
    assert r.seq == 7 and r.raw == text and r.detail
    record = json.loads(r.to_json())
    assert record["reason"] == reason and record["line"] == 7 and record["raw"] == text
    r.to_json().encode("utf-8")  # a dead-letter line can always be written


def test_every_reason_but_too_late_is_exercised() -> None:
    assert {reason for _, reason in REJECTED} == set(REASONS) - {"too_late"}


def test_rejection_keeps_the_ids_it_could_read() -> None:
    r = rejection(line(event_id="e9", user_id="u9", kind="click"))
    assert (r.event_id, r.user_id) == ("e9", "u9")
    assert rejection("[1]").event_id is None


# ---- files: arrival order, dedup, dead letters ---------------------------------------------------


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(text + "\n" for text in lines), encoding="utf-8")
    return path


def test_replay_orders_by_arrival_with_ties_in_file_order(tmp_path: Path) -> None:
    log = load_event_log(
        write(
            tmp_path / "e.jsonl",
            [
                line(event_id="c", event_time=T0 + 3, arrival_time=T0 + 30),
                line(event_id="a", event_time=T0 + 1, arrival_time=T0 + 10),
                line(event_id="t1", event_time=T0 + 9, arrival_time=T0 + 20),
                line(event_id="t2", event_time=T0 + 2, arrival_time=T0 + 20),
                line(event_id="b", event_time=T0 + 20),
            ],
        )
    )
    assert [e.event_id for e in log.events] == ["a", "t1", "t2", "b", "c"]


def test_duplicate_with_changed_payload_first_arrival_wins(tmp_path: Path) -> None:
    log = load_event_log(
        write(
            tmp_path / "e.jsonl",
            [
                # later in the file but earlier to arrive: this one counts
                line(event_id="d", kind="purchase", amount="500", arrival_time=T0 + 50),
                line(event_id="d", kind="purchase", amount="5", arrival_time=T0 + 5),
                line(event_id="d", kind="view", user_id="other", arrival_time=T0 + 5),
                line(event_id="x", kind="view"),
            ],
        )
    )
    first = [e for e in log.events if e.event_id == "d"]
    assert len(first) == 1 and first[0].amount_micros == 5_000_000 and first[0].seq == 2
    assert sorted((d.event_id, d.seq) for d in log.duplicates) == [("d", 1), ("d", 3)]
    assert log.counts["duplicates"] == 2 and log.counts["accepted"] == 2


def test_bad_lines_are_counted_and_never_stop_the_run(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    good = [line(event_id=f"ok{i}", event_time=T0 + i) for i in range(3)]
    path.write_bytes(
        (good[0] + "\n{broken\n\n   \n" + good[1] + '\n{"user_id":"\xff"}\n').encode("utf-8")
        + b'{"event_id":"z","user_id":"bad\xffbyte","event_time":0,"kind":"view"}\n'
        + (good[2] + "\n").encode("utf-8")
    )
    log = load_event_log(path)
    assert [e.event_id for e in log.events] == ["ok0", "ok1", "ok2"]
    assert [(r.reason, r.seq) for r in log.rejected] == [("bad_json", 2), ("missing_field", 6), ("bad_field_type", 7)]
    assert log.counts["rejected"] == 3 and log.counts["rejected_bad_json"] == 1 and log.lines == 6
    for r in log.rejected:
        r.to_json().encode("utf-8")


def test_unreadable_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read events"):
        load_event_log(tmp_path / "missing.jsonl")


# ---- property: arrival-order replay and dedup against an oracle ----------------------------------

deliveries = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 1000)),  # (id, arrival, amount cents)
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(deliveries)
def test_dedup_keeps_the_first_arrival_as_an_oracle_does(
    tmp_path_factory: Any, items: list[tuple[int, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("dedup") / "e.jsonl"
    texts = [
        line(event_id=f"id{i}", kind="purchase", amount=f"{c // 100}.{c % 100:02d}", event_time=T0 + a,
             arrival_time=T0 + a)
        for i, a, c in items
    ]  # fmt: skip
    write(path, texts)
    log = load_event_log(path)
    # oracle: stable sort by arrival (ties in file order), then the first of each id
    order = sorted(range(len(items)), key=lambda k: items[k][1])
    seen: set[int] = set()
    expected = []
    for k in order:
        if items[k][0] not in seen:
            seen.add(items[k][0])
            expected.append(k + 1)
    assert [e.seq for e in log.events] == expected
    assert len(log.duplicates) == len(items) - len(expected)
    for e in log.events:
        assert e.amount_micros == event(texts[e.seq - 1]).amount_micros


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 999_999_999_999),
    st.integers(0, 999_999),
    st.sampled_from(["string", "number"]),
)
def test_any_amount_in_range_round_trips_exactly(whole: int, frac: int, form: str) -> None:
    text = f"{whole}.{frac:06d}"
    raw = f'"{text}"' if form == "string" else text
    e = event(raw_amount("txn", raw))
    assert e.amount_micros == whole * 1_000_000 + frac
    assert e.amount == Decimal(text)
    assert event(e.to_json()).amount_micros == e.amount_micros


_FRAGMENTS = st.sampled_from(
    [" ", "\t", "{", "}", "[]", ",", ":", '"', "x", "NaN", "-Infinity", "1e400", "12.5", "0.1234567", "null",
     "true", '"\\ud800"', "\ud800", '"amount":', '"attrs":{"merchant":"m"}', '"arrival_time":"2024-01-01T00:00:00Z"',
     '"kind":"purchase"', '"kind":"nope"', "99999999999999999999999",
     # numbers the fast path must read as exactly as the full decoder: fractions, 64-bit edges, nesting
     '"attrs":{"n":[1,{"x":2.5}]}', '"amount":18446744073709551616', '"x":-9223372036854775809', '"attrs":{}',
     '"amount":150', '"event_time":1704067200000', '"event_time":1.7e12', '"user_id":"u\\u00e9"', '"a":1,"a":2']
)


_BASES = st.sampled_from(
    [
        line(kind="purchase", amount="12.50", attrs={"merchant": "m"}),
        raw_amount("purchase", "12.50"),  # a number with a fraction: a Decimal, never a float
        raw_amount("refund", "7"),
        '{"event_id":"e9","user_id":"u9","event_time":1704067200000,"kind":"view","attrs":{"w":[0.10]}}',
        '{"event_id":"e9","user_id":"u9","event_time":1704067200000,"kind":"cart","attrs":{"product":"p1"}}',
    ]
)


@settings(max_examples=400, deadline=None)
@given(_BASES, st.lists(_FRAGMENTS, max_size=6), st.integers(0, 90), st.lists(_FRAGMENTS, max_size=3))
def test_the_fast_path_parses_exactly_as_the_full_decoder(
    base: str, middle: list[str], cut: int, tail: list[str]
) -> None:
    """Valid lines cut, padded and spliced with JSON fragments: same event or same rejection either way."""
    text = base[:cut] + "".join(middle) + base[cut:] + "".join(tail)
    for each in (text, base):
        fast, full = parse_line(each, 3), parse_line_in_full(each, 3)
        assert fast == full
        if isinstance(full, Event):  # 0.1 == Decimal("0.10") is False, but 1.5 == Decimal("1.5"): the text tells
            assert fast.to_json() == full.to_json()


def _amount_outcome(parse: Any, value: Any) -> Any:
    from segments.events import _Reject

    try:
        return parse(value)
    except _Reject as exc:
        return ("rejected", exc.args)


_amount_texts = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,14}(\.[0-9]{0,8})?\Z"),
    st.sampled_from(["150", "0150", "150.", ".5", "1e2", "1E+2", " 1", "-0", "+1.5", "NaN", "1.2000000", "١٥٠"]),
    st.text(max_size=8),
)
_amount_values = st.one_of(
    _amount_texts,
    _amount_texts.filter(lambda t: t.strip() != "").map(lambda t: Decimal(t) if _is_decimal(t) else t),
    st.integers(min_value=-(10**13), max_value=10**13),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.booleans(),
    st.none(),
    st.floats(),
)


def _is_decimal(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(_amount_values)
def test_the_plain_amount_fast_path_agrees_with_the_decimal_path(value: Any):
    from segments.events import parse_amount_micros, parse_amount_micros_in_full

    assert _amount_outcome(parse_amount_micros, value) == _amount_outcome(parse_amount_micros_in_full, value)


@pytest.mark.parametrize(
    ("value", "micros"),
    [("150", 150_000_000), ("0.000001", 1), ("12.5", 12_500_000), (Decimal("12.34"), 12_340_000), (7, 7_000_000),
     ("999999999999.999999", 999_999_999_999_999_999), ("0", 0)],
)  # fmt: skip
def test_plain_amounts_are_exact_micro_units(value: Any, micros: int):
    from segments.events import parse_amount_micros

    assert parse_amount_micros(value) == micros


@pytest.mark.parametrize(
    "text",
    [
        '{"event_id":"e1","user_id":"u1","event_time":1704067200000,"kind":"purchase","amount":1e40099999999999999999999}',
        '{"event_id":"e1","user_id":"u1","event_time":1704067200000,"kind":"view","attrs":{"x":1e-99999999999999999999}}',
        '{"event_id":"e1","user_id":"u1","event_time":1704067200000,"kind":"purchase","amount":NaN,"y":1e99999999999999999999}',
        "1e40099999999999999999999",
    ],
)
def test_a_number_whose_exponent_decimal_cannot_hold_is_bad_json_not_an_exception(text: str):
    """Decimal raises InvalidOperation (not a ValueError) for such exponents; parsing must still never raise."""
    for parse in (parse_line, parse_line_in_full):
        rejected = parse(text, 1)
        assert isinstance(rejected, Rejection) and rejected.reason == "bad_json" and "out of range" in rejected.detail


# ---- time range (bounded work) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"arrival_time": T0 + 1_096 * DAY_MS},  # exactly the max skew late
        {"arrival_time": T0 - DAY_MS},  # exactly a day ahead of its arrival
        {"event_time": 0},  # the earliest instant
        {"event_time": 4_102_444_800_000 - 1},  # the last millisecond before 2100
    ],
)
def test_times_at_the_edges_of_the_default_bounds_are_accepted(fields: dict[str, int]) -> None:
    assert isinstance(parse_line(line(**fields), 1), Event)


def test_a_rule_sets_bounds_narrow_the_range_on_the_fast_and_the_full_path() -> None:
    bounds = TimeBounds(earliest_ms=946_684_800_000, max_skew_ms=DAY_MS, max_ahead_ms=0)
    for text in (line(event_time=0), line(arrival_time=T0 + DAY_MS + 1), line(arrival_time=T0 - 1)):
        for parse in (parse_line, parse_line_in_full):
            parsed = parse(text, 3, bounds)
            assert isinstance(parsed, Rejection) and parsed.reason == "time_out_of_range", text
    assert isinstance(parse_line(line(arrival_time=T0 + DAY_MS), 3, bounds), Event)


def test_load_event_log_counts_times_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(line() + "\n" + line(event_id="e2", event_time="9999-12-31T23:59:59.999Z") + "\n")
    log = load_event_log(path)
    assert len(log.events) == 1 and log.counts["rejected_time_out_of_range"] == 1
