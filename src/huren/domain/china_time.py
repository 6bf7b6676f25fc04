"""China time (北京时间, UTC+8, no daylight saving): the clock that hospitals, their reports
and the policy's time limits are written in. A time that arrives without a zone (an HL7
TS, a FHIR search date, a date typed into a form or sent in a JSON body) means China
time, never the server's own zone, which on a server is usually UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

CHINA_TZ = timezone(timedelta(hours=8), "CST")


def local_time(at: datetime | None, *, seconds: bool = False) -> str:
    """``at`` in China time as pages, cards and the EMR text write it ("2026-06-13 09:15",
    with ``seconds`` "09:15:42"); "—" for no time."""
    if at is None:
        return "—"
    return at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def local_date(at: datetime) -> str:
    """The calendar day of ``at`` in China time ("2026-06-13")."""
    return at.astimezone(CHINA_TZ).strftime("%Y-%m-%d")


def in_china_time(at: datetime) -> datetime:
    """``at`` itself when it carries a zone; a naive ``at`` read as China time."""
    return at if at.tzinfo is not None else at.replace(tzinfo=CHINA_TZ)
