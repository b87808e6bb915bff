"""Changes to loaded rows, written as Core UPDATEs instead of by the ORM's flush.

A reviewer's decision changes two or three rows it has just read under the request's lock (the request,
its stage, the next or the later stages). The ORM's unit of work (sorting its objects, diffing their
attributes, building each statement) cost more than the writes themselves: about a third of a decision
(bench/NOTES.md item 56). `RowChanges` sets each value on the loaded object as its *committed* value, so
the answer and the messages built after it read the new state while the ORM has nothing to flush, and
writes the changes itself: one UPDATE per table and set of columns, by primary key.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from storage.models import Base

# The bound name of the row's key, which must not be a column's (`_statement` checks), or it would clash
# with that column's value.
_KEY = "row_key"


@cache  # built once per table and set of columns, as building a statement costs about as much as running it
def _statement(table: Table, names: tuple[str, ...]) -> Any:
    if _KEY in table.c:
        raise ValueError(f"{table.name} has a column named {_KEY}, the bound name of the row's key")
    return (
        update(table)
        .where(table.c.id == bindparam(_KEY))
        .values({name: bindparam(name, type_=table.c[name].type) for name in names})
    )


class RowChanges:
    """Column changes to rows loaded in one session, to be written by `write` before the commit."""

    def __init__(self) -> None:
        self._rows: dict[tuple[Table, int], dict[str, Any]] = {}
        self._written = False

    def set(self, row: Base, **values: Any) -> None:
        """Give `row` these column values, now in memory and in the database at `write`."""
        if self._written:
            raise RuntimeError("changes set after they were written would never reach the database")
        table = row.__table__
        assert isinstance(table, Table)
        for name, value in values.items():
            if name not in table.c:
                raise KeyError(f"{table.name} has no column {name}")
            set_committed_value(row, name, value)
        self._rows.setdefault((table, row.id), {}).update(values)

    def write(self, session: Session) -> None:
        """One UPDATE (an executemany where several rows change the same columns) per table and set of
        columns, each in the order its first row was changed: the request's row, which a decision changes
        first, before its stages', as every writer of a request takes them."""
        self._written = True
        groups: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
        for (table, key), values in self._rows.items():
            names = tuple(sorted(values))
            groups.setdefault((table, names), []).append({_KEY: key, **values})
        for (table, names), rows in groups.items():
            session.execute(_statement(table, names), rows if len(rows) > 1 else rows[0])
