"""The integration engineer's view: recent and rejected messages, one message's raw text
and answer, unmapped codes and connection status — JSON and pages, each institution
seeing its own messages only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from huren.adapters.clock import FixedClock
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.intake import Channel
from tests.fixtures.actors import Login
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_control_id,
    with_field,
)
from tests.fixtures.world import HOSP_A, HOSP_B


@pytest.fixture
def receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


def bad_lab(control_id: str) -> bytes:
    text = with_control_id(sample_text(LAB_LFT_V251), control_id)
    return with_field(text, "OBR", 3, "").encode()


@pytest.fixture
def traffic(receiver: Hl7Receiver, world: Container, clock: FixedClock) -> None:
    """Hospital A: one rejected three days ago, one accepted and one rejected today.
    Hospital B: one accepted GB 18030 blood count with an unmapped code."""
    now = clock.at
    clock.at = now - timedelta(days=3)
    receiver.handle(bad_lab("A-OLD-1"))
    clock.at = now
    receiver.handle(sample_bytes(LAB_LFT_V251))
    receiver.handle(bad_lab("A-BAD-2"))
    receiver.handle(sample_bytes(CBC_V23_GB18030))


@pytest.mark.usefixtures("traffic")
def test_interface_account_lists_only_its_own_institutions_messages(
    client: TestClient, login: Login
) -> None:
    r = client.get(
        "/api/v1/integration/messages", headers=login(Role.INTEGRATION, institution=HOSP_A)
    )
    assert r.status_code == 200
    rows = r.json()
    assert [m["control_id"] for m in rows] == ["A-BAD-2", "LIS202606140001", "A-OLD-1"]
    assert {m["institution"] for m in rows} == {HOSP_A}


@pytest.mark.usefixtures("traffic")
def test_rejected_filter_shows_the_reason_naming_the_field(
    client: TestClient, login: Login
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    rows = client.get("/api/v1/integration/messages?status=rejected", headers=headers).json()
    assert [m["control_id"] for m in rows] == ["A-BAD-2", "A-OLD-1"]
    assert all("OBR[1]-3" in m["error"] for m in rows)
    assert rows[0]["status_label"] == "已拒收"


@pytest.mark.usefixtures("traffic")
def test_operator_sees_every_institution(client: TestClient, login: Login) -> None:
    rows = client.get("/api/v1/integration/messages", headers=login(Role.OPERATOR)).json()
    assert {m["institution"] for m in rows} == {HOSP_A, HOSP_B}


@pytest.mark.usefixtures("traffic")
def test_message_detail_has_raw_text_and_the_ack_sent(client: TestClient, login: Login) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    rejected = client.get("/api/v1/integration/messages?status=rejected", headers=headers).json()
    detail = client.get(f"/api/v1/integration/messages/{rejected[0]['id']}", headers=headers).json()
    assert detail["raw"].startswith("MSH|^~\\&|LIS|H130100001|")
    assert "MSA|AE|A-BAD-2|" in detail["response"]


@pytest.mark.usefixtures("traffic")
def test_another_institutions_message_is_not_found(client: TestClient, login: Login) -> None:
    mine = client.get(
        "/api/v1/integration/messages", headers=login(Role.INTEGRATION, institution=HOSP_B)
    ).json()
    other = login(Role.INTEGRATION, institution=HOSP_A)
    assert (
        client.get(f"/api/v1/integration/messages/{mine[0]['id']}", headers=other).status_code
        == 404
    )


@pytest.mark.usefixtures("traffic")
def test_unmapped_codes_are_listed_with_counts(client: TestClient, login: Login) -> None:
    body = client.get(
        "/api/v1/integration/unmapped", headers=login(Role.INTEGRATION, institution=HOSP_B)
    ).json()
    assert body["institution"] == HOSP_B
    assert [(u["local_code"], u["local_name"], u["results"]) for u in body["codes"]] == [
        ("B-CBC", "血常规五分类", 1)
    ]


@pytest.mark.usefixtures("traffic")
def test_connection_status_has_error_rates_over_24_hours_and_7_days(
    client: TestClient, login: Login
) -> None:
    (status,) = client.get(
        "/api/v1/integration/status", headers=login(Role.INTEGRATION, institution=HOSP_A)
    ).json()
    assert (status["last_24h"]["messages"], status["last_24h"]["rejected"]) == (2, 1)
    assert (status["last_7d"]["messages"], status["last_7d"]["rejected"]) == (3, 2)
    assert status["last_24h"]["error_rate"] == pytest.approx(0.5)
    assert (status["state"], status["state_label"]) == ("failing", "错误率偏高")


@pytest.mark.usefixtures("traffic")
def test_institution_account_cannot_ask_for_another_institution(
    client: TestClient, login: Login
) -> None:
    r = client.get(
        f"/api/v1/integration/unmapped?institution={HOSP_B}",
        headers=login(Role.INTEGRATION, institution=HOSP_A),
    )
    assert r.status_code == 403


def test_clinician_has_no_access(client: TestClient, login: Login) -> None:
    r = client.get(
        "/api/v1/integration/messages", headers=login(Role.CLINICIAN, institution=HOSP_A)
    )
    assert r.status_code == 403


def test_institution_that_never_sent_is_shown_as_never_connected(
    client: TestClient, login: Login
) -> None:
    (status,) = client.get(
        "/api/v1/integration/status", headers=login(Role.INTEGRATION, institution=HOSP_B)
    ).json()
    assert (status["state"], status["last_message_at"]) == ("never", None)


# ---------------------------------------------------------------- pages
@pytest.mark.usefixtures("traffic")
def test_rejected_messages_page_lists_reasons(client: TestClient, login: Login) -> None:
    r = client.get(
        "/integration/messages?status=rejected",
        headers=login(Role.INTEGRATION, institution=HOSP_A),
    )
    assert r.status_code == 200
    assert "A-BAD-2" in r.text
    assert "OBR[1]-3" in r.text
    assert "LIS202606140001" not in r.text


@pytest.mark.usefixtures("traffic")
def test_message_page_shows_raw_text_and_response(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_B)
    (row,) = client.get("/api/v1/integration/messages", headers=headers).json()
    r = client.get(f"/integration/messages/{row['id']}", headers=headers)
    assert r.status_code == 200
    assert "PID|1||0098231^^^^MR~310104199001011233^^^身份证||张三" in r.text
    assert "平台应答" in r.text
    # The sending institution by its name, the code beside it (was the code alone).
    name = world.catalog.get().institutions[HOSP_B].name
    assert f"{name}（{HOSP_B}）" in r.text
    listed = client.get("/integration/messages", headers=headers).text
    assert f"{name}（{HOSP_B}）" in listed


@pytest.mark.usefixtures("traffic")
def test_unmapped_page_shows_codes_and_connection(client: TestClient, login: Login) -> None:
    r = client.get("/integration/unmapped", headers=login(Role.INTEGRATION, institution=HOSP_B))
    assert r.status_code == 200
    assert "B-CBC" in r.text
    assert "已连接" in r.text


@pytest.mark.usefixtures("traffic")
def test_operator_unmapped_page_lists_institutions_to_choose(
    client: TestClient, login: Login
) -> None:
    r = client.get("/integration/unmapped", headers=login(Role.OPERATOR))
    assert r.status_code == 200
    assert f"/integration/unmapped?institution={HOSP_B}" in r.text


def test_page_without_login_redirects_to_the_login_form(client: TestClient) -> None:
    r = client.get("/integration/messages", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")
