"""``RateCounters`` in the database (table ``rate_counter``), so that every server process
on one database counts the same events.

A hit is one transaction: count the event (upsert into its millisecond bucket), sum the
key's buckets in the window, and roll back when that is over the limit — so a refused
hit is not counted. Hits on one key are serialized: on PostgreSQL by a transaction-level
advisory lock on the key's hash (two processes in different buckets would otherwise both
see the other's event missing), on SQLite by the database's single writer (the upsert is
the transaction's first statement, so it takes the write lock before reading)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from huren.adapters.db.tables_sharing import rate_counter
from huren.domain.sharing import RateLimit
from huren.services.ratelimit import CounterHit, epoch_ms, retry_seconds, window_ms

rc = rate_counter.c

# Every this many writes a process also drops the rows of keys not hit again since their
# window passed (a key's own rows go at its next hit).
SWEEP_EVERY = 500
MAX_KEY = 200


def _key(key: str) -> str:
    if len(key) <= MAX_KEY:
        return key
    return f"{key[:120]}#{hashlib.sha256(key.encode()).hexdigest()}"


class _OverLimit(Exception):
    def __init__(self, hit: CounterHit) -> None:
        self.hit = hit


class SqlRateCounters:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._writes = itertools.count(1)

    def _count_event(self, conn: Connection, key: str, now_ms: int, w: int) -> None:
        if self._pg:
            # A counter lost to a server crash costs nothing; waiting for the WAL flush
            # (fsync) at every lookup and login would: commit these asynchronously
            # (visible to every other session at commit all the same). One round trip
            # with the key's lock.
            conn.execute(
                select(
                    func.set_config("synchronous_commit", "off", True),
                    func.pg_advisory_xact_lock(func.hashtextextended(key, 0)),
                )
            )
        ins: Any = (pg_insert if self._pg else sqlite_insert)(rate_counter)
        conn.execute(
            ins.values(
                bucket_key=key, bucket_ms=now_ms, events=1, expires_ms=now_ms + w
            ).on_conflict_do_update(
                index_elements=[rc.bucket_key, rc.bucket_ms],
                set_={"events": rc.events + 1},
            )
        )

    def _window(
        self, conn: Connection, key: str, now_ms: int, w: int
    ) -> tuple[int, int | None, int]:
        """(events in the window, its oldest bucket, rows of the key already out of it)."""
        inside = rc.bucket_ms > now_ms - w
        row = conn.execute(
            select(
                func.coalesce(func.sum(case((inside, rc.events), else_=0)), 0),
                func.min(case((inside, rc.bucket_ms), else_=None)),
                func.count(case((inside, None), else_=1)),
            ).where(rc.bucket_key == key)
        ).one()
        return int(row[0]), None if row[1] is None else int(row[1]), int(row[2])

    def _tidy(self, conn: Connection, key: str, now_ms: int, w: int, stale: int) -> None:
        if stale:
            conn.execute(
                delete(rate_counter).where(rc.bucket_key == key, rc.bucket_ms <= now_ms - w)
            )
        if next(self._writes) % SWEEP_EVERY == 0:
            conn.execute(delete(rate_counter).where(rc.expires_ms <= now_ms))

    def hit(self, key: str, now: datetime, rule: RateLimit) -> CounterHit:
        key, now_ms, w = _key(key), epoch_ms(now), window_ms(rule)
        try:
            with self._engine.begin() as conn:
                self._count_event(conn, key, now_ms, w)
                total, oldest, stale = self._window(conn, key, now_ms, w)
                if total > rule.limit:
                    retry = retry_seconds(oldest if oldest is not None else now_ms, now_ms, rule)
                    raise _OverLimit(CounterHit(False, total - 1, retry))  # rolls back
                self._tidy(conn, key, now_ms, w, stale)
        except _OverLimit as over:
            return over.hit
        return CounterHit(True, total)

    def add(self, key: str, now: datetime, rule: RateLimit) -> None:
        key, now_ms, w = _key(key), epoch_ms(now), window_ms(rule)
        with self._engine.begin() as conn:
            self._count_event(conn, key, now_ms, w)
            self._tidy(conn, key, now_ms, w, self._window(conn, key, now_ms, w)[2])

    def count(self, key: str, now: datetime, rule: RateLimit) -> int:
        with self._engine.connect() as conn:
            return self._window(conn, _key(key), epoch_ms(now), window_ms(rule))[0]

    def clear(self, key: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(delete(rate_counter).where(rc.bucket_key == _key(key)))


__all__ = ["SqlRateCounters"]
