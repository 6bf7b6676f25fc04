"""Bad input to the server-rendered pages (found by fuzzing the pages' query parameters and
form fields): each answers with a page in Chinese naming the field — never 500, never the
API's problem+json — and stores nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select

from huren.adapters.db.tables_sharing import correction_request as correction
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.qc import ProposalStatus, SuspensionReason, TargetKind
from tests.fixtures import governance as gv
from tests.fixtures import world as w
from tests.fixtures.actors import Login
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.integration.sharing_helpers import principal

HUGE = str(2**70)


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


def page(r: Response, status: int, *needles: str) -> str:
    """``r`` is an HTML page with ``status`` that says each of ``needles``."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("text/html"), r.text[:500]
    for n in needles:
        assert n in r.text, (n, r.text[:2000])
    return r.text


def corrections(world: Container) -> dict[int, str]:
    with world.engine.connect() as c:
        return {r.id: r.status for r in c.execute(select(correction.c.id, correction.c.status))}


# ---------------------------------------------------------------- insurer
def _line(**kw: str) -> dict[str, str]:
    return {
        "claim_no": "C1",
        "line_no": "1",
        "id_kind": "national_id",
        "id_value": ZHANG_SAN_ID,
        "institution": w.HOSP_B,
        "item_code": w.LFT,
        "service_date": "2026-06-14",
    } | kw


@pytest.mark.parametrize(
    ("field", "value", "label"),
    [
        ("claim_no", "C\x001", "结算单号"),
        ("line_no", "\x00", "明细序号"),
        ("report_no", "R\x00", "报告单编号"),
        ("service_date", "0001-01-01", "服务日期"),
        ("service_date", "9999-12-31", "服务日期"),
    ],
)
def test_a_claim_line_the_report_cannot_carry_is_named_on_the_insurer_page(
    client: TestClient, login: Login, field: str, value: str, label: str
) -> None:
    """A NUL reached the Excel report (openpyxl refused it: 500); a service date at the
    calendar's end overflowed the lookback (problem+json)."""
    r = client.post(
        "/insurer/line",
        data=_line(**{field: value}),
        headers=login(Role.INSURER, jurisdiction="HE"),
    )
    page(r, 422, "结算明细未通过校验，未作核查", label, f"<code>{field}</code>")


# ---------------------------------------------------------------- dashboard
@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/dashboard?month_from=2026-01&month_to=9999-12", "结束月份"),
        ("/dashboard?month_from=0001-01&month_to=2026-06", "起始月份"),
        ("/dashboard/report?month=0001-01", "月份超出范围"),
        ("/dashboard/report?month=9999-12", "月份超出范围"),
        ("/dashboard/drill?level=city&month_from=١٢٣-01", "起始月份格式应为 YYYY-MM"),
    ],
)
def test_a_month_at_the_calendars_end_is_named_not_a_server_error(
    client: TestClient, login: Login, path: str, label: str
) -> None:
    page(client.get(path, headers=login(Role.REGULATOR, jurisdiction="HE")), 422, label)


def test_the_dashboard_error_escapes_what_the_request_said(
    client: TestClient, login: Login
) -> None:
    r = client.get(
        "/dashboard/drill",
        params={"level": "department", "institution": "<script>alert(1)</script>"},
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    )
    html = page(r, 404, "&lt;script&gt;alert(1)&lt;/script&gt;")
    assert "<script>alert(1)" not in html


def test_a_decision_note_that_cannot_be_stored_leaves_the_proposal_open(
    client: TestClient, world: Container, login: Login
) -> None:
    regulator = principal(world, Role.REGULATOR, jurisdiction="HE")
    proposal = world.qc.raise_manual(
        regulator, w.HOSP_A, TargetKind.ITEM, w.LFT, SuspensionReason.OTHER, "抽查不合格"
    )
    headers = login(Role.REGULATOR, jurisdiction="HE")
    r = client.post(
        f"/dashboard/proposals/{proposal.id}/reject", data={"note": "a\x00b"}, headers=headers
    )
    page(r, 422, "不予暂停的理由不能包含空字符")
    assert world.qc.proposal(regulator, proposal.id).status is ProposalStatus.PROPOSED
    missing = client.post(
        f"/dashboard/proposals/{HUGE}/reject", data={"note": "x"}, headers=headers
    )
    page(missing, 404, "未找到暂停建议")


# ---------------------------------------------------------------- corrections
@pytest.fixture
def open_correction(world: Container) -> int:
    rid = store(world, lab_panel(w.HOSP_A)).results[0].result_id
    clinician = principal(world, Role.CLINICIAN, institution=w.HOSP_B)
    world.sharing.corrections.file(clinician, rid, "ALT 单位写错")
    return next(iter(corrections(world)))


@pytest.mark.parametrize(
    ("form", "label"),
    [
        ({"reason": "x" * 2001, "conclusion": "新结论"}, "更正理由过长"),
        ({"reason": "核实", "flag:ALT": "H" * 9}, "异常标识过长"),
        ({"reason": "核实", "conclusion": "a\x00b"}, "诊断结论不能包含空字符"),
        ({"reason": "核\x00实", "conclusion": "新结论"}, "更正理由不能包含空字符"),
        ({"reason": "核实", "obs:ALT": "3\x005"}, "的结果不能包含空字符"),
    ],
)
def test_an_accepted_correction_the_form_cannot_carry_is_named_and_stays_open(
    client: TestClient,
    world: Container,
    login: Login,
    open_correction: int,
    form: dict[str, str],
    label: str,
) -> None:
    """Over-long fields raised pydantic's ValidationError in the page (500); a NUL
    reached the database (problem+json on PostgreSQL)."""
    r = client.post(
        f"/corrections/{open_correction}/accept",
        data=form,
        headers=login(Role.INSTITUTION_ADMIN, institution=w.HOSP_A),
    )
    page(r, 422, label)
    assert corrections(world) == {open_correction: "open"}


def test_a_rejection_reason_with_a_nul_is_named_and_the_correction_stays_open(
    client: TestClient, world: Container, login: Login, open_correction: int
) -> None:
    r = client.post(
        f"/corrections/{open_correction}/reject",
        data={"reason": "\x00"},
        headers=login(Role.INSTITUTION_ADMIN, institution=w.HOSP_A),
    )
    page(r, 422, "处理理由不能包含空字符")
    assert corrections(world) == {open_correction: "open"}


@pytest.mark.parametrize(
    ("result_id", "status", "label"),
    [("", 422, "结果编号"), ("abc", 422, "结果编号"), ("¹", 422, "结果编号"), (HUGE, 404, "")],
)
def test_filing_a_correction_with_a_tampered_result_id_answers_with_a_page(
    client: TestClient, world: Container, login: Login, result_id: str, status: int, label: str
) -> None:
    r = client.post(
        "/corrections/new",
        data={"result_id": result_id, "text": "请更正"},
        headers=login(Role.CLINICIAN, institution=w.HOSP_B),
    )
    page(r, status, label)
    assert corrections(world) == {}


def test_a_patients_correction_with_a_nul_is_named_and_not_filed(
    client: TestClient, world: Container, login: Login
) -> None:
    rid = store(world, lab_panel(w.HOSP_A)).results[0].result_id
    patient_id = world.results.get_result(rid).patient_id
    r = client.post(
        f"/patient/results/{rid}/correction",
        data={"text": "姓名\x00错误"},
        headers=login(Role.PATIENT, patient_id=patient_id),
    )
    page(r, 422, "纠错说明不能包含空字符")
    assert corrections(world) == {}


# ---------------------------------------------------------------- unparsable parameters
@pytest.mark.parametrize(
    ("role", "path", "label"),
    [
        (Role.PATIENT, "/patient/results/abc", "结果编号（result_id）应为整数"),
        (Role.CLINICIAN, "/retrieval/results/1?version=x", "版本号（version）应为整数"),
        (Role.CLINICIAN, "/catalog/items?offset=-1", "分页位置（offset）过小"),
        (Role.CLINICIAN, "/catalog/items?category=x", "项目类别（category）取值无效"),
        (Role.CLINICIAN, "/catalog/institutions?province=" + "x" * 40, "最多 32 个字符"),
        (Role.OPERATOR, "/integration/messages?before=x", "翻页位置（before）应为整数"),
        (Role.OPERATOR, f"/integration/messages?before={HUGE}", "无法处理的值"),
        (Role.OPERATOR, f"/integration/messages/{HUGE}", ""),
        (Role.OPERATOR, "/integration/messages?channel=a%00b", "通道筛选（channel）不能包含空字符"),
        (Role.REGULATOR, "/dashboard/drill?level=x", "层级（level）取值无效"),
        (Role.INSTITUTION_ADMIN, "/corrections/abc", "纠错申请编号"),
        (Role.INSTITUTION_ADMIN, f"/corrections/{HUGE}", "未找到该纠错申请"),
        (Role.CLINICIAN, "/imaging/studies/1.2.3", "未找到检查"),
        (Role.CLINICIAN, "/imaging/results/0", "未找到结果"),
    ],
)
def test_a_page_answers_an_unparsable_or_unknown_parameter_with_a_page(
    client: TestClient, world: Container, login: Login, role: Role, path: str, label: str
) -> None:
    """These answered the API's problem+json (422/404), shown raw by the browser."""
    bindings: dict[Role, dict[str, object]] = {
        Role.PATIENT: {"patient_id": gv.add_patient(world.engine, world.clock.now())},
        Role.CLINICIAN: {"institution": w.HOSP_A},
        Role.INSTITUTION_ADMIN: {"institution": w.HOSP_A},
        Role.REGULATOR: {"jurisdiction": "HE"},
        Role.OPERATOR: {},
    }
    r = client.get(path, headers=login(role, **bindings[role]))
    assert r.status_code in (404, 422), r.text[:300]
    page(r, r.status_code, label)


def test_marking_an_id_beyond_64_bits_read_is_no_error(client: TestClient, login: Login) -> None:
    r = client.post(
        f"/inbox/{HUGE}/read",
        headers=login(Role.CLINICIAN, institution=w.HOSP_A),
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/inbox"


# ---------------------------------------------------------------- login, retrieval form
def test_a_username_with_a_nul_is_refused_on_the_login_form(client: TestClient) -> None:
    """PostgreSQL refused the NUL in the account lookup: problem+json instead of the form."""
    r = client.post("/login", data={"username": "a\x00b", "password": "x", "next": "/"})
    page(r, 401, "用户名不能包含空字符", 'name="username"')


@pytest.mark.parametrize(
    ("form", "label"),
    [
        ({"identifier": "1" * 65}, "证件号码"),
        ({"identifier_kind": "passport"}, "证件类型无效"),
        ({"date_to": "2026-13-45"}, "检查日期止无效"),
    ],
)
def test_the_retrieval_form_names_the_field_it_refuses(
    client: TestClient, login: Login, form: dict[str, str], label: str
) -> None:
    """Every refusal said 日期格式 YYYY-MM-DD, whichever field it was."""
    data = {"identifier_kind": "national_id", "identifier": ZHANG_SAN_ID, "purpose": "treatment"}
    r = client.post(
        "/retrieval", data=data | form, headers=login(Role.CLINICIAN, institution=w.HOSP_B)
    )
    html = page(r, 422, label)
    if "date" not in next(iter(form)):
        assert "日期格式" not in html.split('role="alert"', 1)[-1].split("</div>", 1)[0]


def test_the_insurer_api_names_a_line_it_cannot_report(client: TestClient, login: Login) -> None:
    """The same check guards the JSON API (its Excel report refused the NUL too)."""
    line = _line(claim_no="C\x01", service_date="2026-06-14")
    r = client.post(
        "/api/v1/insurer/verify?format=xlsx",
        json={"lines": [line]},
        headers=login(Role.INSURER, jurisdiction="HE"),
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "lines[0].claim_no"


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_path_no_page_serves_is_a_page_for_a_browser(client: TestClient) -> None:
    """A mistyped link showed ``{"title": "未找到", …}`` as raw text."""
    text = page(client.get("/dashbord/<b>x</b>", headers=BROWSER), 404, "页面不存在")
    assert "<b>x</b>" not in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text


@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/fhir/Nothing/1", "/dashbord"])
def test_machines_and_non_browsers_keep_the_json_404(client: TestClient, path: str) -> None:
    headers = BROWSER if path != "/dashbord" else {"Accept": "application/json"}
    r = client.get(path, headers=headers)
    assert r.status_code == 404
    assert not r.headers["content-type"].startswith("text/html")
