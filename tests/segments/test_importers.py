"""Importers: the shared UCI and REES46 files become valid SPEC events with exact amounts."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from segments.errors import InputError
from segments.events import Event, parse_line
from segments.importers import Imported, import_rees46, import_uci_online_retail
from segments.rules import load_ruleset
from segments.timeutil import parse_rfc3339_ms

UCI_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
REES_HEADER = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def uci() -> Imported:
    return import_uci_online_retail(SHARED / "online_retail_10k.csv")


def events_of(imported: Imported) -> list[Event]:
    out = []
    for number, text in enumerate(imported.lines, start=1):
        item = parse_line(text, number)
        assert isinstance(item, Event), item
        out.append(item)
    return out


def csv_file(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def no_floats(value: Any) -> bool:
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(no_floats(v) for v in value.values())
    if isinstance(value, list):
        return all(no_floats(v) for v in value)
    return True


# ---- UCI Online Retail: the shared file ----------------------------------------------------------


def test_uci_file_imports_with_counts(uci: Imported, shared_data: Path) -> None:
    with open(shared_data / "online_retail_10k.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    without_customer = sum(1 for r in rows if not r["CustomerID"])
    counts = uci.counts
    print(f"UCI online_retail_10k: {counts}")
    assert counts["rows"] == len(rows) == 10_000
    assert counts["rejected_no_customer"] == without_customer > 0
    assert counts["imported"] == len(rows) - counts["rejected"]
    events = events_of(uci)
    kinds = Counter(e.kind for e in events)
    cancellations = sum(1 for r in rows if r["InvoiceNo"].startswith("C") and r["CustomerID"])
    assert kinds["refund"] == cancellations > 0
    assert kinds["purchase"] == counts["imported"] - cancellations
    assert len({e.user_id for e in events}) == len({r["CustomerID"] for r in rows if r["CustomerID"]})


def test_uci_amounts_are_exact_quantity_times_price(uci: Imported) -> None:
    for e in events_of(uci):
        assert e.attrs is not None
        quantity, price = Decimal(e.attrs["quantity"]), Decimal(e.attrs["unit_price"])
        assert e.amount == abs(quantity * price)
        assert e.amount_micros >= 0
    first = json.loads(uci.lines[0])
    assert first["event_id"] == "uci:536365:1" and first["user_id"] == "17850"
    assert first["amount"] == "15.30" and first["event_time"] == "2010-12-01T08:26:00Z"
    assert first["attrs"]["stock_code"] == "85123A" and first["attrs"]["country"] == "United Kingdom"


def test_uci_has_no_float_anywhere(uci: Imported) -> None:
    for text in uci.lines:
        raw = json.loads(text)  # plain json: any JSON number would come back as a float
        assert no_floats(raw)
        assert isinstance(raw["amount"], str)


def test_uci_exact_duplicate_rows_count_twice_with_distinct_ids(uci: Imported, shared_data: Path) -> None:
    with open(shared_data / "online_retail_10k.csv", encoding="utf-8", newline="") as handle:
        rows = [tuple(r) for r in csv.reader(handle)][1:]
    copies = Counter(r for r in rows if r[6])
    extra = sum(n - 1 for n in copies.values())
    assert extra > 150  # the shared file has 196 repeated rows, all with a customer
    events = events_of(uci)
    assert len({e.event_id for e in events}) == len(events), "every row its own id: duplicates count twice"
    assert all(e.event_id.startswith(f"uci:{e.attrs['invoice']}:") for e in events if e.attrs)


def test_uci_yields_some_high_value_users(uci: Imported) -> None:
    rules = load_ruleset("clickstream")
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events_of(uci):
        by_user[e.user_id].append(e)
    high = {
        user
        for user, facts in by_user.items()
        if any("high_value" in rules.segments_at(facts, e.event_time) for e in facts)
    }
    print(f"UCI high_value users: {len(high)} of {len(by_user)}")
    assert 0 < len(high) < len(by_user)


def test_uci_output_is_in_time_order(uci: Imported) -> None:
    times = [parse_rfc3339_ms(json.loads(t)["event_time"]) for t in uci.lines]
    assert times == sorted(times)


# ---- UCI: mapping rules on small files -----------------------------------------------------------


def test_uci_row_rules(tmp_path: Path) -> None:
    path = csv_file(
        tmp_path / "uci.csv",
        UCI_HEADER,
        [
            '536365,85123A,"HEART, WHITE",6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom',
            "536365,71053,LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",
            "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom",
            "536414,22139,,56,2010-12-01 11:52:00,0.0,,United Kingdom",
            "536415,22139,STOCK FIX,-5,2010-12-01 11:53:00,1.0,14527.0,United Kingdom",
            "536416,22139,X,two,2010-12-01 11:54:00,1.0,14527.0,United Kingdom",
            "536417,22139,X,1,2010-12-01 11:55:00,1.2.3,14527.0,United Kingdom",
            "536418,22139,X,1,yesterday,1.0,14527.0,United Kingdom",
            "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,-11062.06,,United Kingdom",
            "536419,22139,X,1,2010-12-01 11:56:00,1.0,abc,United Kingdom",
            "536420,22139,X,3,12/1/2010 12:05,0.001,12345.0,France",
            "536421,22139,X,7,2010-12-01 12:06:00,0.0000001,12345.0,France",
            "536365,85123A,REPEAT,1,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
        ],
    )
    result = import_uci_online_retail(path)
    events = {e.event_id: e for e in events_of(result)}
    first = events["uci:536365:1"]
    assert first.amount == Decimal("15.30") and first.attrs is not None and first.attrs["description"] == "HEART, WHITE"
    assert events["uci:536365:3"].amount == Decimal("2.55"), "position within the invoice, not the file"
    refund = events["uci:C536379:1"]
    assert (refund.kind, refund.amount, refund.user_id) == ("refund", Decimal("27.5"), "14527")
    us = events["uci:536420:1"]
    assert us.event_time == parse_rfc3339_ms("2010-12-01T12:05:00Z") and us.amount == Decimal("0.003")
    reasons = {r.seq: r.reason for r in result.rejections}
    assert reasons == {
        5: "no_customer",
        6: "negative_quantity",
        7: "bad_quantity",
        8: "bad_price",
        9: "bad_date",
        10: "bad_invoice",
        11: "bad_customer",
        13: "bad_amount",
    }
    assert result.rejections[0].raw == "536414,22139,,56,2010-12-01 11:52:00,0.0,,United Kingdom"
    assert result.counts == {
        "rows": 13,
        "imported": 5,
        "rejected": 8,
        **{f"rejected_{r}": 1 for r in sorted(reasons.values())},
    }


def test_uci_missing_column_or_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing column"):
        import_uci_online_retail(csv_file(tmp_path / "x.csv", "InvoiceNo,StockCode", ["1,2"]))
    with pytest.raises(InputError, match="cannot read"):
        import_uci_online_retail(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        import_uci_online_retail(empty)


def test_uci_latin1_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    row = "536365,1,CAFÉ MUG,2,2010-12-01 08:26:00,1.25,17850.0,France"
    path.write_bytes(f"{UCI_HEADER}\n{row}\n".encode("latin-1"))
    (event,) = events_of(import_uci_online_retail(path))
    assert event.attrs is not None and event.attrs["description"] == "CAFÉ MUG"


# ---- REES46 --------------------------------------------------------------------------------------


def test_rees46_imports_its_thousand_rows(shared_data: Path) -> None:
    result = import_rees46(shared_data / "rees46_oct2019_1k.csv")
    print(f"REES46 rees46_oct2019_1k: {result.counts}")
    assert result.counts == {"rows": 1000, "imported": 1000, "rejected": 0}
    events = events_of(result)
    assert Counter(e.kind for e in events) == {"view": 987, "purchase": 10, "cart": 3}
    assert len({e.event_id for e in events}) == 1000
    purchase = next(e for e in events if e.kind == "purchase")
    assert purchase.attrs is not None and purchase.amount == Decimal(purchase.attrs["price"])
    assert all(not e.has_amount for e in events if e.kind != "purchase")
    first = json.loads(result.lines[0])
    assert first["event_time"] == "2019-10-01T00:00:00Z" and first["user_id"] == "541312140"
    assert all(no_floats(json.loads(t)) for t in result.lines)


def test_rees46_row_rules(tmp_path: Path) -> None:
    row = "2019-10-01 00:00:0{s} UTC,{kind},44600062,2103807459595387724,,shiseido,{price},{user},sess"
    path = csv_file(
        tmp_path / "r.csv",
        REES_HEADER,
        [
            row.format(s=1, kind="view", price="35.79", user="1"),
            row.format(s=1, kind="view", price="35.79", user="1"),
            row.format(s=2, kind="remove_from_cart", price="35.79", user="1"),
            row.format(s=3, kind="purchase", price="35.79", user="1"),
            row.format(s=4, kind="purchase", price="-1", user="1"),
            row.format(s=5, kind="view", price="1", user=""),
            row.format(s=6, kind="like", price="1", user="1"),
            "2019-10-01 00:00:07 EST,view,1,2,,,1,1,s",
        ],
    )
    result = import_rees46(path)
    events = events_of(result)
    assert [e.kind for e in events] == ["view", "view", "purchase"]
    assert events[0].event_id == events[1].event_id, "an exact duplicate row is the same event"
    assert events[2].amount == Decimal("35.79") and events[2].event_time == parse_rfc3339_ms("2019-10-01T00:00:03Z")
    assert {r.seq: r.reason for r in result.rejections} == {
        4: "unsupported_event_type",
        6: "bad_amount",
        7: "no_user",
        8: "unknown_event_type",
        9: "bad_date",
    }


def test_importers_are_deterministic(shared_data: Path) -> None:
    path = shared_data / "rees46_oct2019_1k.csv"
    assert import_rees46(path).lines == import_rees46(path).lines
