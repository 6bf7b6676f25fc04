"""Follow-ups of the walk through the integration engineer's pages (issue 7 §7, R3): the
operator's overview read each institution's connection status with a query of its own
(300 statements for the demo's 300 institutions); the 未对码 list did not say which
messages brought a code and called report issue times 最早/最近报告 without saying so;
the messages list could not be narrowed to today's (or the last 24 hours', 7 days')
messages, so "which of my messages were refused today" meant paging back by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from huren.adapters.clock import FixedClock
from huren.adapters.db.inbound import ConnectionState, SqlInboundMessages, WindowCounts
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.china_time import CHINA_TZ
from tests.fixtures.actors import Login
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    LAB_LFT_V251,
    sample_text,
    with_control_id,
    with_field,
)
from tests.fixtures.world import HOSP_A, HOSP_B, HOSP_C
from tests.integration.test_hl7_integration_pages import bad_lab
from tests.integration.test_hl7_integration_pages import receiver as receiver


def good_lab(control_id: str, report_no: str) -> bytes:
    text = with_control_id(sample_text(LAB_LFT_V251), control_id)
    return with_field(text, "OBR", 3, report_no).encode()


def cbc(control_id: str, report_no: str) -> bytes:
    """Hospital B's blood count (local code B-CBC, not in its code map), GB 18030."""
    text = with_control_id(sample_text(CBC_V23_GB18030), control_id)
    return with_field(text, "OBR", 3, report_no).encode("gb18030")


def send_at(receiver: Hl7Receiver, clock: FixedClock, at: datetime, message: bytes) -> None:
    now = clock.at
    clock.at = at
    try:
        receiver.handle(message)
    finally:
        clock.at = now


@pytest.fixture
def statements(world: Container) -> Iterator[list[str]]:
    """The SQL statements run on the database that read ``inbound_message``."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "inbound_message" in statement:
            seen.append(statement)

    event.listen(world.engine, "before_cursor_execute", record)
    yield seen
    event.remove(world.engine, "before_cursor_execute", record)


# ---------------------------------------------------------------- 1. connection statuses
@pytest.fixture
def history(receiver: Hl7Receiver, clock: FixedClock) -> datetime:
    """Hospital A: accepted 10 days ago, refused 2 days ago and 1 hour ago (nothing
    accepted within the 7 days). Hospital C: accepted exactly 24 hours ago and 25 hours
    ago. Hospital B never sent."""
    now = clock.at
    send_at(receiver, clock, now - timedelta(days=10), good_lab("A-OK-OLD", "R-A-1"))
    send_at(receiver, clock, now - timedelta(days=2), bad_lab("A-BAD-2D"))
    send_at(receiver, clock, now - timedelta(hours=1), bad_lab("A-BAD-1H"))
    lab_c = with_field(sample_text(LAB_LFT_V251), "MSH", 4, HOSP_C)
    for hours, control in ((24, "C-24H"), (25, "C-25H")):
        message = with_field(with_control_id(lab_c, control), "OBR", 3, f"R-{control}")
        send_at(receiver, clock, now - timedelta(hours=hours), message.encode())
    return now


def test_statuses_of_many_institutions_in_one_statement_as_one_by_one(
    world: Container, history: datetime, statements: list[str]
) -> None:
    store = SqlInboundMessages(world.engine)
    codes = [HOSP_A, HOSP_B, HOSP_C]
    found = store.connection_statuses(codes, history)
    assert len(statements) == 1
    assert list(found) == codes
    a, b, c = (found[code] for code in codes)
    # The last accepted message lies outside the 7-day window: still found.
    assert a.last_accepted_at == history - timedelta(days=10)
    assert a.last_message_at == history - timedelta(hours=1)
    assert (a.last_24h, a.last_7d) == (WindowCounts(1, 1), WindowCounts(2, 2))
    assert a.state is ConnectionState.FAILING
    assert (b.last_message_at, b.last_24h, b.state) == (None, WindowCounts(0, 0), "never")
    # Exactly 24 hours ago counts in the 24 hours (as the per-institution query did).
    assert (c.last_24h, c.last_7d) == (WindowCounts(1, 0), WindowCounts(2, 0))
    assert all(store.connection_status(code, history) == found[code] for code in codes)


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize("path", ["/api/v1/integration/status", "/integration/unmapped"])
def test_the_operators_overview_reads_the_statuses_in_one_statement(
    client: TestClient, login: Login, world: Container, statements: list[str], path: str
) -> None:
    headers = login(Role.OPERATOR)
    assert len(world.catalog.get().institutions) > 3
    statements.clear()
    r = client.get(path, headers=headers)
    assert r.status_code == 200
    assert len(statements) == 1
    if path.startswith("/api"):
        states = {s["institution"]: s["state"] for s in r.json()}
        assert (states[HOSP_A], states[HOSP_B], states[HOSP_C]) == (
            "failing",
            "never",
            "connected",
        )


# ---------------------------------------------------------------- 2. unmapped: messages
@pytest.fixture
def two_blood_counts(receiver: Hl7Receiver, clock: FixedClock) -> tuple[datetime, datetime]:
    """Hospital B sends two blood counts (two reports, one unmapped local code), three
    days apart; returns their receipt times."""
    first, last = clock.at - timedelta(days=3), clock.at - timedelta(minutes=5)
    send_at(receiver, clock, first, cbc("B-CBC-1", "RB-1"))
    send_at(receiver, clock, last, cbc("B-CBC-2", "RB-2"))
    return first, last


def test_unmapped_codes_name_the_messages_that_brought_them(
    client: TestClient, login: Login, two_blood_counts: tuple[datetime, datetime]
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    sent = client.get("/api/v1/integration/messages", headers=headers).json()
    last_id, first_id = (m["id"] for m in sent)
    (code,) = client.get("/api/v1/integration/unmapped", headers=headers).json()["codes"]
    assert (code["local_code"], code["results"]) == ("B-CBC", 2)
    assert (code["first_message_id"], code["last_message_id"]) == (first_id, last_id)
    first, last = two_blood_counts
    assert datetime.fromisoformat(code["first_received_at"]) == first
    assert datetime.fromisoformat(code["last_received_at"]) == last

    page = client.get("/integration/unmapped", headers=headers).text
    row = re.search(r'<tr data-local-code="B-CBC">(.*?)</tr>', page, re.S)
    assert row is not None
    assert f'<a href="/integration/messages/{first_id}">#{first_id}</a>' in row.group(1)
    assert f'<a href="/integration/messages/{last_id}">#{last_id}</a>' in row.group(1)
    assert last.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S") in row.group(1)
    # The issue times are labelled as report times, the receipt times as the messages'.
    assert "<th>报告时间（最早 / 最近）</th>" in page
    assert "<th>最早报告</th>" not in page


# ---------------------------------------------------------------- 3. since filter
@pytest.fixture
def over_a_week(receiver: Hl7Receiver, clock: FixedClock) -> dict[str, datetime]:
    """Hospital A's refused messages: 8 days ago, 3 days ago, yesterday evening in China
    time (within 24 hours) and early today in China time."""
    now = clock.at
    midnight = now.astimezone(CHINA_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    times = {
        "A-8D": now - timedelta(days=8),
        "A-3D": now - timedelta(days=3),
        "A-YESTERDAY": midnight - timedelta(minutes=30),
        "A-TODAY": midnight + timedelta(minutes=30),
    }
    assert now - times["A-YESTERDAY"] < timedelta(hours=24)
    assert times["A-TODAY"] < now
    for control, at in times.items():
        send_at(receiver, clock, at, bad_lab(control))
    return times


@pytest.mark.usefixtures("over_a_week")
@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("today", ["A-TODAY"]),
        ("24h", ["A-TODAY", "A-YESTERDAY"]),
        ("7d", ["A-TODAY", "A-YESTERDAY", "A-3D"]),
        (None, ["A-TODAY", "A-YESTERDAY", "A-3D", "A-8D"]),
    ],
)
def test_refused_messages_since_today_24_hours_or_7_days(
    client: TestClient, login: Login, since: str | None, expected: list[str]
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    query = "status=rejected" + (f"&since={since}" if since else "")
    rows = client.get(f"/api/v1/integration/messages?{query}", headers=headers).json()
    assert [m["control_id"] for m in rows] == expected
    page = client.get(f"/integration/messages?{query}", headers=headers).text
    assert re.findall(r"<code>(A-[A-Z0-9]+)</code>", page) == expected


@pytest.mark.usefixtures("over_a_week")
def test_since_filter_is_offered_and_kept_when_paging(client: TestClient, login: Login) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    page = client.get("/integration/messages?status=rejected&since=today", headers=headers).text
    assert '<option value="today" selected>今天</option>' in page
    rows = client.get("/api/v1/integration/messages?status=rejected", headers=headers).json()
    older = client.get(
        f"/integration/messages?status=rejected&since=7d&before={rows[0]['id']}", headers=headers
    ).text
    assert re.findall(r"<code>(A-[A-Z0-9]+)</code>", older) == ["A-YESTERDAY", "A-3D"]
    newest = re.search(r'<a id="newest" href="([^"]+)"', older)
    assert newest is not None
    assert "since=7d" in newest.group(1)


def test_an_unknown_since_is_refused(client: TestClient, login: Login) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    assert (
        client.get("/api/v1/integration/messages?since=month", headers=headers).status_code == 422
    )
    page = client.get("/integration/messages?since=month", headers=headers)
    assert page.status_code == 422
    assert "时间筛选参数无效" in page.text


def test_a_look_at_a_message_as_received_is_recorded_by_whom(
    client: TestClient, world: Container, login: Login, receiver: Hl7Receiver
) -> None:
    # The raw message holds the patient's 身份证 and name in full: each look (page or API)
    # is an audit row naming the reader and the message.
    from sqlalchemy import select

    from huren.adapters.db.tables import audit_event

    receiver.handle(good_lab("AUDIT-1", "RPT-AUDIT-1"))
    (summary,) = world.inbound_messages.recent(institutions=[HOSP_A])
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    assert client.get(f"/integration/messages/{summary.id}", headers=headers).status_code == 200
    api = client.get(f"/api/v1/integration/messages/{summary.id}", headers=headers)
    assert api.status_code == 200
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(audit_event.c.action, audit_event.c.role, audit_event.c.purpose).where(
                audit_event.c.action == "integration.message"
            )
        ).all()
    assert len(rows) == 2
    assert {r.role for r in rows} == {"institution_admin"}
    assert all(f"#{summary.id}" in r.purpose for r in rows)
