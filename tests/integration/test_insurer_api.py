"""Insurer verification over HTTP: JSON claim lines, CSV and Excel batch files, and the
downloadable report. Reminders and decisions are written as the point-of-care area
records them (tables ``reminder`` and ``decision``)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import Workbook, load_workbook
from sqlalchemy import insert

from huren.adapters.db.tables import decision, reminder
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.actors import Login
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID, lab_panel, patient, store
from tests.fixtures.world import HOSP_B, LFT, SH1
from tests.integration.sharing_helpers import audit_rows

ORDERED = datetime(2026, 6, 15, 0, 55, tzinfo=UTC)  # 08:55 in Beijing, the service day


@pytest.fixture
def insurer(login: Login) -> dict[str, str]:
    return login(Role.INSURER, jurisdiction="HE")


@pytest.fixture
def prior(world: Container) -> int:
    """张三's liver panel from hospital A two days before: marked 河北, within 7 days."""
    return store(world, lab_panel(report_no="JY-A-0613")).results[0].result_id


def _patient_id(world: Container, prior: int) -> int:
    return world.results.get_result(prior).patient_id


def _reminder_and_decision(
    world: Container,
    patient_id: int,
    action: str | None,
    reason: str = "",
    text: str = "",
    item: str = LFT,
) -> None:
    with world.engine.begin() as c:
        key = c.execute(
            insert(reminder).values(
                at=ORDERED,
                channel="cds-hooks",
                institution_code=HOSP_B,
                clinician="dr.liu",
                patient_id=patient_id,
                item_code=item,
                candidates=1,
                recognizable=1,
            )
        ).inserted_primary_key
        assert key is not None
        rid = key[0]
        if action:
            c.execute(
                insert(decision).values(
                    reminder_id=rid,
                    at=ORDERED.replace(minute=58),
                    institution_code=HOSP_B,
                    clinician="dr.liu",
                    patient_id=patient_id,
                    item_code=item,
                    action=action,
                    reason_code=reason,
                    reason_text=text,
                )
            )


def line(**kw: Any) -> dict[str, Any]:
    base = {
        "claim_no": "JS2026061500001",
        "line_no": "1",
        "id_kind": "national_id",
        "id_value": ZHANG_SAN_ID,
        "institution": HOSP_B,
        "item_code": LFT,
        "service_date": "2026-06-15",
    }
    return base | kw


def verify(
    client: TestClient, headers: dict[str, str], *lines: dict[str, Any]
) -> list[dict[str, Any]]:
    r = client.post("/api/v1/insurer/verify", json={"lines": list(lines)}, headers=headers)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["lines"]
    return out


def test_repeat_without_any_recorded_decision_is_flagged(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    [v] = verify(client, insurer, line())
    assert v["recognizable_prior"]["result_id"] == prior
    assert v["recognizable_prior"]["mark"] is not None
    assert v["reminder_shown"] is False
    assert v["decision"] is None
    assert v["flags"] == ["repeat_without_reason"]


def test_a_decline_with_a_negative_list_reason_is_not_flagged_and_the_reason_is_shown(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    _reminder_and_decision(world, _patient_id(world, prior), "declined", "HB-1", "转氨酶持续升高")
    [v] = verify(client, insurer, line())
    assert v["reminder_shown"] is True
    assert v["decision"]["action"] == "declined"
    assert "病情变化" in v["decision"]["reason"]
    assert v["decision"]["reason_text"] == "转氨酶持续升高"
    assert v["flags"] == []


def test_billing_an_item_the_clinician_recognized_is_flagged(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    _reminder_and_decision(world, _patient_id(world, prior), "accepted")
    [v] = verify(client, insurer, line())
    assert v["flags"] == ["recognized_but_billed"]


def test_no_prior_result_means_nothing_to_flag(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    [v] = verify(client, insurer, line(id_value=LI_SI_ID))
    assert v["recognizable_prior"] is None
    assert v["flags"] == []


def test_a_local_charge_code_is_mapped_to_the_unified_item(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    [v] = verify(client, insurer, line(item_code="", local_code="B-LFT"))
    assert v["item_code"] == LFT
    assert v["recognizable_prior"]["result_id"] == prior


def test_the_same_report_on_two_lines_is_billed_twice(
    client: TestClient, world: Container, insurer: dict[str, str]
) -> None:
    demo = patient(LI_SI_ID, "李四")
    store(
        world, lab_panel(HOSP_B, local_code="B-LFT", report_no="JY-B-77", patient_demographics=demo)
    )
    a, b = verify(
        client,
        insurer,
        line(id_value=LI_SI_ID, report_no="JY-B-77"),
        line(id_value=LI_SI_ID, claim_no="JS2026061500002", report_no="JY-B-77"),
    )
    assert "same_result_billed_twice" in a["flags"]
    assert "same_result_billed_twice" in b["flags"]


def test_an_item_bundled_into_a_package_and_billed_again_is_billed_twice(
    client: TestClient, insurer: dict[str, str]
) -> None:
    package, single = verify(
        client,
        insurer,
        line(id_value=LI_SI_ID, item_code="JY-SH-010", bundled_items=[LFT]),
        line(id_value=LI_SI_ID, line_no="2"),
    )
    assert package["flags"] == ["same_result_billed_twice"]
    assert single["flags"] == ["same_result_billed_twice"]


def test_a_package_containing_a_recognized_item_is_flagged(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    _reminder_and_decision(world, _patient_id(world, prior), "accepted")
    [v] = verify(client, insurer, line(item_code="JY-SH-010", bundled_items=[LFT]))
    assert "bundled_recognized_item" in v["flags"]


def test_an_institution_outside_the_insurers_jurisdiction_refuses_the_whole_request(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    before = audit_rows(world)
    r = client.post(
        "/api/v1/insurer/verify",
        json={"lines": [line(), line(institution=SH1, line_no="2")]},
        headers=insurer,
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "lines[1].institution"
    assert audit_rows(world) == before


def test_every_prior_consulted_is_audited_for_the_insurer(
    client: TestClient, world: Container, insurer: dict[str, str], prior: int
) -> None:
    verify(client, insurer, line())
    assert audit_rows(world, result_id=prior, action="verify", role="insurer") == 1


def test_other_roles_cannot_verify_claims(client: TestClient, login: Login) -> None:
    r = client.post(
        "/api/v1/insurer/verify",
        json={"lines": [line()]},
        headers=login(Role.CLINICIAN, institution=HOSP_B),
    )
    assert r.status_code == 403


# ---------------------------------------------------------------- batch files
HEADER = [
    "结算单号",
    "明细序号",
    "证件类型",
    "证件号码",
    "机构编码",
    "互认项目编码",
    "院内项目编码",
    "服务日期",
    "报告单编号",
    "打包项目",
]
ROWS = [
    ["JS001", "1", "身份证", ZHANG_SAN_ID, HOSP_B, LFT, "", "2026-06-15", "", ""],
    ["JS002", "1", "身份证", LI_SI_ID, HOSP_B, "", "B-LFT", "2026-06-15", "", ""],
]


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER, *rows])
    return buf.getvalue().encode("utf-8-sig")


def _xlsx(rows: list[list[Any]]) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.append(HEADER)
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def test_a_csv_batch_is_verified_line_by_line(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    r = client.post(
        "/api/v1/insurer/verify/batch",
        files={"file": ("claims.csv", _csv(ROWS), "text/csv")},
        headers=insurer,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["total"], body["flagged"]) == (2, 1)
    assert body["lines"][0]["flags"] == ["repeat_without_reason"]


def test_an_excel_batch_with_real_dates_is_verified(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    rows: list[list[Any]] = [[*r[:7], datetime(2026, 6, 15), *r[8:]] for r in ROWS]
    r = client.post(
        "/api/v1/insurer/verify/batch",
        files={
            "file": (
                "claims.xlsx",
                _xlsx(rows),
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            )
        },
        headers=insurer,
    )
    assert r.status_code == 200, r.text
    assert [v["flags"] for v in r.json()["lines"]] == [["repeat_without_reason"], []]


def test_a_bad_row_rejects_the_file_naming_row_and_column(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    bad = [*ROWS, ["JS003", "1", "身份证", ZHANG_SAN_ID, HOSP_B, LFT, "", "15/06/2026x", "", ""]]
    r = client.post(
        "/api/v1/insurer/verify/batch",
        files={"file": ("claims.csv", _csv(bad), "text/csv")},
        headers=insurer,
    )
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {
            "field": "第 4 行: service_date",
            "message": "服务日期无效: 15/06/2026x（格式 YYYY-MM-DD）",
        }
    ]


def test_the_report_downloads_as_csv(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    r = client.post(
        "/api/v1/insurer/verify/batch?format=csv",
        files={"file": ("claims.csv", _csv(ROWS), "text/csv")},
        headers=insurer,
    )
    assert r.status_code == 200
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][0] == "结算单号"
    assert len(rows) == 3
    assert "重复检查未记录" in rows[1][12]
    assert ZHANG_SAN_ID not in r.content.decode("utf-8-sig")  # identifiers masked


def test_the_report_downloads_as_xlsx(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    r = client.post("/api/v1/insurer/verify?format=xlsx", json={"lines": [line()]}, headers=insurer)
    assert r.status_code == 200
    ws = load_workbook(io.BytesIO(r.content)).active
    assert ws is not None
    values = [[c.value for c in row] for row in ws.iter_rows()]
    assert values[0][0] == "结算单号"
    assert values[1][6] == "肝功能"


def test_a_ct_whose_images_never_arrived_was_not_a_recognizable_prior(
    world: Container, client: TestClient, insurer: dict[str, str]
) -> None:
    # 沪卫医〔2024〕135号 四(二)2: the clinician was not offered it, so a repeat is no re-billing.
    from tests.fixtures.imaging import ct_report, store_complete_ct_study
    from tests.fixtures.world import CT_CHEST

    report = ct_report()
    store(world, report)
    [without_images] = verify(client, insurer, line(item_code=CT_CHEST))
    assert without_images["recognizable_prior"] is None
    assert "repeat_without_reason" not in without_images["flags"]

    store_complete_ct_study(world, report)
    [with_images] = verify(client, insurer, line(item_code=CT_CHEST))
    assert with_images["recognizable_prior"] is not None
    assert with_images["flags"] == ["repeat_without_reason"]


def test_a_result_billed_on_many_lines_names_five_and_counts_the_rest(
    client: TestClient, insurer: dict[str, str], prior: int
) -> None:
    verdicts = verify(client, insurer, *(line(line_no=str(n)) for n in range(1, 9)))
    assert all("same_result_billed_twice" in v["flags"] for v in verdicts)
    first = verdicts[0]["summary"]
    assert "与 JS2026061500001#2、JS2026061500001#3、JS2026061500001#4、" in first
    assert "JS2026061500001#6 等 7 条明细 为同一结果" in first
    assert "#7" not in first
