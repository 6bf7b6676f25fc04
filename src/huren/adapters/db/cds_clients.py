"""Registered CDS clients and the ``jti`` of their accepted JWTs; implements
``services.cds_clients.CdsClientStore``. Registering, rotating and revoking write their
``account_event`` in the transaction of the change (``accounts.insert_recorded``,
``update_recorded``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from huren.adapters.db import tables as t
from huren.adapters.db.accounts import as_utc, insert_recorded, update_recorded
from huren.domain.accounts import AccountEvent
from huren.services.cds_clients import CdsClientRecord

# Expired ``jti`` rows are deleted by every this many claims of a process (a client makes
# one per call; the rows of the last few minutes are all that is needed).
PRUNE_EVERY = 500


def _client(r: Any) -> CdsClientRecord:
    return CdsClientRecord(
        id=r.id,
        issuer=r.issuer,
        account_id=r.account_id,
        jwks=r.jwks,
        jku=r.jku,
        label=r.label,
        created_at=as_utc(r.created_at),
        revoked_at=as_utc(r.revoked_at) if r.revoked_at else None,
    )


class SqlCdsClients:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._claims = 0

    def add_cds_client(
        self,
        account_id: int,
        issuer: str,
        jwks: str,
        jku: str,
        label: str,
        now: datetime,
        event: AccountEvent,
    ) -> int:
        return insert_recorded(
            self.engine,
            t.cds_client,
            event,
            account_id,
            issuer=issuer,
            account_id=account_id,
            jwks=jwks,
            jku=jku,
            label=label,
            created_at=now,
        )

    def cds_client(self, issuer: str) -> CdsClientRecord | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.cds_client).where(t.cds_client.c.issuer == issuer)).first()
        return _client(row) if row is not None else None

    def list_cds_clients(self) -> list[CdsClientRecord]:
        with self.engine.connect() as c:
            return [_client(r) for r in c.execute(select(t.cds_client).order_by(t.cds_client.c.id))]

    def set_cds_client_keys(self, issuer: str, jwks: str, jku: str, event: AccountEvent) -> bool:
        return self._change_unrevoked(issuer, event, jwks=jwks, jku=jku)

    def revoke_cds_client(self, issuer: str, now: datetime, event: AccountEvent) -> bool:
        return self._change_unrevoked(issuer, event, revoked_at=now)

    def _change_unrevoked(self, issuer: str, event: AccountEvent, **values: Any) -> bool:
        k = t.cds_client.c
        return update_recorded(
            self.engine, event, k.account_id, [k.issuer == issuer, k.revoked_at.is_(None)], **values
        )

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        self._claims += 1
        try:
            with self.engine.begin() as c:
                if self._claims % PRUNE_EVERY == 0:
                    c.execute(delete(t.cds_client_jti).where(t.cds_client_jti.c.expires_at < now))
                c.execute(
                    insert(t.cds_client_jti).values(issuer=issuer, jti=jti, expires_at=expires_at)
                )
        except IntegrityError:
            return False
        return True
