"""Outputs made elsewhere: a side's output with no sidecar, in JSON Lines, CSV, Parquet or from a SQL query.

A team's own job writes its results in its own shape. ``ForeignOutput`` says where
and how: the format (``jsonl``, ``csv``, ``parquet``, or ``sql`` with a query and a
database URL) and which column holds what (``columns``: canonical name -> the
team's column name; omitted names are read as themselves).

Legacy columns: ``as_of``, ``user_id`` and either ``segments`` (a list, or in CSV
and SQL a text of names joined by ``sep``) or ``segment`` (one row per segment; rows
of one user and as-of are gathered). Stream columns: ``user_id``, ``segments``,
``effective_time``, and optionally ``revision`` (default 1), ``emitted_at``
(default the effective time) and ``cause`` (default ``event``). Times may be
epoch ms integers, RFC 3339 text with an offset, or timestamp columns.

What a sidecar would have stated (schedule, lateness settings, rule set, event
file) cannot be checked here: it comes from the command line's flags, and the
comparison records that side's provenance as ``declared`` (not verified).

Refusals (``InputError``, one line, exit 2): an unreadable file or query, a
missing column (named, with the columns found), a null user id or time, a time
that is not one, a revision below 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compare.frames import LEGACY_SCHEMA, STREAM_SCHEMA, decoded
from segments.errors import InputError, UsageError
from segments.timeutil import TimestampError, parse_rfc3339_ms

FORMATS = ("jsonl", "csv", "parquet", "sql")
LEGACY_COLUMNS = ("as_of", "user_id", "segments", "segment")
STREAM_COLUMNS = ("user_id", "segments", "effective_time", "revision", "emitted_at", "cause")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
             ".pq": "parquet"}


@dataclass(frozen=True)
class ForeignOutput:
    """Where a side's sidecar-less output is and how to read it."""

    format: str
    path: Path | None = None
    query: str | None = None
    database_url: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    sep: str = "|"

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else f"query on {_redacted(self.database_url or '')}"


def parse_columns(text: str | None, allowed: tuple[str, ...], flag: str) -> dict[str, str]:
    """``name=column,...`` as a mapping; ``UsageError`` for an unknown name or a malformed pair."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for part in text.split(","):
        name, eq, column = part.strip().partition("=")
        if not eq or not name or not column:
            raise UsageError(f"{flag} takes name=column pairs separated by commas, not {part.strip()!r}")
        if name not in allowed:
            raise UsageError(f"{flag}: unknown name {name!r} (names are {', '.join(allowed)})")
        mapping[name] = column
    return mapping


def foreign_format(path: Path, given: str | None) -> str:
    """The format named by the flag, else the file's suffix; ``UsageError`` when neither says."""
    if given is not None:
        if given not in FORMATS[:-1]:
            raise UsageError(f"format must be one of jsonl, csv, parquet, not {given!r}")
        return given
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise UsageError(f"cannot tell the format of {path.name} from its name: give jsonl, csv or parquet")
    return found


# ---- reading --------------------------------------------------------------------------------------------


def _read(source: ForeignOutput, text_columns: list[str]) -> pa.Table:
    """The raw table; ``text_columns`` are read as text in CSV (user ids are never numbers)."""
    if source.format == "sql":
        return _query(source)
    assert source.path is not None
    path = source.path
    if not path.is_file():
        raise InputError("no such output file", str(path))
    try:
        if source.format == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(
                path, convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(text_columns, pa.string()))
            )
        if source.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.json as pj

        return pj.read_json(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"cannot read as {source.format}: {str(exc).splitlines()[0]}", str(path)) from None


def _query(source: ForeignOutput) -> pa.Table:
    """The query's rows (``segments.db.make_engine``: the project's drivers and bounded waits)."""
    from sqlalchemy import text

    from segments.db import db_errors, describe_db_error, make_engine

    if not source.query or not source.database_url:
        raise UsageError("a query needs --database-url")
    engine = make_engine(source.database_url)
    try:
        with engine.connect() as connection:
            result = connection.execute(text(source.query))
            names = list(result.keys())
            rows = result.fetchall()
    except db_errors() as exc:
        raise InputError(f"the query failed: {describe_db_error(exc, engine)}") from None
    finally:
        engine.dispose()
    columns = {name: [_plain(row[i]) for row in rows] for i, name in enumerate(names)}
    return pa.table(
        {name: pa.array(values) if values else pa.array([], pa.string()) for name, values in columns.items()}
    )


def _plain(value: Any) -> Any:
    """A SQL value as Arrow takes it: datetimes as epoch ms (naive ones are refused)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InputError("the query returned a time without a zone (use timestamptz or epoch ms)")
        return int(value.timestamp() * 1000)
    return value


def _redacted(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}***@{tail}"


def _need(table: pa.Table, source: ForeignOutput, name: str) -> pa.ChunkedArray:
    column = source.column(name)
    if column not in table.column_names:
        raise InputError(
            f"no column {column!r} for {name} (columns: {', '.join(table.column_names) or 'none'})", source.label
        )
    return table.column(column)


def _times(column: pa.ChunkedArray, source: ForeignOutput, name: str) -> pa.Array:
    """Epoch ms from integers, timestamps or RFC 3339 text; ``InputError`` naming the first bad value."""
    array = column.combine_chunks()
    if array.null_count:
        raise InputError(f"{name} is missing on {array.null_count} rows", source.label)
    if pa.types.is_timestamp(array.type):
        if array.type.tz is None:
            raise InputError(f"{name} is a timestamp without a zone", source.label)
        return pc.cast(pc.cast(array, pa.timestamp("ms", array.type.tz)), pa.int64())
    if pa.types.is_integer(array.type):
        return pc.cast(array, pa.int64())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        encoded = pc.dictionary_encode(array)
        values = []
        for text in encoded.dictionary.to_pylist():
            try:
                values.append(parse_rfc3339_ms(text))
            except TimestampError as exc:
                raise InputError(f"{name} {text!r} is not a time: {exc}", source.label) from None
        looked_up = np.array(values, dtype=np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]
        return pa.array(looked_up, pa.int64())
    raise InputError(f"{name} is {array.type}, not a time", source.label)


def _users(column: pa.ChunkedArray, source: ForeignOutput) -> pa.Array:
    array = column.combine_chunks()
    if array.null_count:
        raise InputError(f"user_id is missing on {array.null_count} rows", source.label)
    return pc.cast(array, pa.string())


def _lists(column: pa.ChunkedArray, source: ForeignOutput) -> pa.Array:
    """Segment lists from a list column or from text joined by ``source.sep`` (empty text: no segment)."""
    array = column.combine_chunks()
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return pc.cast(pc.fill_null(array, pa.scalar([], array.type)), pa.list_(pa.string()))
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) or pa.types.is_null(array.type):
        text = pc.fill_null(pc.cast(array, pa.string()), "")
        names = [[n.strip() for n in t.split(source.sep) if n.strip()] for t in text.to_pylist()]
        return pa.array(names, pa.list_(pa.string()))
    raise InputError(f"segments is {array.type}, not a list or text", source.label)


def read_foreign_legacy(source: ForeignOutput) -> pa.Table:
    """A sidecar-less legacy output as a ``LEGACY_SCHEMA`` table (users with an empty set left out)."""
    raw = _read(source, [source.column("user_id"), source.column("segments"), source.column("segment")])
    as_of = _times(_need(raw, source, "as_of"), source, "as_of")
    users = _users(_need(raw, source, "user_id"), source)
    if source.column("segments") in raw.column_names or source.column("segment") not in raw.column_names:
        lists = _lists(_need(raw, source, "segments"), source)
        table = pa.table({"as_of": as_of, "user_id": users, "segments": lists}, schema=LEGACY_SCHEMA)
    else:
        segment = pc.cast(_need(raw, source, "segment").combine_chunks(), pa.string())
        rows = pa.table({"as_of": as_of, "user_id": users, "segment": segment})
        rows = rows.filter(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(segment), ""), False))
        grouped = rows.group_by(["as_of", "user_id"], use_threads=False).aggregate([("segment", "distinct")])
        table = pa.table(
            {
                "as_of": grouped.column("as_of"),
                "user_id": grouped.column("user_id"),
                "segments": pc.cast(grouped.column("segment_distinct"), pa.list_(pa.string())),
            },
            schema=LEGACY_SCHEMA,
        )
    return table.filter(pc.greater(pc.list_value_length(table.column("segments")), 0))


def read_foreign_stream(source: ForeignOutput) -> pa.Table:
    """A sidecar-less stream output as a ``STREAM_SCHEMA`` table."""
    raw = _read(source, [source.column("user_id"), source.column("segments"), source.column("cause")])
    users = _users(_need(raw, source, "user_id"), source)
    lists = _lists(_need(raw, source, "segments"), source)
    effective = _times(_need(raw, source, "effective_time"), source, "effective_time")
    n = len(users)
    if source.column("revision") in raw.column_names:
        revision = pc.cast(raw.column(source.column("revision")).combine_chunks(), pa.int64())
        if revision.null_count or (n and pc.min(revision).as_py() < 1):
            raise InputError("revision must be a whole number >= 1 on every row", source.label)
    else:
        revision = pa.array(np.ones(n, dtype=np.int64), pa.int64())
    emitted = (
        _times(raw.column(source.column("emitted_at")), source, "emitted_at")
        if source.column("emitted_at") in raw.column_names
        else effective
    )
    cause = (
        pc.fill_null(pc.cast(raw.column(source.column("cause")).combine_chunks(), pa.string()), "event")
        if source.column("cause") in raw.column_names
        else pa.array(["event"] * n, pa.string())
    )
    return pa.table(
        {
            "user_id": users,
            "segments": lists,
            "effective_time": effective,
            "revision": revision,
            "emitted_at": emitted,
            "cause": cause,
        },
        schema=STREAM_SCHEMA,
    )


def write_legacy_lines(path: str | Path, table: pa.Table) -> None:
    """A ``LEGACY_SCHEMA`` table as SPEC §3 lines (what a query returned, kept as evidence)."""
    import json

    from segments.events import write_jsonl
    from segments.timeutil import format_ms

    rows = zip(
        table.column("as_of").to_pylist(),
        decoded(table.column("user_id")).to_pylist(),
        decoded(table.column("segments")).to_pylist(),
        strict=True,
    )
    write_jsonl(
        path,
        (
            json.dumps({"as_of": format_ms(t), "user_id": u, "segments": sorted(s)}, ensure_ascii=False)
            for t, u, s in rows
        ),
    )
