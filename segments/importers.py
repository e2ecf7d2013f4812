"""Importers: public e-commerce data sets, and a team's own export, turned into SPEC §1 event lines.

Every line an importer emits has been read back through ``segments.events.parse_line``,
so it is a valid event by construction; a row that cannot become one is returned as a
``Rejection`` (reason, detail, its line number in the CSV file, the row's text). Lines
come out ordered by event time (ties in file order): these data sets carry no arrival
time, so arrival is the event time. Amounts are computed and written as exact decimal
strings; no value passes through binary floating point.

**UCI Online Retail** (Chen, Sain and Guo 2012; columns InvoiceNo, StockCode,
Description, Quantity, InvoiceDate, UnitPrice, CustomerID, Country):

- each invoice line is a ``purchase`` of ``Quantity x UnitPrice``; an invoice number
  starting with ``C`` is a cancellation and becomes a ``refund`` of ``|Quantity x UnitPrice|``;
- ``CustomerID`` ``17850.0`` becomes user ``17850``; rows without a customer are
  rejected (``no_customer``), as are stock adjustments (a negative quantity outside a
  cancellation: ``negative_quantity``) and rows whose numbers do not parse;
- ``InvoiceDate`` has minute resolution and no zone. The shop is in the UK, so it is read
  as UTC: exact for the shared extract (2010-12-01..05, when UK time is GMT), one hour
  ahead of the truth for invoices of the full data set during British Summer Time;
- the data has no event id. The id is ``uci:{InvoiceNo}:{n}`` with ``n`` the row's
  position within its invoice in file order (1, 2, ...). So the file's 196 exact
  duplicate rows count **twice**: they are separate till lines of one basket (the same
  product, nearly always quantity 1, scanned again several lines later, never an
  adjacent or block-wise repeat that an export fault would leave), so each is a real
  sale. Giving them equal ids would make the SPEC's dedup drop real revenue;
- ``attrs`` holds ``invoice``, ``stock_code``, ``description``, ``country``,
  ``quantity`` and ``unit_price`` as the file's text.

**REES46 eCommerce behaviour** (columns event_time, event_type, product_id, category_id,
category_code, brand, price, user_id, user_session):

- ``view``, ``cart`` and ``purchase`` map to the same kinds; ``purchase`` carries
  ``price`` as its amount; ``remove_from_cart`` has no SPEC kind and is skipped, reported
  as a rejection with reason ``unsupported_event_type`` so that it is counted;
- ``event_time`` ``2019-10-01 00:00:00 UTC`` becomes ``2019-10-01T00:00:00Z``;
- the data has no event id: the id is ``rees46:`` and a hash of the row's text. Exact
  duplicate rows (the same user, product and session in the same second) are the
  tracker firing twice, so they share an id and the SPEC's dedup counts them once;
- ``attrs`` holds ``product_id``, ``category_id``, ``category_code``, ``brand``,
  ``price`` and ``user_session`` (empty ones left out).

**Your own export** (``import_mapped``: JSON Lines, CSV or Parquet) takes its fields by a
map (``parse_field_map``: ``--map user_id=uid,event_time=ts,amount=price.value,...``;
dotted sources read nested objects, unmapped fields go to ``attrs``); times are epoch
ms or s, or ISO-8601 with an offset; without a mapped id the id is a hash of the record.
Lines come out in arrival order (the event time when none is mapped). See ``docs/byo.md``.

Files are read as UTF-8 (a BOM is allowed); a file that is not UTF-8 is read as Latin-1,
the encoding of the original UCI export. ``InputError`` when a file cannot be read or
lacks a column.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from segments.errors import InputError
from segments.events import DEFAULT_TIME_BOUNDS, Event, Rejection, TimeBounds, dumps_exact, iter_lines, parse_line
from segments.timeutil import MAX_MS, TimestampError, format_ms, from_datetime, parse_rfc3339_ms

UCI_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price",
                  "user_id", "user_session")  # fmt: skip

_INVOICE = re.compile(r"(C?)([0-9]+)", re.ASCII)
_CUSTOMER = re.compile(r"([0-9]+)(?:\.0+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
_ISO_MINUTE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[ T]([0-9]{2}:[0-9]{2})(:[0-9]{2})?", re.ASCII)
_US_MINUTE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4}) ([0-9]{1,2}):([0-9]{2})", re.ASCII)
_REES46_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}) ([0-9]{2}:[0-9]{2}:[0-9]{2}) UTC", re.ASCII)
_REES46_KINDS = {"view": "view", "cart": "cart", "purchase": "purchase"}


class Imported(NamedTuple):
    """An importer's result: SPEC §1 lines in event-time order, and the rows it could not use."""

    lines: list[str]
    rejections: list[Rejection]

    @property
    def counts(self) -> dict[str, int]:
        by_reason: dict[str, int] = {}
        for rejection in self.rejections:
            by_reason[rejection.reason] = by_reason.get(rejection.reason, 0) + 1
        return {
            "rows": len(self.lines) + len(self.rejections),
            "imported": len(self.lines),
            "rejected": len(self.rejections),
            **{f"rejected_{reason}": n for reason, n in sorted(by_reason.items())},
        }


class _RowError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---- reading CSV with each row's own text ---------------------------------------------------------


def _read_text(path: str | Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _rows(path: str | Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str], str]]:
    """(line number, row by column, the row's own text) for each data row; ``InputError`` on a bad header."""
    physical = _read_text(path).splitlines(keepends=True)
    taken: list[str] = []

    def feed() -> Iterator[str]:
        for text in physical:
            taken.append(text)
            yield text

    reader = csv.reader(feed())
    header = next(reader, None)
    if header is None:
        raise InputError("empty file: no header row", str(path))
    header = [name.strip() for name in header]
    missing = [name for name in columns if name not in header]
    if missing:
        raise InputError(f"not the expected CSV: missing column(s) {', '.join(missing)}", str(path))
    position = {name: header.index(name) for name in columns}
    taken.clear()
    for values in reader:
        number = reader.line_num - len(taken) + 1
        raw = "".join(taken).rstrip("\r\n")
        taken.clear()
        if not values or not any(v.strip() for v in values):
            continue
        row = {name: values[i].strip() if i < len(values) else "" for name, i in position.items()}
        yield number, row, raw


def _emit(
    build: Callable[[dict[str, Any]], dict[str, Any]],
    rows: Iterator[tuple[int, dict[str, Any], str]],
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> Imported:
    """Build each row's event object, check it with ``parse_line``, order the lines by event time."""
    keyed: list[tuple[int, int, str]] = []
    rejections: list[Rejection] = []
    for number, row, raw in rows:
        try:
            obj = build(row)
        except _RowError as exc:
            user = row.get("user_id")
            user = user if isinstance(user, str) and user else None
            rejections.append(Rejection(exc.reason, exc.detail, number, raw, None, user))
            continue
        line = dumps_exact(obj)
        parsed = parse_line(line, number, bounds)
        if not isinstance(parsed, Event):
            event_id, user_id = obj.get("event_id"), obj.get("user_id")
            rejections.append(Rejection(parsed.reason, parsed.detail, number, raw, event_id, user_id))
            continue
        keyed.append((parsed.arrival_time, number, line))  # arrival order (the event time when none is given)
    keyed.sort(key=lambda item: (item[0], item[1]))
    return Imported([line for _, _, line in keyed], rejections)


def _decimal(text: str, what: str) -> Decimal:
    if not _DECIMAL.fullmatch(text):
        raise _RowError(f"bad_{what}", f"{what} is not a decimal number: {text[:40]!r}")
    return Decimal(text)


# ---- UCI Online Retail ---------------------------------------------------------------------------


def _uci_time(text: str) -> str:
    iso = _ISO_MINUTE.fullmatch(text)
    if iso:
        day, minute, second = iso.groups()
        return f"{day}T{minute}{second or ':00'}Z"
    us = _US_MINUTE.fullmatch(text)
    if us:
        month, day, year, hour, minute = us.groups()
        return f"{year}-{int(month):02d}-{int(day):02d}T{int(hour):02d}:{minute}:00Z"
    raise _RowError("bad_date", f"InvoiceDate is not a date and time: {text[:40]!r}")


def import_uci_online_retail(csv_path: str | Path) -> Imported:
    """The UCI Online Retail CSV as SPEC events (see the module doc for every mapping decision)."""
    lines_in_invoice: dict[str, int] = {}

    def build(row: dict[str, str]) -> dict[str, Any]:
        invoice = row["InvoiceNo"]
        position = lines_in_invoice[invoice] = lines_in_invoice.get(invoice, 0) + 1
        event_id = f"uci:{invoice}:{position}"
        match = _INVOICE.fullmatch(invoice)
        if match is None:
            raise _RowError("bad_invoice", f"InvoiceNo is not a sale or a cancellation: {invoice[:40]!r}")
        cancelled = bool(match.group(1))
        if not row["CustomerID"]:
            raise _RowError("no_customer", f"invoice {invoice} line {position} has no CustomerID")
        customer = _CUSTOMER.fullmatch(row["CustomerID"])
        if customer is None:
            raise _RowError("bad_customer", f"CustomerID is not a number: {row['CustomerID'][:40]!r}")
        if not _INTEGER.fullmatch(row["Quantity"]):
            raise _RowError("bad_quantity", f"Quantity is not a whole number: {row['Quantity'][:40]!r}")
        quantity = int(row["Quantity"])
        price = _decimal(row["UnitPrice"], "price")
        if price < 0:
            raise _RowError("bad_price", f"UnitPrice is negative: {row['UnitPrice']}")
        if quantity < 0 and not cancelled:
            raise _RowError("negative_quantity", f"a negative quantity outside a cancellation: {quantity}")
        amount = abs(quantity * price)
        return {
            "event_id": event_id,
            "user_id": customer.group(1),
            "event_time": _uci_time(row["InvoiceDate"]),
            "kind": "refund" if cancelled else "purchase",
            "amount": str(amount),
            "attrs": {
                "invoice": invoice,
                "stock_code": row["StockCode"],
                "description": row["Description"],
                "country": row["Country"],
                "quantity": row["Quantity"],
                "unit_price": row["UnitPrice"],
            },
        }

    return _emit(build, _rows(csv_path, UCI_COLUMNS))


# ---- REES46 --------------------------------------------------------------------------------------


def import_rees46(csv_path: str | Path) -> Imported:
    """The REES46 eCommerce behaviour CSV as SPEC events (see the module doc for every mapping decision)."""
    rows = _rows(csv_path, REES46_COLUMNS)

    def with_ids() -> Iterator[tuple[int, dict[str, str], str]]:
        for number, row, raw in rows:
            row["_id"] = "rees46:" + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
            yield number, row, raw

    def build(row: dict[str, str]) -> dict[str, Any]:
        kind = _REES46_KINDS.get(row["event_type"])
        if kind is None:
            reason = "unsupported_event_type" if row["event_type"] == "remove_from_cart" else "unknown_event_type"
            raise _RowError(reason, f"event_type {row['event_type'][:40]!r} has no SPEC kind")
        if not row["user_id"]:
            raise _RowError("no_user", "row has no user_id")
        when = _REES46_TIME.fullmatch(row["event_time"])
        if when is None:
            raise _RowError("bad_date", f"event_time is not 'YYYY-MM-DD HH:MM:SS UTC': {row['event_time'][:40]!r}")
        obj: dict[str, Any] = {
            "event_id": row["_id"],
            "user_id": row["user_id"],
            "event_time": f"{when.group(1)}T{when.group(2)}Z",
            "kind": kind,
        }
        if kind == "purchase":
            obj["amount"] = str(_decimal(row["price"], "price"))
        attrs = {
            name: row[name]
            for name in ("product_id", "category_id", "category_code", "brand", "price", "user_session")
            if row[name]
        }
        if attrs:
            obj["attrs"] = attrs
        return obj

    return _emit(build, with_ids())


IMPORTERS: dict[str, Callable[[str | Path], Imported]] = {
    "uci-online-retail": import_uci_online_retail,
    "rees46": import_rees46,
}


# ---- your own export: JSON Lines, CSV or Parquet with a field map ---------------------------------

MAP_TARGETS = ("event_id", "user_id", "event_time", "arrival_time", "kind", "amount", "merchant")
REQUIRED_TARGETS = ("user_id", "event_time", "kind")
FORMATS = ("jsonl", "csv", "parquet")
EPOCH_UNITS = {"ms": 1, "s": 1000}
_EPOCH_TEXT = re.compile(r"[0-9]{1,16}", re.ASCII)
_ISO_UTC_WORD = re.compile(r"(.*?)\s*(?:UTC|GMT)", re.ASCII)
_MISSING = object()


def parse_field_map(text: str) -> dict[str, str]:
    """``--map user_id=uid,event_time=ts,amount=price.value,attrs.brand=brand`` as {target: source path}.

    Targets are the SPEC §1 fields (``MAP_TARGETS``; ``merchant`` is ``attrs.merchant``) and
    ``attrs.NAME``; a source is a field of the record, dotted for nested JSON objects.
    ``user_id``, ``event_time`` and ``kind`` must be mapped. ``InputError`` names what is wrong.
    """
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        target, sep, source = (s.strip() for s in part.partition("="))
        if not sep or not target or not source:
            raise InputError(f"--map entries are TARGET=SOURCE, not {part!r}")
        if target not in MAP_TARGETS and not (target.startswith("attrs.") and len(target) > len("attrs.")):
            raise InputError(f"--map: unknown target {target!r} (targets: {', '.join(MAP_TARGETS)}, attrs.NAME)")
        if target in mapping:
            raise InputError(f"--map: {target} is mapped twice")
        mapping[target] = source
    missing = [t for t in REQUIRED_TARGETS if t not in mapping]
    if missing:
        raise InputError(f"--map must map {', '.join(missing)} (e.g. --map {missing[0]}=your_field)")
    return mapping


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``record``: the whole name first (a CSV column may hold dots), then dotted."""
    if path in record:
        return record[path]
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _text(value: Any) -> str:
    """A scalar as the text it stands for (floats by their shortest decimal text, never binary)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _time_value(value: Any, target: str, unit_ms: int) -> str:
    """A time as canonical RFC 3339 text: an integer (or digit-only text) is epoch in ``unit_ms``,
    other text ISO-8601 / RFC 3339 with an offset (a trailing ``UTC``/``GMT`` is ``Z``), a Parquet
    timestamp as it is (UTC when it has no zone)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # Parquet: UTC-adjusted
        ms = from_datetime(moment)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value * unit_ms
    elif isinstance(value, str) and _EPOCH_TEXT.fullmatch(value.strip()):
        ms = int(value.strip()) * unit_ms
    elif isinstance(value, str):
        text = value.strip()
        word = _ISO_UTC_WORD.fullmatch(text)
        try:
            ms = parse_rfc3339_ms(f"{word.group(1)}Z" if word else text)
        except TimestampError as exc:
            raise _RowError(exc.reason, f"{target}: {exc}") from None
    elif isinstance(value, Decimal | float):
        raise _RowError("bad_timestamp", f"{target}: epoch time must be a whole number, not {value}")
    else:
        raise _RowError("bad_field_type", f"{target} must be a time, not {type(value).__name__}")
    if not 0 <= ms < MAX_MS:
        raise _RowError("bad_timestamp", f"{target} out of range: {value}")
    return format_ms(ms)


def _mapped(mapping: Mapping[str, str], unit_ms: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Build one SPEC object from a record: mapped fields in place, every other top-level field in ``attrs``."""
    used = {source.split(".")[0] for source in mapping.values()} | set(mapping.values())

    def build(record: dict[str, Any]) -> dict[str, Any]:
        if _BAD in record:
            raise _RowError("bad_json", str(record[_BAD]))
        obj: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for target, source in mapping.items():
            value = _lookup(record, source)
            if value is _MISSING or value is None or value == "":
                if target in REQUIRED_TARGETS:
                    raise _RowError("missing_field", f"missing field {source} (mapped to {target})")
                continue
            if target in ("event_time", "arrival_time"):
                obj[target] = _time_value(value, target, unit_ms)
            elif target == "amount":
                obj["amount"] = value if isinstance(value, int | Decimal) else _text(value)
            elif target == "merchant":
                attrs["merchant"] = _text(value)
            elif target.startswith("attrs."):
                attrs[target.removeprefix("attrs.")] = value if isinstance(value, int | Decimal | str) else _text(value)
            else:
                obj[target] = _text(value)
        obj.setdefault("event_id", str(record[_RECORD_ID]))
        for name, value in record.items():
            if name not in used and name != _RECORD_ID and value not in (None, "") and name not in attrs:
                attrs[name] = value if isinstance(value, int | Decimal | str | dict | list) else _text(value)
        if attrs:
            obj["attrs"] = attrs
        return obj

    return build


_RECORD_ID = "\x00id"


_Records = Iterator[tuple[int, dict[str, Any], str]]


def _with_ids(rows: _Records, prefix: str) -> _Records:
    """Each record with a content id (``PREFIX:`` and a hash of its text): exact repeats share it."""
    for number, row, raw in rows:
        row[_RECORD_ID] = prefix + hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
        yield number, row, raw


def _jsonl_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    for number, text in iter_lines(path):
        try:
            record = _EXACT_JSON.decode(text)
        except (ValueError, RecursionError) as exc:
            yield number, {_BAD: f"not valid JSON: {exc}"}, text
            continue
        if not isinstance(record, dict):
            yield number, {_BAD: f"line is JSON {type(record).__name__}, not an object"}, text
            continue
        yield number, record, text


_BAD = "\x00bad"
_EXACT_JSON = json.JSONDecoder(parse_float=Decimal)


def _csv_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    header = _csv_header(path)
    for number, row, raw in _rows(path, header):
        yield number, {k: v for k, v in row.items() if k}, raw


def _csv_header(path: str | Path) -> list[str]:
    text = _read_text(path)
    first = next(csv.reader(text.splitlines()[:1]), None)
    if first is None:
        raise InputError("empty file: no header row", str(path))
    return [name.strip() for name in first]


def _parquet_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read as Parquet: {exc}", str(path)) from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield number, record, json.dumps(record, default=str, ensure_ascii=False, sort_keys=True)


def _check_sources(records: list[tuple[int, dict[str, Any], str]], mapping: Mapping[str, str], path: str) -> None:
    """``InputError`` naming a mapped field that no record of the file has (a typo, or the wrong file)."""
    rows = [row for _, row, _ in records if _BAD not in row]
    if not rows:
        return
    for target, source in mapping.items():
        if all(_lookup(row, source) is _MISSING for row in rows):
            fields = ", ".join(sorted(k for k in rows[0] if not k.startswith("\x00")))[:200]
            raise InputError(f"--map {target}={source}: no record has a field {source} (fields: {fields})", path)


def import_mapped(
    path: str | Path,
    fmt: str,
    mapping: Mapping[str, str],
    epoch: str = "ms",
    *,
    bounds: TimeBounds = DEFAULT_TIME_BOUNDS,
) -> Imported:
    """A team's own export (``jsonl``, ``csv`` or ``parquet``) as SPEC events, fields taken by ``mapping``.

    Same checks and dead letters as every importer: each built object goes through
    ``parse_line``; a record that misses a mapped required field, or whose values do
    not parse, is a ``Rejection`` with its reason. Numeric times (and digit-only text)
    are epoch ``epoch`` (``ms`` or ``s``); text times are ISO-8601 / RFC 3339 with an
    offset (``Z``, ``+02:00``, or a trailing ``UTC``); a zone-less Parquet timestamp is UTC.
    Without ``event_id`` mapped, the id is ``import:`` and a hash of the record's text.
    ``bounds`` are the rule set's (``RuleSet.time_bounds``) when its own kinds and attributes
    should be accepted; SPEC §1's otherwise.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if epoch not in EPOCH_UNITS:
        raise InputError(f"--epoch must be ms or s, not {epoch!r}")
    reader = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}[fmt]
    records = list(reader(path))
    _check_sources(records, mapping, str(path))
    return _emit(_mapped(mapping, EPOCH_UNITS[epoch]), _with_ids(iter(records), "import:"), bounds)
