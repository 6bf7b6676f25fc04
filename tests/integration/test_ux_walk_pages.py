"""What a walk through the demo as its users turned up, kept fixed (over HTTP): raw codes
and enum values where a label belongs, times in UTC instead of China time, a reason
written twice, a refused decision that wiped its form, bare error pages, and a home page
that led nowhere."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from huren.adapters.clock import FixedClock
from huren.adapters.db.tables import decision
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.identity import mask_id
from huren.domain.monitoring import Metric
from tests.fixtures import governance as gv
from tests.fixtures.actors import Login
from tests.fixtures.imaging import ct_report, store_complete_ct_study
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B, LFT


@pytest.fixture
def doctor(login: Login) -> dict[str, str]:
    """A clinician of hospital B's 呼吸内科, where the walk orders."""
    return login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")


@pytest.fixture
def priors(world: Container) -> dict[str, int]:
    """张三's chest CT (with its complete study) and liver panel at hospital A."""
    ct = ct_report(HOSP_A)
    ct_id = store(world, ct).results[0].result_id
    store_complete_ct_study(world, ct)
    return {"ct": ct_id, "lft": store(world, lab_panel(HOSP_A)).results[0].result_id}


def _workbench(client: TestClient, headers: dict[str, str]) -> str:
    r = client.get(
        "/workbench",
        params={
            "patient": f"national_id:{ZHANG_SAN_ID}",
            "items": "B-CT-CHEST,B-LFT",
            "institution": HOSP_B,
        },
        headers=headers,
    )
    assert r.status_code == 200, r.text
    text: str = r.text
    return text


def test_a_refused_decision_goes_beside_the_forms_not_over_them(
    client: TestClient, world: Container, doctor: dict[str, str], priors: dict[str, int]
) -> None:
    lft = priors["lft"]
    assert f'id="decision-error-{lft}"' in _workbench(client, doctor)
    form = {"item": LFT, "action": "declined", "result_id": str(lft), "reason_code": "HB-6"}
    refused = client.post("/workbench/decisions", data=form, headers=doctor)
    assert refused.status_code == 200  # htmx swaps only a 2xx answer
    assert refused.headers["hx-retarget"] == f"#decision-error-{lft}"
    assert refused.headers["hx-reswap"] == "innerHTML"
    assert "须填写具体原因" in refused.text
    with world.engine.connect() as conn:
        assert conn.execute(select(decision)).all() == []

    done = client.post(
        "/workbench/decisions", data=form | {"free_text": "病情变化"}, headers=doctor
    )
    assert "hx-retarget" not in done.headers
    assert "已记录：重新检查" in done.text
    # The earlier message is cleared out of band.
    assert re.search(rf'id="decision-error-{lft}"[^>]*hx-swap-oob="true"', done.text)


def test_the_full_report_names_its_status_and_the_retest_interval_cites_its_source(
    client: TestClient, doctor: dict[str, str], priors: dict[str, int]
) -> None:
    report = client.get(f"/workbench/results/{priors['lft']}", headers=doctor).text
    assert "最终报告（第 1 版）" in report
    assert "final（" not in report
    page = _workbench(client, doctor)
    assert "<cite" in page
    # The English guideline's own wording ("… liver function tests 1 天") only on hover.
    assert "liver function tests 1 天；" not in page
    assert "（报告单复印入病案）" in page


def test_the_viewer_names_the_institution_and_gives_china_time(
    client: TestClient, doctor: dict[str, str], priors: dict[str, int]
) -> None:
    page = client.get(f"/imaging/results/{priors['ct']}", headers=doctor).text
    assert "机构 河北医科大学第二医院" in page
    assert f"机构 {HOSP_A}" not in page
    # Issued 2026-06-13 09:30 UTC (tests.fixtures.results): 17:30 in China.
    assert "签发 2026-06-13 17:30" in page


def _patient(world: Container, login: Login, result_id: int) -> dict[str, str]:
    patient_id = world.results.get_result(result_id).patient_id
    return login(Role.PATIENT, patient_id=patient_id)


def test_the_patient_reads_the_decline_reason_once_and_the_reads_in_words(
    client: TestClient,
    world: Container,
    login: Login,
    doctor: dict[str, str],
    priors: dict[str, int],
) -> None:
    _workbench(client, doctor)  # a recognition check: read by the clinician
    form = {"item": LFT, "action": "declined", "result_id": str(priors["lft"])}
    client.post("/workbench/decisions", data=form | {"reason_code": "HB-3"}, headers=doctor)
    client.get(f"/imaging/results/{priors['ct']}", headers=doctor)
    patient = _patient(world, login, priors["lft"])

    home = client.get("/patient", headers=patient).text
    reason = "检查检验项目对于疾病诊疗意义重大的（如手术、输血等重大医疗措施前）"
    assert home.count(reason) == 1
    assert client.get(f"/patient/results/{priors['lft']}", headers=patient).text.count(reason) == 1

    audit = client.get("/patient/audit", headers=patient).text
    for raw in ("recognition_check", "recognition_declined", "imaging_view"):
        assert raw not in audit
    assert "开具医嘱时查看既往结果（互认提醒）" in audit
    assert "不予互认（重新检查）" in audit
    assert "查看影像" in audit


def test_report_pages_show_an_absent_performer_as_nothing(
    client: TestClient, world: Container, login: Login
) -> None:
    result_id = store(world, dataclasses.replace(lab_panel(HOSP_A), performer="")).results[0]
    patient = _patient(world, login, result_id.result_id)
    page = client.get(f"/patient/results/{result_id.result_id}", headers=patient).text
    assert "/ 李审核" not in page
    assert "审核 / 签发</dt><dd>李审核" in page


def test_the_printed_report_is_stamped_in_china_time(
    client: TestClient, world: Container, login: Login, priors: dict[str, int]
) -> None:
    patient = _patient(world, login, priors["lft"])
    text = client.get(f"/patient/results/{priors['lft']}/download", headers=patient).text
    # The test clock stands at 2026-06-15 09:30 UTC.
    assert "下载自 HuRen 互认平台 · 2026-06-15 17:30（北京时间）" in text
    assert "UTC" not in text


def test_home_page_leads_each_role_to_its_work_and_names_its_institution(
    client: TestClient, login: Login
) -> None:
    doctor = client.get("/", headers=login(Role.CLINICIAN, institution=HOSP_B)).text
    assert "接诊医师 · 保定市第一中心医院" in doctor
    assert f"· {HOSP_B}）" not in doctor
    assert "互认工作台" in doctor
    assert 'class="card area" href="/retrieval"' in doctor
    regulator = client.get("/", headers=login(Role.REGULATOR, jurisdiction="HE")).text
    assert "卫生健康行政部门 · 河北省" in regulator
    assert 'class="card area" href="/dashboard"' in regulator
    admin = client.get("/", headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A)).text
    assert 'class="card area" href="/integration/messages"' in admin


def test_a_patient_signed_in_with_a_password_lands_on_their_results(
    client: TestClient, world: Container, login: Login, priors: dict[str, int]
) -> None:
    r = client.get("/", headers=_patient(world, login, priors["lft"]), follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/patient"


def test_pages_ask_for_no_favicon(client: TestClient) -> None:
    assert '<link rel="icon" href="data:,">' in client.get("/login").text


def test_dashboard_errors_are_whole_pages_and_drill_errors_show_in_the_panel(
    client: TestClient, login: Login
) -> None:
    regulator = login(Role.REGULATOR, jurisdiction="HE")
    r = client.get("/dashboard?month_from=2026-13", headers=regulator)
    assert r.status_code == 422
    assert 'class="topbar"' in r.text  # the site's page, with its way back
    assert "起始月份格式应为 YYYY-MM" in r.text
    drill = client.get(
        "/dashboard/drill?level=city&month_from=2026-13",
        headers=regulator | {"HX-Request": "true"},
    )
    assert drill.status_code == 200  # swapped into the panel by htmx
    assert "无法显示：起始月份格式应为 YYYY-MM" in drill.text


def _decision(world: Container, clinician: str, result_id: int) -> None:
    """A reminder for the chest CT at hospital B's 呼吸内科 and its acceptance by
    ``clinician``, as a CDS client's ``userId`` or the workbench's username records it."""
    gv.add_accepted_reminder(
        world.engine,
        at=world.clock.now() - timedelta(days=1),  # settled: the aggregates count it
        institution=HOSP_B,
        department="呼吸内科",
        clinician=clinician,
        item=CT_CHEST,
        patient_id=world.results.get_result(result_id).patient_id,
        result_id=result_id,
        local_code="B-CT-CHEST",
    )


def test_drill_down_names_clinicians_not_their_ids(
    client: TestClient,
    world: Container,
    login: Login,
    doctor: dict[str, str],
    priors: dict[str, int],
) -> None:
    me = client.get("/api/v1/auth/me", headers=doctor).json()
    _decision(world, me["username"], priors["ct"])
    _decision(world, "Practitioner/HXK001", priors["ct"])
    world.monitoring.refresh()
    html = client.get(
        "/dashboard/drill",
        params={
            "level": "clinician",
            "institution": HOSP_B,
            "department": "呼吸内科",
            "month_from": "2026-06",
            "month_to": "2026-06",
        },
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    ).text
    assert f">{me['display_name']}<" in html  # the workbench records the username
    assert f">{me['username']}<" not in html
    assert ">HXK001<" in html
    assert "Practitioner/" not in html
    # Among its peers (five clinicians with accepted reminders), named the same way.
    for staff in ("HXK002", "HXK003", "HXK004"):
        _decision(world, f"Practitioner/{staff}", priors["ct"])
    world.monitoring.refresh()
    found = world.monitoring.outliers(
        gv.REGULATOR_HE,
        world.monitoring.period("2026-06", "2026-06"),
        Metric.ACCEPTED,
        institution=HOSP_B,
        min_volume=1,
        only_flagged=False,
    )
    assert sorted(f.label for f in found) == sorted(
        [me["display_name"], "HXK001", "HXK002", "HXK003", "HXK004"]
    )


def test_expiring_qualifications_say_how_long_is_left_in_words(
    client: TestClient, world: Container, login: Login
) -> None:
    assert isinstance(world.clock, FixedClock)
    world.clock.at = datetime(2026, 12, 31, 2, 0, tzinfo=UTC)  # 10:00 on the last valid day
    html = client.get("/dashboard", headers=login(Role.REGULATOR, jurisdiction="HE")).text
    assert "今天是最后一天" in html
    assert "（0 天）" not in html


def test_monthly_report_gives_target_values_cities_and_counts_idle_institutions(
    client: TestClient, world: Container, login: Login
) -> None:
    html = client.get(
        "/dashboard/report?month=2026-06", headers=login(Role.REGULATOR, jurisdiction="HE")
    ).text
    regions = html.split("二、分地区情况", 1)[1].split("三、", 1)[0]
    assert "保定市" in regions  # the province's cities, not the province alone
    assert re.search(r"占比（\d+/\d+）：\d+\.\d%", html)
    assert "家机构本月无互认提醒" in html


def test_an_order_opened_again_shows_its_decision_and_takes_no_second_one(
    client: TestClient, world: Container, login: Login, priors: dict[str, int]
) -> None:
    """Reopened, the workbench offered the buttons again: the clinician could decide a
    second time, the patient saw two entries, and 互认项次 counted twice."""
    doctor = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")
    lft, ct = priors["lft"], priors["ct"]
    form = {"item": LFT, "action": "accepted", "result_id": str(lft)}
    assert "已记录：接受互认" in client.post("/workbench/decisions", data=form, headers=doctor).text

    page = _workbench(client, doctor)
    assert 'class="wb-actions wb-earlier"' in page
    assert "已记录：接受互认" in page
    assert "同一医嘱的同一既往结果只记录一次" in page
    assert "医学检查检验互认项目" in page  # the EMR text, to copy again
    assert f'name="result_id" value="{lft}"' not in page  # no second set of buttons
    assert f'name="result_id" value="{ct}"' in page  # the CT is still to decide

    again = client.post("/workbench/decisions", data=form, headers=doctor)
    assert again.headers["hx-retarget"] == f"#decision-error-{lft}"
    assert "记录为“接受互认”" in again.text
    with world.engine.connect() as conn:
        assert len(conn.execute(select(decision)).all()) == 1


def test_the_workbench_names_whose_priors_it_shows_masked(
    client: TestClient, doctor: dict[str, str], priors: dict[str, int]
) -> None:
    """Opened outside the HIS frame (or with the wrong patient in its URL) the page showed
    results without saying whose: the clinician checks the masked name and 身份证 (R4)."""
    page = _workbench(client, doctor)
    line = page.split('id="wb-patient"')[1].split("</p>")[0]
    assert "张*" in line or "*三" in line
    assert mask_id(ZHANG_SAN_ID) in line
    assert ZHANG_SAN_ID not in line
    assert "请与医嘱中的患者核对" in line
