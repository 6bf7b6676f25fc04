"""Read side of ``inbound_message`` for the integration engineer (issue 7 §7, R3):
recent messages of every channel, one message with its raw text and our answer, and each
institution's connection status (last message, error rate over 24 h and 7 days)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, select

from huren.adapters.db.tables import inbound_message, inflate_message

# An institution whose share of refused messages reaches this is shown as failing.
ERROR_RATE_ALERT = 0.2


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
        limit: int = 50,
    ) -> list[MessageSummary]:
        """Newest first. ``institutions`` None: all; empty: none."""
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

    def connection_status(self, institution: str, now: datetime) -> ConnectionStatus:
        m = inbound_message.c
        day, week = _utc(now - timedelta(days=1)), _utc(now - timedelta(days=7))
        refused = m.status == "rejected"

        def counted(since: datetime) -> tuple[ColumnElement[int], ColumnElement[int]]:
            in_window = m.received_at >= since
            return (
                func.coalesce(func.sum(case((in_window, 1), else_=0)), 0),
                func.coalesce(func.sum(case(((in_window) & refused, 1), else_=0)), 0),
            )

        d_all, d_bad = counted(day)
        w_all, w_bad = counted(week)
        stmt = select(
            func.max(m.received_at).label("last"),
            func.max(case((m.status != "rejected", m.received_at))).label("last_ok"),
            d_all,
            d_bad,
            w_all,
            w_bad,
        ).where(m.institution_code == institution)
        with self.engine.connect() as conn:
            r = conn.execute(stmt).one()
        last, last_ok = r[0], r[1]
        return ConnectionStatus(
            institution,
            _utc(last) if last is not None else None,
            _utc(last_ok) if last_ok is not None else None,
            WindowCounts(int(r[2]), int(r[3])),
            WindowCounts(int(r[4]), int(r[5])),
        )
