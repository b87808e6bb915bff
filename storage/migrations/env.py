"""Alembic environment: runs migrations online against the configured URL."""

from __future__ import annotations

from alembic import context

from storage.db import make_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            sqlite = engine.dialect.name == "sqlite"
            if sqlite:
                # SQLite changes a table's columns by copying it into a new table and dropping the old one
                # (Alembic's batch mode), which its foreign-key checks refuse while other rows refer to it:
                # off for the migration (only possible outside a transaction, so on the driver's own
                # connection before SQLAlchemy begins one), the references checked whole after it.
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migration left rows referring to nothing: {broken[:5]}")
    finally:
        engine.dispose()


run_migrations()
