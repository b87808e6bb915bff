"""Changes to loaded rows, written as Core statements instead of by the ORM's flush, and sent with the
transaction's other writes just before its commit.

A reviewer's decision changes two or three rows it has just read under the request's lock (the request,
its stage, the next or the later stages). The ORM's unit of work (sorting its objects, diffing their
attributes, building each statement) cost more than the writes themselves: about a third of a decision
(bench/NOTES.md item 56). `RowChanges` sets each value on the loaded object as its *committed* value, so
the answer and the messages built after it read the new state while the ORM has nothing to flush, and
gives the changes as writes (storage/recordsets.py `RowsWrite`): one update per table and set of columns,
by primary key.

`write_at_commit` keeps such writes for the end of the transaction, where `Workflow._write` sends them with
its outbox rows as one statement on PostgreSQL (bench/NOTES.md item 58). Nothing in the transaction reads
them back from the database meanwhile: what it reads, it reads from the objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from storage.db import kept_for_the_commit
from storage.models import Base
from storage.recordsets import Rows, RowsWrite

_DEFERRED_KEY = "frbot_writes_deferred"


class RowChanges:
    """Column changes to rows loaded in one session, to be written as `writes`."""

    def __init__(self) -> None:
        self._rows: dict[tuple[Table, int], dict[str, Any]] = {}
        self._written = False

    def set(self, row: Base, **values: Any) -> None:
        """Give `row` these column values, now in memory and in the database once `writes` are sent."""
        if self._written:
            raise RuntimeError("changes set after they were written would never reach the database")
        table = row.__table__
        assert isinstance(table, Table)
        for name, value in values.items():
            if name not in table.c:
                raise KeyError(f"{table.name} has no column {name}")
            set_committed_value(row, name, value)
        self._rows.setdefault((table, row.id), {}).update(values)

    def writes(self) -> list[tuple[RowsWrite, Rows]]:
        """One update per table and set of columns (each row in one of them), each in the order its first
        row was changed: the request's row, which a decision changes first, before its stages', as every
        writer of a request takes them."""
        self._written = True
        groups: dict[RowsWrite, Rows] = {}
        for (table, key), values in self._rows.items():
            write = RowsWrite(table, tuple(sorted(values)), by_key=True)
            groups.setdefault(write, []).append({"id": key, **values})
        return list(groups.items())


def write_at_commit(session: Session, writes: Sequence[tuple[RowsWrite, Rows]]) -> None:
    """Keep writes for `Workflow._write` to send, in the order kept, just before the commit."""
    session.info.setdefault(_DEFERRED_KEY, []).extend(writes)


def writes_at_commit(session: Session) -> list[tuple[RowsWrite, Rows]]:
    """The writes kept by `write_at_commit`, taken: the caller sends them."""
    return session.info.pop(_DEFERRED_KEY, [])


# A transaction that kept writes but never sent them would commit without them.
kept_for_the_commit(_DEFERRED_KEY, lambda: RuntimeError("writes kept with write_at_commit were never sent"))
