"""Read side of ``inbound_message`` for the integration engineer (issue 7 §7, R3):
recent messages of every channel, one message with its raw text and our answer, and each
institution's connection status (last message, error rate over 24 h and 7 days)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, String, case, column, func, insert, select, values

from huren.adapters.db.tables import audit_event, inbound_message, inflate_message
from huren.domain.accounts import Principal

# An institution whose share of refused messages reaches this is shown as failing.
ERROR_RATE_ALERT = 0.2
# Institutions whose status one statement reads (two bound codes each; PostgreSQL takes
# 65,535 parameters, SQLite 32,766).
_STATUS_CHUNK = 1000


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: int
    received_at: datetime
    channel: str
    institution: str | None
    control_id: str
    status: str  # accepted | rejected | duplicate
    error: str


@dataclass(frozen=True, slots=True)
class MessageDetail:
    summary: MessageSummary
    raw: str
    response: str


class ConnectionState(StrEnum):
    CONNECTED = "connected"
    FAILING = "failing"
    IDLE = "idle"
    NEVER = "never"


CONNECTION_LABELS = {
    ConnectionState.CONNECTED: "已连接",
    ConnectionState.FAILING: "错误率偏高",
    ConnectionState.IDLE: "24 小时内无消息",
    ConnectionState.NEVER: "从未发送消息",
}


@dataclass(frozen=True, slots=True)
class WindowCounts:
    messages: int
    rejected: int

    @property
    def error_rate(self) -> float | None:
        return self.rejected / self.messages if self.messages else None


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    institution: str
    last_message_at: datetime | None
    last_accepted_at: datetime | None
    last_24h: WindowCounts
    last_7d: WindowCounts

    @property
    def state(self) -> ConnectionState:
        if self.last_message_at is None:
            return ConnectionState.NEVER
        if not self.last_24h.messages:
            return ConnectionState.IDLE
        rate = self.last_24h.error_rate or 0.0
        return ConnectionState.FAILING if rate >= ERROR_RATE_ALERT else ConnectionState.CONNECTED

    @property
    def state_label(self) -> str:
        return CONNECTION_LABELS[self.state]


_SUMMARY_COLUMNS = (
    inbound_message.c.id,
    inbound_message.c.received_at,
    inbound_message.c.channel,
    inbound_message.c.institution_code,
    inbound_message.c.control_id,
    inbound_message.c.status,
    inbound_message.c.error,
)


def _summary(r: Any) -> MessageSummary:
    return MessageSummary(
        id=int(r.id),
        received_at=_utc(r.received_at),
        channel=str(r.channel),
        institution=r.institution_code,
        control_id=str(r.control_id),
        status=str(r.status),
        error=str(r.error),
    )


class SqlInboundMessages:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def recent(
        self,
        *,
        institutions: Collection[str] | None = None,
        status: str | None = None,
        channel: str | None = None,
        before_id: int | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[MessageSummary]:
        """Newest first. ``institutions`` None: all; empty: none. ``since``: received at
        or after it."""
        if institutions is not None and not institutions:
            return []
        stmt = select(*_SUMMARY_COLUMNS).order_by(inbound_message.c.id.desc()).limit(limit)
        if institutions is not None:
            stmt = stmt.where(inbound_message.c.institution_code.in_(list(institutions)))
        if status:
            stmt = stmt.where(inbound_message.c.status == status)
        if channel:
            stmt = stmt.where(inbound_message.c.channel == channel)
        if before_id is not None:
            stmt = stmt.where(inbound_message.c.id < before_id)
        if since is not None:
            stmt = stmt.where(inbound_message.c.received_at >= _utc(since))
        with self.engine.connect() as conn:
            return [_summary(r) for r in conn.execute(stmt)]

    def get(self, message_id: int) -> MessageDetail | None:
        stmt = select(
            *_SUMMARY_COLUMNS, inbound_message.c.raw_deflated, inbound_message.c.response
        ).where(inbound_message.c.id == message_id)
        with self.engine.connect() as conn:
            r = conn.execute(stmt).first()
        if r is None:
            return None
        return MessageDetail(_summary(r), inflate_message(r.raw_deflated), str(r.response))

    def record_read(self, principal: Principal, message: MessageSummary, at: datetime) -> None:
        """An audit row for a look at a message as received: it holds the patients'
        身份证 and names in full (design.md: every read of patient data is recorded). By
        message, not by patient — a refused message has no stored patient."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(audit_event).values(
                    at=_utc(at),
                    account_id=principal.account_id,
                    actor=principal.username[:64],
                    role=str(principal.role),
                    institution_code=principal.institution,
                    action="integration.message",
                    purpose=f"查看接口消息 #{message.id} 原文（{message.institution or '未知机构'}）",
                )
            )

    def connection_status(self, institution: str, now: datetime) -> ConnectionStatus:
        return self.connection_statuses([institution], now)[institution]

    def connection_statuses(
        self, institutions: Collection[str], now: datetime
    ) -> dict[str, ConnectionStatus]:
        """The connection status of each of ``institutions`` (those that never sent: no
        last message, no counts), in one statement per ``_STATUS_CHUNK`` institutions.

        The window counts are summed over the last 7 days' messages only (grouped by
        institution, ``received_at >= now - 7 days``); the last message, and the last one
        not refused, are one look-up each per institution. With an index on
        (institution_code, received_at) both read only the window and the newest entries
        of each institution — a few milliseconds with a million messages; with the index
        on institution_code alone they read every message of the institutions asked."""
        codes = list(dict.fromkeys(institutions))
        found: dict[str, ConnectionStatus] = {}
        for start in range(0, len(codes), _STATUS_CHUNK):
            found |= self._statuses(codes[start : start + _STATUS_CHUNK], now)
        return found

    def _statuses(self, codes: list[str], now: datetime) -> dict[str, ConnectionStatus]:
        if not codes:
            return {}
        m = inbound_message.c
        day, week = _utc(now - timedelta(days=1)), _utc(now - timedelta(days=7))
        refused = m.status == "rejected"
        in_day = m.received_at >= day
        window = (
            select(
                m.institution_code.label("code"),
                func.count().label("w_all"),
                func.sum(case((refused, 1), else_=0)).label("w_bad"),
                func.sum(case((in_day, 1), else_=0)).label("d_all"),
                func.sum(case((in_day & refused, 1), else_=0)).label("d_bad"),
            )
            .where(m.institution_code.in_(codes), m.received_at >= week)
            .group_by(m.institution_code)
            .subquery("recent")
        )
        asked = values(column("code", String), name="asked").data([(c,) for c in codes]).cte()
        newest = inbound_message.alias("newest")
        last = (
            select(func.max(newest.c.received_at))
            .where(newest.c.institution_code == asked.c.code)
            .scalar_subquery()
        )
        last_ok = (
            select(newest.c.received_at)
            .where(newest.c.institution_code == asked.c.code, newest.c.status != "rejected")
            .order_by(newest.c.received_at.desc())
            .limit(1)
            .scalar_subquery()
        )
        stmt = select(
            asked.c.code,
            last.label("last"),
            last_ok.label("last_ok"),
            func.coalesce(window.c.d_all, 0),
            func.coalesce(window.c.d_bad, 0),
            func.coalesce(window.c.w_all, 0),
            func.coalesce(window.c.w_bad, 0),
        ).select_from(asked.outerjoin(window, window.c.code == asked.c.code))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return {
            str(r[0]): ConnectionStatus(
                str(r[0]),
                _utc(r[1]) if r[1] is not None else None,
                _utc(r[2]) if r[2] is not None else None,
                WindowCounts(int(r[3]), int(r[4])),
                WindowCounts(int(r[5]), int(r[6])),
            )
            for r in rows
        }
