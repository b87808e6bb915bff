"""The plan the database uses for a statement as the code sends it: tests of which index a query uses."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from psycopg import sql as psql
from sqlalchemy import Engine, event


def plan_of(
    engine: Engine,
    run: Callable[[], object],
    chosen: Callable[[str], bool],
    settings: Mapping[str, str] | None = None,
) -> str:
    """The plan of the first statement `run` sends that `chosen` accepts. On PostgreSQL the generic plan
    a prepared statement settles on after a few runs, with `settings` (planner settings) in force; on
    SQLite, EXPLAIN QUERY PLAN's lines."""
    sent: list[tuple[str, Any]] = []

    def seen(_conn: object, _cursor: object, statement: str, parameters: Any, *_args: object) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    statement, parameters = next((s, p) for s, p in sent if chosen(s))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            return "\n".join(str(row[-1]) for row in rows)
        names: list[str] = []

        def numbered(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        conn.exec_driver_sql("PREPARE planned AS " + re.sub(r"%\((\w+)\)s", numbered, statement))
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        for name, value in (settings or {}).items():
            conn.exec_driver_sql(f"SET {name} = {value}")
        try:
            values = psql.SQL(", ").join(psql.Literal(parameters[name]) for name in names)
            explain = psql.SQL("EXPLAIN EXECUTE planned({})").format(values).as_string(None)
            return "\n".join(row[0] for row in conn.exec_driver_sql(explain).all())
        finally:
            conn.exec_driver_sql("DEALLOCATE planned")
            conn.exec_driver_sql("RESET ALL")
