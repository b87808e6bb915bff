"""Batches of rows sent to PostgreSQL as one JSON parameter: `json_to_recordset(:rows) AS t(a type, …)`.

The scheduler's sweep writes hundreds of rows at once (notices, audit events, outbox rows). As an
executemany, psycopg binds and sends each row apart, in Python (about 15 µs a row, and the server runs
the statement once per row); as arrays, one parameter per column, psycopg dumps every element in Python.
One JSON text, written by Python's C encoder, is one parameter and one statement of fixed text whatever
the batch, so it is compiled (by SQLAlchemy) and parsed (by psycopg and PostgreSQL) once
(bench/NOTES.md items 42 and 47).

PostgreSQL's JSON functions cannot turn `\\u0000` (a NUL character) into text, so a batch whose text
holds one cannot go this way: `records` returns None and the caller writes the batch as an executemany,
which stores such JSON as it is. A `json` column receives its value's text unchanged: nested values are
written with canonical_json's settings, so the stored text is the canonical text (storage/canonical.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Executable, Result, Table, Text, bindparam, cast, column, func
from sqlalchemy.orm import Session

from storage.canonical import CANONICAL

PARAMETER = "rows"
_NUL = "\\u0000"
# The escape itself, after an even run of backslashes: a typed backslash before "u0000" is written as two
# backslashes, and is no NUL.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def recordset(table: Table, names: list[str], parameter: str = PARAMETER) -> Any:
    """The table-valued `json_to_recordset` of `names`, typed as the table's columns, to select from; its
    rows are the bound `parameter` (one statement may read two batches)."""
    columns = [column(name, table.c[name].type) for name in names]
    rows = cast(bindparam(parameter, type_=Text), JSON)
    return func.json_to_recordset(rows).table_valued(*columns).render_derived(with_types=True)


def _time(value: Any) -> str:
    if not isinstance(value, datetime):
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    if value.tzinfo is None:  # as storage.models.UTCDateTime refuses them
        raise ValueError("naive datetime given to the database; use aware UTC datetimes")
    return value.isoformat()  # with its offset, which PostgreSQL reads as timestamptz


# canonical_json's settings, so JSON values nested in a row (a payload, an event's details) are stored in
# the canonical text every JSON column holds; and times, which the encoder hands to `_time`.
_ENCODER = json.JSONEncoder(**CANONICAL, default=_time)


def _holds_nul(text: str) -> bool:
    return _NUL in text and _ESCAPED_NUL.search(text) is not None


def records(rows: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """The parameters of a statement selecting from a `recordset`: the rows as one JSON array of
    objects, or None if the text holds a NUL."""
    document = _ENCODER.encode(rows)
    return None if _holds_nul(document) else {PARAMETER: document}


def members(row: Mapping[str, Any], raw: Mapping[str, str] | None = None) -> str | None:
    """Part of a batch's row, written ahead: `row`'s columns as JSON object members (no braces), then
    `raw`'s, whose values are JSON text already (canonical, as a nested value would be written); None if
    the text holds a NUL. A caller that learns the rest of the row later (the audit chain's sequence
    numbers and hashes, known only once its head is locked) adds those members and joins the rows with
    `document`, so that little is left to do then."""
    text = _ENCODER.encode(row)[1:-1]
    if raw:
        text += "".join(f",{_ENCODER.encode(name)}:{value}" for name, value in raw.items())
    return None if _holds_nul(text) else text


def document(rows: Iterable[str]) -> str:
    """A batch's parameter text from its rows' members, each row's complete (see `members`)."""
    return "[{" + "},{".join(rows) + "}]"


Rows = list[dict[str, Any]]


def execute_batch(
    session: Session,
    from_json: Executable,
    as_rows: Executable,
    rows: Rows,
    for_rows: Callable[[Rows], Rows] | None = None,
) -> Result[Any]:
    """Write a batch with one statement: on PostgreSQL `from_json` (selecting from a `recordset`) with the
    rows as one JSON parameter; on SQLite, or for a batch that cannot go as JSON, `as_rows` as an
    executemany of the rows (given to `for_rows` first, where that statement binds them differently)."""
    if session.get_bind().dialect.name == "postgresql" and (as_json := records(rows)) is not None:
        return session.execute(from_json, as_json)
    return session.execute(as_rows, for_rows(rows) if for_rows is not None else rows)
