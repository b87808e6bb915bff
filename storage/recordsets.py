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

`write_rows` sends several batches (`RowsWrite`s: inserts, and updates by primary key) as one statement,
each but the last a data-modifying CTE of the last: one round trip for a transaction's writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    Executable,
    Result,
    Table,
    Text,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    update,
)
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


# The bound name of an updated row's key in the executemany form (`RowsWrite.as_rows`), which must not be
# a column's name, or it would clash with that column's value.
ROW_KEY = "row_key"


@dataclass(frozen=True)
class RowsWrite:
    """A statement that writes a batch of rows, each a dict of `names`: an insert (the table's other
    columns take their defaults, as in an executemany), or, `by_key`, an update of those columns of the
    rows whose primary key is each row's "id"."""

    table: Table
    names: tuple[str, ...]
    by_key: bool = False

    def __post_init__(self) -> None:
        if self.by_key and (ROW_KEY in self.table.c or "id" in self.names):
            raise ValueError(f"{self.table.name}: an update by key binds the key as {ROW_KEY}, not a column")

    def from_json(self, parameter: str = PARAMETER) -> Any:
        return _from_json(self, parameter)

    def as_rows(self) -> Any:
        return _as_rows(self)

    def rows_for_executemany(self, rows: Rows) -> Rows:
        if not self.by_key:
            return rows
        return [{ROW_KEY: row["id"], **{name: row[name] for name in self.names}} for row in rows]


# Built once per write (and parameter): building a statement costs about as much as running it.
@cache
def _from_json(write: RowsWrite, parameter: str) -> Any:
    table = write.table
    if write.by_key:
        given = recordset(table, ["id", *write.names], parameter)
        return (
            update(table)
            .where(table.c.id == given.c.id)
            .values({name: given.c[name] for name in write.names})
        )
    given = recordset(table, list(write.names), parameter)
    # The other columns' defaults as values of the statement itself: the insert's own defaults are bound by
    # the column's name, and SQLAlchemy leaves them unfilled when the insert is a CTE of another statement.
    defaults = {}
    for name, default in ((c.name, c.default) for c in table.c if c.name not in write.names):
        if default is None:
            continue  # the database's default, or NULL
        if not default.is_scalar:
            raise ValueError(f"{table.name}.{name}'s default is computed: give it in each row")
        defaults[name] = literal(default.arg, table.c[name].type)
    return insert(table).from_select([*write.names, *defaults], select(*given.c, *defaults.values()))


@cache
def _as_rows(write: RowsWrite) -> Any:
    table = write.table
    if write.by_key:
        return (
            update(table)
            .where(table.c.id == bindparam(ROW_KEY))
            .values({name: bindparam(name, type_=table.c[name].type) for name in write.names})
        )
    return insert(table)


@cache
def _together(writes: tuple[RowsWrite, ...]) -> Any:
    """The writes as one statement: each but the last a data-modifying CTE of the last, the i-th reading
    its rows from parameter `rows_i`. PostgreSQL runs every such CTE to completion, all in one snapshot;
    none may update a row another updates (`write_rows` checks)."""
    *first, last = writes
    statement = last.from_json(f"{PARAMETER}_{len(first)}")
    for index, write in enumerate(first):
        statement = statement.add_cte(write.from_json(f"{PARAMETER}_{index}").cte(f"write_{index}"))
    return statement


def write_rows(session: Session, writes: Sequence[tuple[RowsWrite, Rows]]) -> None:
    """Send the writes, in order, empty ones left out. On PostgreSQL they go as one statement
    (`_together`), one round trip where each took its own, each a wait for the server and then for this
    process's GIL (bench/NOTES.md item 58); on SQLite, or where a batch's text holds a NUL, one after the
    other (an executemany where a write has several rows). A row may be updated by one write only (checked):
    in one statement, PostgreSQL would make only one of two changes to a row."""
    writes = [(write, rows) for write, rows in writes if rows]
    if not writes:
        return
    updated = [(write.table.name, row["id"]) for write, rows in writes if write.by_key for row in rows]
    if len(set(updated)) < len(updated):
        raise ValueError("a row is updated by two of the writes: give each row's changes in one")
    if session.get_bind().dialect.name == "postgresql":
        batches = [records(rows) for _, rows in writes]
        if all(batch is not None for batch in batches):
            if len(writes) == 1:
                session.execute(writes[0][0].from_json(), batches[0])
            else:
                parameters = {f"{PARAMETER}_{index}": batch[PARAMETER] for index, batch in enumerate(batches)}
                session.execute(_together(tuple(write for write, _ in writes)), parameters)
            return
    for write, rows in writes:
        given = write.rows_for_executemany(rows)
        session.execute(write.as_rows(), given if len(given) > 1 else given[0])
