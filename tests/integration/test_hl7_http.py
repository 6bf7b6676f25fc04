"""POST /api/v1/hl7v2: the same ORU^R01 handling over HTTP, ACK returned as ER7."""

from __future__ import annotations

import hl7
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db.tables import inbound_message, result
from huren.api.routes import hl7v2 as hl7v2_routes
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.actors import Login
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_field,
)
from tests.fixtures.world import HOSP_A, HOSP_B

ER7 = "x-application/hl7-v2+er7"


def msa(body: bytes, encoding: str = "utf-8") -> tuple[str, str, str]:
    seg = hl7.parse(body.decode(encoding)).segment("MSA")
    return str(seg[1]), str(seg[2]), str(seg[3])


def stored(world: Container) -> int:
    with world.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def test_interface_account_posts_oru_and_gets_aa_as_er7(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    r = client.post("/api/v1/hl7v2", content=sample_bytes(LAB_LFT_V251), headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == f"{ER7}; charset=utf-8"
    assert msa(r.content)[:2] == ("AA", "LIS202606140001")
    assert stored(world) == 1
    with world.engine.connect() as conn:
        assert conn.execute(select(inbound_message.c.channel)).scalar_one() == "hl7v2-http"


def test_gb18030_body_is_answered_in_gb18030(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_B) | {
        "Content-Type": "text/plain; charset=gb18030"
    }
    r = client.post("/api/v1/hl7v2", content=sample_bytes(CBC_V23_GB18030), headers=headers)
    assert r.headers["content-type"] == f"{ER7}; charset=GB18030"
    assert msa(r.content, "gb18030")[0] == "AA"


def test_content_type_charset_decodes_a_message_without_msh18(
    client: TestClient, login: Login
) -> None:
    text = with_field(sample_text(CBC_V23_GB18030), "MSH", 18, "")
    headers = login(Role.INTEGRATION, institution=HOSP_B) | {
        "Content-Type": "text/plain; charset=GBK"
    }
    r = client.post("/api/v1/hl7v2", content=text.encode("gb18030"), headers=headers)
    assert msa(r.content, "gb18030")[0] == "AA"


def test_bad_message_is_ae_with_the_field_and_nothing_stored(
    client: TestClient, login: Login, world: Container
) -> None:
    body = with_field(sample_text(LAB_LFT_V251), "OBX", 5, "", occurrence=2).encode()
    headers = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    r = client.post("/api/v1/hl7v2", content=body, headers=headers)
    assert r.status_code == 200
    assert r.headers["x-hl7-ack-code"] == "AE"
    assert "OBX[2]-5" in msa(r.content)[2]
    assert stored(world) == 0


def test_interface_account_cannot_send_another_institutions_results(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_B) | {"Content-Type": ER7}
    r = client.post("/api/v1/hl7v2", content=sample_bytes(LAB_LFT_V251), headers=headers)
    assert msa(r.content)[0] == "AE"
    assert str(hl7.parse(r.content.decode()).segment("ERR")[2]) == "MSH^1^4^1"
    assert stored(world) == 0


def test_without_credentials_is_401(client: TestClient) -> None:
    r = client.post("/api/v1/hl7v2", content=sample_bytes(LAB_LFT_V251))
    assert r.status_code == 401


def test_clinician_may_not_post_results(client: TestClient, login: Login) -> None:
    headers = login(Role.CLINICIAN, institution=HOSP_A) | {"Content-Type": ER7}
    r = client.post("/api/v1/hl7v2", content=sample_bytes(LAB_LFT_V251), headers=headers)
    assert r.status_code == 403


def test_json_body_is_415(client: TestClient, login: Login) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    r = client.post("/api/v1/hl7v2", json={"message": "MSH|..."}, headers=headers)
    assert r.status_code == 415
    assert r.headers["content-type"].startswith("application/problem+json")


def test_a_message_over_the_size_limit_is_refused_413_and_nothing_stored(
    client: TestClient, login: Login, world: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit the MLLP listener applies (about 41 MB), lowered so the test sends little;
    # both a declared Content-Length and a chunked body without one are held to it.
    monkeypatch.setattr(hl7v2_routes, "MAX_MESSAGE_BYTES", 4096)
    headers = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    big = sample_bytes(LAB_LFT_V251) + b"NTE|1||" + b"x" * 5000 + b"\r"
    declared = client.post("/api/v1/hl7v2", content=big, headers=headers)
    chunked = client.post("/api/v1/hl7v2", content=iter([big[:3000], big[3000:]]), headers=headers)
    for r in (declared, chunked):
        assert r.status_code == 413, r.text
        assert r.json()["errors"][0]["field"] == "body"
        assert "超过单条消息上限 4096 字节" in r.json()["errors"][0]["message"]
    assert stored(world) == 0
    ok = client.post("/api/v1/hl7v2", content=sample_bytes(LAB_LFT_V251), headers=headers)
    assert msa(ok.content)[0] == "AA"
