"""The insurer's verification page (/insurer): upload a claims file or enter one claim
line, read the verdicts as a table, download the same report the API gives."""

from __future__ import annotations

import base64
import csv
import io
import re
from typing import cast

import httpx
import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.actors import Login
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_B, LFT, SH1
from tests.integration.sharing_helpers import audit_rows
from tests.integration.test_insurer_api import ROWS, _csv


@pytest.fixture
def insurer(login: Login) -> dict[str, str]:
    return login(Role.INSURER, jurisdiction="HE")


@pytest.fixture
def prior(world: Container) -> int:
    """张三's liver panel from hospital A two days before the service date."""
    return store(world, lab_panel(report_no="JY-A-0613")).results[0].result_id


def upload(
    client: TestClient,
    headers: dict[str, str],
    data: bytes,
    name: str = "claims.csv",
    media_type: str = "text/csv",
) -> httpx.Response:
    # starlette types TestClient against httpx2 (not installed), so mypy sees post() as Any
    return cast(
        httpx.Response,
        client.post("/insurer/file", files={"file": (name, data, media_type)}, headers=headers),
    )


def data_url(html: str, element_id: str) -> bytes:
    m = re.search(rf'id="{element_id}" href="data:[^;]+(?:;charset=utf-8)?;base64,([^"]+)"', html)
    assert m, f"no {element_id} link"
    return base64.b64decode(m.group(1))


def verdict_rows(html: str) -> list[tuple[str, str]]:
    """(``flagged`` or "", claim#line) of each row of the verdict table."""
    found: list[tuple[str, str]] = re.findall(r'<tr class="(flagged)?" data-claim="([^"]+)"', html)
    return found


def test_the_page_is_the_insurers_and_the_nav_shows_it_to_insurers_only(
    client: TestClient, insurer: dict[str, str], login: Login
) -> None:
    page = client.get("/insurer", headers=insurer)
    assert page.status_code == 200
    assert 'id="upload-form"' in page.text
    assert 'id="line-form"' in page.text
    assert '<a href="/insurer">医保核查</a>' in page.text

    clinician = login(Role.CLINICIAN, institution=HOSP_B)
    refused = client.get("/insurer", headers=clinician)
    assert refused.status_code == 403
    assert 'id="not-allowed"' in refused.text
    assert 'id="upload-form"' not in refused.text
    assert '<a href="/insurer">' not in client.get("/retrieval", headers=clinician).text

    anonymous = client.get("/insurer", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/login")


def test_an_uploaded_csv_shows_each_line_with_the_repeat_flagged_and_ids_masked(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    r = upload(client, insurer, _csv(ROWS))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert verdict_rows(r.text) == [("flagged", "JS001#1"), ("", "JS002#1")]
    assert '共 <strong>2</strong> 条明细，疑点 <strong class="bad">1</strong> 条' in r.text
    table = r.text.split('id="verdicts"', 1)[1]
    assert "存在可互认结果，重复检查未记录不予互认理由" in table
    assert "开单时可互认结果" in table
    assert "医师决定" in table
    assert ZHANG_SAN_ID not in r.text
    assert LI_SI_ID not in r.text


def test_the_downloads_are_the_reports_the_api_gives_for_the_same_file(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    page = upload(client, insurer, _csv(ROWS)).text
    api = client.post(
        "/api/v1/insurer/verify/batch?format=csv",
        files={"file": ("claims.csv", _csv(ROWS), "text/csv")},
        headers=insurer,
    )
    assert data_url(page, "download-csv") == api.content
    rows = list(csv.reader(io.StringIO(data_url(page, "download-csv").decode("utf-8-sig"))))
    assert [r[0] for r in rows] == ["结算单号", "JS001", "JS002"]
    ws = load_workbook(io.BytesIO(data_url(page, "download-xlsx"))).active
    assert ws is not None
    values = [[c.value for c in row] for row in ws.iter_rows()]
    assert values[0][0] == "结算单号"
    assert values[1][0] == "JS001"
    assert "重复检查未记录" in str(values[1][12])


def test_a_bad_row_rejects_the_file_naming_row_and_column_and_verifies_nothing(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    before = audit_rows(world)
    bad = [*ROWS, ["JS003", "1", "身份证", ZHANG_SAN_ID, HOSP_B, LFT, "", "2026-13-40", "", ""]]
    r = upload(client, insurer, _csv(bad))
    assert r.status_code == 422
    assert "<code>第 4 行: service_date</code>：服务日期无效: 2026-13-40" in r.text
    assert 'id="report"' not in r.text
    assert audit_rows(world) == before


def test_a_row_the_service_refuses_is_named_by_its_row_in_the_file(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    """The file's fourth line is row 4 (the header is row 1), a blank row counted too."""
    before = audit_rows(world)
    rows = [ROWS[0], [""] * 10, ["JS009", *ROWS[0][1:4], SH1, *ROWS[0][5:]]]
    r = upload(client, insurer, _csv(rows))
    assert r.status_code == 422
    assert f"<code>第 4 行: institution</code>：机构 {SH1} 不在本医保辖区内" in r.text
    api = client.post(
        "/api/v1/insurer/verify/batch",
        files={"file": ("claims.csv", _csv(rows), "text/csv")},
        headers=insurer,
    )
    assert api.json()["errors"] == [
        {"field": "第 4 行: institution", "message": f"机构 {SH1} 不在本医保辖区内"}
    ]
    assert audit_rows(world) == before


def test_an_unsupported_file_is_refused_with_a_clear_message(
    client: TestClient, insurer: dict[str, str]
) -> None:
    r = upload(client, insurer, b"%PDF-1.4", name="claims.pdf", media_type="application/pdf")
    assert r.status_code == 422
    assert "不支持的文件类型（请上传 .csv 或 .xlsx）" in r.text


def test_one_claim_line_entered_in_the_form_is_verified(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    r = client.post(
        "/insurer/line",
        data={
            "claim_no": "JS2026061500009",
            "line_no": "3",
            "id_kind": "national_id",
            "id_value": ZHANG_SAN_ID,
            "institution": HOSP_B,
            "item_code": LFT,
            "service_date": "2026-06-15",
        },
        headers=insurer,
    )
    assert r.status_code == 200, r.text
    assert verdict_rows(r.text) == [("flagged", "JS2026061500009#3")]
    assert ZHANG_SAN_ID not in r.text  # not echoed back into the form either
    assert audit_rows(world, result_id=prior, action="verify", role="insurer") == 1


def test_a_form_line_with_problems_names_the_fields(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    before = audit_rows(world)
    r = client.post(
        "/insurer/line",
        data={"claim_no": "JS1", "id_value": "123", "institution": HOSP_B, "item_code": LFT},
        headers=insurer,
    )
    assert r.status_code == 422
    assert "<code>service_date</code>：服务日期无效" in r.text
    r = client.post(
        "/insurer/line",
        data={
            "claim_no": "JS1",
            "id_value": "110101199003071230",
            "institution": HOSP_B,
            "item_code": LFT,
            "service_date": "2026-06-15",
        },
        headers=insurer,
    )
    assert r.status_code == 422
    assert "<code>id_value</code>" in r.text  # the ID's check digit is wrong
    assert audit_rows(world) == before


def test_other_roles_cannot_post_claims_through_the_page(client: TestClient, login: Login) -> None:
    clinician = login(Role.CLINICIAN, institution=HOSP_B)
    r = upload(client, clinician, _csv(ROWS))
    assert r.status_code == 403
    assert 'id="report"' not in r.text


def test_the_template_file_has_the_columns_the_upload_accepts(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    template = client.get("/insurer/template.csv", headers=insurer).content
    header = template.decode("utf-8-sig").strip()
    row = ",".join(["JS001", "1", "身份证", ZHANG_SAN_ID, HOSP_B, LFT, "", "2026-06-15", "", ""])
    r = upload(client, insurer, f"{header}\r\n{row}\r\n".encode())
    assert verdict_rows(r.text) == [("flagged", "JS001#1")]
