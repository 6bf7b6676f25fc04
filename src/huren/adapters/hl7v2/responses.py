"""Keeps the ACK sent for an inbound message in ``inbound_message.response``."""

from __future__ import annotations

from sqlalchemy import Engine, update

from huren.adapters.db.tables import inbound_message


class SqlResponseLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_response(self, message_id: int, response: str) -> None:
        # Only the first answer is kept: a resent duplicate points at the original message.
        with self.engine.begin() as c:
            c.execute(
                update(inbound_message)
                .where(inbound_message.c.id == message_id, inbound_message.c.response == "")
                .values(response=response)
            )
