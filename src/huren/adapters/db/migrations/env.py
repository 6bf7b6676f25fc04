"""Alembic environment: one schema for SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic import context

from huren.adapters.db.engine import make_engine
from huren.adapters.db.schema import metadata
from huren.adapters.db.tables import UtcDateTime

config = context.config


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Migrations hold plain SQLAlchemy types: UtcDateTime is DateTime(timezone=True) in
    the database; its UTC handling lives in Python only."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "render_as_batch": True,
        "compare_type": True,
        "render_item": render_item,
    }
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
