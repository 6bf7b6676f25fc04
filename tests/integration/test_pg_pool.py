"""PostgreSQL pooled connections are pinged only after sitting idle, and a connection the
server dropped meanwhile is replaced before use instead of failing the request."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text

from huren.adapters.db import engine as db_engine


def _sent(engine: Any) -> list[str]:
    """Every statement the driver runs on the engine's connections, pings included
    (they bypass the engine's cursor events)."""
    sent: list[str] = []

    class Tracing(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query))
            return super().execute(query, *args, **kwargs)

    @event.listens_for(engine, "connect")
    def trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.cursor_factory = Tracing

    return sent


def test_back_to_back_transactions_send_no_ping(pg_database: str) -> None:
    engine = db_engine.make_engine(pg_database, pool_size=1, max_overflow=0)
    sent = _sent(engine)
    try:
        for _ in range(5):
            with engine.connect() as conn:
                conn.execute(text("SELECT 42")).scalar_one()
        assert sent.count("SELECT 1") == 0
        assert sent.count("SELECT 42") == 5
    finally:
        engine.dispose()


def test_an_idle_connection_is_pinged_and_replaced_when_the_server_dropped_it(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db_engine.make_engine(pg_database, pool_size=1, max_overflow=0)
    sent = _sent(engine)
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # The server ends the pooled (now idle) connection, as a restart or an idle
        # timeout would.
        admin = db_engine.make_engine(pg_database, poolclass=None)
        with admin.begin() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar()
        admin.dispose()
        monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_SECONDS", 0.0)
        with engine.connect() as conn:  # not an error: the dead connection was replaced
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert second != first
        assert sent.count("SELECT 1") == 1  # the ping that found it dead
    finally:
        engine.dispose()
