"""``segshadow import jsonl|csv|parquet --map``: a team's own export as SPEC events, with dead letters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segments.errors import InputError
from segments.events import Event, load_event_log, parse_line
from segments.importers import import_mapped, import_rees46, parse_field_map
from segshadow.cli import main
from tests.segments.own_rules import OWN

MAP = "event_id=id,user_id=who.uid,event_time=ts,arrival_time=received,kind=type,amount=price.value,merchant=shop"


def _records() -> list[dict[str, object]]:
    return [
        {"id": "1", "who": {"uid": "u1"}, "ts": "2024-01-01T00:00:00Z", "received": 1704067205000,
         "type": "purchase", "price": {"value": 12.5, "currency": "EUR"}, "shop": "m1", "extra_field": "x"},
        {"id": "2", "who": {"uid": "u1"}, "ts": "2024-01-01 00:01:00 UTC", "type": "view", "shop": 7},
        {"id": "3", "who": {"uid": "u2"}, "ts": "2024-01-01T01:00:00+01:00", "type": "purchase",
         "price": {"value": "100.000001"}},
        {"id": "4", "who": {}, "ts": "2024-01-01T00:00:00Z", "type": "view"},  # no user: dead letter
        {"id": "5", "who": {"uid": "u3"}, "ts": "2024-01-01T00:00:00", "type": "view"},  # naive: dead letter
        {"id": "6", "who": {"uid": "u3"}, "ts": "2024-01-01T00:00:00Z", "type": "purchase"},  # no amount
        {"id": "7", "who": {"uid": "u3"}, "ts": "2024-01-01T00:00:00Z", "type": "click"},  # no SPEC kind
    ]  # fmt: skip


def test_jsonl_with_dotted_paths_times_and_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()) + "{not json\n", encoding="utf-8")
    imported = import_mapped(path, "jsonl", parse_field_map(MAP))
    events = [parse_line(line, n) for n, line in enumerate(imported.lines, 1)]
    assert all(isinstance(e, Event) for e in events)
    by_id = {e.event_id: e for e in events if isinstance(e, Event)}
    assert set(by_id) == {"1", "2", "3"}
    one = by_id["1"]
    assert (one.user_id, one.kind, one.amount, one.merchant) == ("u1", "purchase", Decimal("12.5"), "m1")
    assert (one.event_time, one.arrival_time) == (1_704_067_200_000, 1_704_067_205_000)
    assert one.attrs == {"merchant": "m1", "extra_field": "x"}  # unmapped fields are kept in attrs
    assert by_id["2"].event_time == 1_704_067_260_000 and by_id["2"].merchant == "7"
    assert by_id["3"].event_time == 1_704_067_200_000 and by_id["3"].amount_micros == 100_000_001
    reasons = sorted((r.seq, r.reason) for r in imported.rejections)
    assert reasons == [(4, "missing_field"), (5, "naive_timestamp"), (6, "missing_field"), (7, "unknown_kind"),
                       (8, "bad_json")]  # fmt: skip
    assert next(r for r in imported.rejections if r.seq == 4).detail == "missing field who.uid (mapped to user_id)"


def test_csv_and_parquet_read_the_same_records_alike(tmp_path: Path) -> None:
    rows = [
        {"uid": "u1", "t": "1704067200", "kind": "purchase", "price": "35.79", "brand": "acme"},
        {"uid": "u2", "t": "1704067260", "kind": "view", "price": "", "brand": ""},
    ]
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("uid,t,kind,price,brand\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    pq_path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "t": int(r["t"])} for r in rows]), pq_path)
    mapping = parse_field_map("user_id=uid,event_time=t,kind=kind,amount=price,attrs.brand=brand")

    def events(imported: object) -> list[tuple[object, ...]]:
        parsed = [parse_line(line, n) for n, line in enumerate(imported.lines, 1)]  # type: ignore[attr-defined]
        return [(e.user_id, e.event_time, e.kind, e.amount_micros, e.attrs) for e in parsed]  # type: ignore[union-attr]

    from_csv = events(import_mapped(csv_path, "csv", mapping, "s"))
    assert from_csv == [("u1", 1_704_067_200_000, "purchase", 35_790_000, {"brand": "acme"}),
                        ("u2", 1_704_067_260_000, "view", 0, None)]  # fmt: skip
    assert events(import_mapped(pq_path, "parquet", mapping, "s")) == from_csv


def test_parquet_timestamps_are_times(tmp_path: Path) -> None:
    when = datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)
    path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist([{"u": "a", "at": when, "k": "view"}]), path)
    imported = import_mapped(path, "parquet", parse_field_map("user_id=u,event_time=at,kind=k"))
    event = parse_line(imported.lines[0], 1)
    assert isinstance(event, Event) and event.event_time == 1_704_067_201_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_id=a,kind=b", "must map event_time"),
        ("user_id=a,event_time=b,kind=c,colour=d", "unknown target 'colour'"),
        ("user_id=a,event_time=b,kind=c,kind=d", "kind is mapped twice"),
        ("user_id", "TARGET=SOURCE"),
    ],
)
def test_a_bad_map_is_one_error(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_field_map(text)


def test_a_mapped_field_no_record_has_is_named(tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    with pytest.raises(InputError, match=r"--map amount=price\.valeu: no record has a field price\.valeu"):
        import_mapped(path, "jsonl", parse_field_map(MAP.replace("price.value", "price.valeu")))


def test_rees46_through_map_equals_the_rees46_importer(shared_data: Path, tmp_path: Path) -> None:
    """The generic importer, mapped like the dedicated one, reads the same events from the real export."""
    source = shared_data / "rees46_oct2019_1k.csv"
    ours = import_rees46(source)
    fields = parse_field_map("user_id=user_id,event_time=event_time,kind=event_type,amount=price")
    mapped = import_mapped(source, "csv", fields)
    key = [(e.user_id, e.event_time, e.kind) for e in (parse_line(x, 1) for x in ours.lines)]  # type: ignore[union-attr]
    got = [(e.user_id, e.event_time, e.kind) for e in (parse_line(x, 1) for x in mapped.lines)]  # type: ignore[union-attr]
    assert sorted(got) == sorted(key) and len(got) == 1000


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_import_with_own_rule_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "own.yaml"
    rules.write_text(json.dumps(OWN.definition), encoding="utf-8")
    path = tmp_path / "e.jsonl"
    lines = [{"u": "a", "t": 1, "k": "order", "p": "5", "s": "x"}, {"u": "a", "t": 2, "k": "order"},
             {"u": "b", "t": 3, "k": "view"}]  # fmt: skip
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = ["import", "jsonl", str(path), "--out", str(out), "--rules", str(rules)]
    assert _main([*args, "--map", "user_id=u,event_time=t,kind=k,attrs.price=p,attrs.shop=s"]) == 0
    assert "imported 1 events" in capsys.readouterr().out
    log = load_event_log(out, OWN.time_bounds)
    assert [(e.kind, e.amount_micros) for e in log.events] == [("order", 5_000_000)]
    dead = [json.loads(x) for x in (tmp_path / "out.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["detail"]) for d in dead] == [("missing_field", "order needs attrs.price"),
                                                          ("unknown_kind", "unknown kind 'view'")]  # fmt: skip
    assert _main([*args, "--map", "user_id=u,event_time=t,kind=k,attrs.cost=p,attrs.shop=s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads attrs.price (value, value_2m), which no accepted event has" in err[0]
