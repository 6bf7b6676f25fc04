"""China time (北京时间, UTC+8, no daylight saving): the clock that hospitals, their reports
and the policy's time limits are written in. A time that arrives without a zone (an HL7
TS, a FHIR search date, a date typed into a form or sent in a JSON body) means China
time, never the server's own zone, which on a server is usually UTC."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

CHINA_TZ = timezone(timedelta(hours=8), "CST")


def in_china_time(at: datetime) -> datetime:
    """``at`` itself when it carries a zone; a naive ``at`` read as China time."""
    return at if at.tzinfo is not None else at.replace(tzinfo=CHINA_TZ)
