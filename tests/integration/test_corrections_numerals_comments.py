"""A correction (纠错, R7) of a lab value carries the numerals the reviewer typed — "8.10"
is shown "8.10", never the old value's numerals — and a correction can set, change or
clear the sender's comments (备注: a value's, such as "标本溶血", and the report's), through
the service, the API and the review page. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.errors import ValidationFailed
from huren.domain.results import ObservationValue, StoredResult, ValueType
from huren.services.corrections import CorrectionEdit, ObservationEdit
from tests.fixtures.actors import Login
from tests.fixtures.results import lab_panel, liver_panel_observations, store
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.sharing_helpers import principal

HAEMOLYSED = "标本溶血"


@pytest.fixture
def result_id(world: Container) -> int:
    """A liver panel whose ALT came as HL7 keeps it — numerals "56.0" — with comments."""
    alt, *rest = liver_panel_observations()
    sub = lab_panel(
        HOSP_A,
        report_no="JY-CORR-NUM-1",
        observations=(replace(alt, value_text="56.0", comment=HAEMOLYSED), *rest),
    )
    return store(world, replace(sub, comment="报告已复查")).results[0].result_id


@pytest.fixture
def admin(world: Container) -> Principal:
    return principal(world, Role.INSTITUTION_ADMIN, institution=HOSP_A, name="周主任")


@pytest.fixture
def correction_id(world: Container, result_id: int) -> int:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B, name="刘医生")
    return world.sharing.corrections.file(doctor, result_id, "ALT 原始记录为 8.10").id


def _current(world: Container, result_id: int) -> StoredResult:
    return world.results.get_result(result_id)


def _alt(result: StoredResult) -> ObservationValue:
    return next(o for o in result.observations if o.code == "ALT")


def _accept(world: Container, admin: Principal, correction_id: int, edit: CorrectionEdit) -> None:
    world.sharing.corrections.accept(admin, correction_id, edit, "按原始记录更正")


# ---------------------------------------------------------------- the value's numerals
@pytest.mark.parametrize(
    ("edit", "stored", "shown"),
    [
        (ObservationEdit("ALT", value_num=8.1, value_text="8.10"), (8.1, "8.10"), "8.10"),
        (ObservationEdit("ALT", value_text="8.10"), (8.1, "8.10"), "8.10"),
        (ObservationEdit("ALT", value_text="８.１０"), (8.1, "8.10"), "8.10"),  # full width
        (ObservationEdit("ALT", value_num=36.0), (36.0, ""), "36"),
    ],
)
def test_an_edited_number_is_shown_with_the_numerals_typed(
    world: Container,
    admin: Principal,
    result_id: int,
    correction_id: int,
    edit: ObservationEdit,
    stored: tuple[float, str],
    shown: str,
) -> None:
    _accept(world, admin, correction_id, CorrectionEdit(observations=(edit,)))
    alt = _alt(_current(world, result_id))
    assert (alt.value_type, alt.value_num, alt.value_text) == (ValueType.NM, *stored)
    assert alt.shown_value() == shown
    assert _alt(world.results.get_result(result_id, version=1)).shown_value() == "56.0"


@pytest.mark.parametrize(
    ("typed", "value_type", "stored"),
    [
        ("<0.5", ValueType.SN, "<0.5"),
        ("＜0.5", ValueType.SN, "<0.5"),  # a full-width comparator, as HL7 intake reads it
        ("未检出（＜0.5）", ValueType.ST, "未检出（＜0.5）"),  # other text as typed
    ],
)
def test_a_number_corrected_to_text_is_that_text(
    world: Container,
    admin: Principal,
    result_id: int,
    correction_id: int,
    typed: str,
    value_type: ValueType,
    stored: str,
) -> None:
    edit = CorrectionEdit(observations=(ObservationEdit("ALT", value_text=typed),))
    _accept(world, admin, correction_id, edit)
    alt = _alt(_current(world, result_id))
    assert (alt.value_type, alt.value_num, alt.value_text) == (value_type, None, stored)
    assert alt.shown_value() == stored


@pytest.mark.parametrize(
    "edit",
    [
        ObservationEdit("ALT", value_num=8.1, value_text="9.10"),
        ObservationEdit("ALT", value_num=float("nan")),
        ObservationEdit("ALT", value_text="   "),
    ],
)
def test_a_number_that_is_not_one_is_refused_naming_the_value(
    world: Container, admin: Principal, result_id: int, correction_id: int, edit: ObservationEdit
) -> None:
    with pytest.raises(ValidationFailed) as err:
        _accept(world, admin, correction_id, CorrectionEdit(observations=(edit,)))
    assert [p.field for p in err.value.problems] == ["obs:ALT"]
    assert _current(world, result_id).version == 1


# ---------------------------------------------------------------- comments
def test_a_correction_sets_changes_and_clears_comments(
    world: Container, admin: Principal, result_id: int
) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    steps = [
        # the value's comment changed, another value's set, the report's cleared
        CorrectionEdit(
            observations=(
                ObservationEdit("ALT", comment=f"{HAEMOLYSED}，已复查\r\n结果仅供参考 "),
                ObservationEdit("AST", comment="脂血"),
            ),
            comment="",
        ),
        # the value's comment cleared, the report's set
        CorrectionEdit(observations=(ObservationEdit("ALT", comment=""),), comment="已电话通知"),
    ]
    for edit in steps:
        cid = world.sharing.corrections.file(doctor, result_id, "备注有误").id
        _accept(world, admin, cid, edit)
    v2 = world.results.get_result(result_id, version=2)
    assert [o.comment for o in v2.observations][:2] == [
        f"{HAEMOLYSED}，已复查\n结果仅供参考",
        "脂血",
    ]
    assert v2.comment == ""
    v3 = _current(world, result_id)
    assert (v3.version, [o.comment for o in v3.observations][:2], v3.comment) == (
        3,
        ["", "脂血"],
        "已电话通知",
    )
    assert _alt(v3).shown_value() == "56.0"  # the value untouched keeps its numerals


def test_a_comment_as_it_was_is_no_correction(
    world: Container, admin: Principal, result_id: int, correction_id: int
) -> None:
    edit = CorrectionEdit(
        observations=(ObservationEdit("ALT", comment=f" {HAEMOLYSED}\r\n"),), comment="报告已复查"
    )
    with pytest.raises(ValidationFailed) as err:
        _accept(world, admin, correction_id, edit)
    assert [p.field for p in err.value.problems] == ["edit"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            CorrectionEdit(observations=(ObservationEdit("ALT", comment="溶" * 2001),)),
            "comment:ALT",
        ),
        (CorrectionEdit(comment="复" * 4001), "comment"),
        (CorrectionEdit(observations=(ObservationEdit("ALT", comment="a\x00b"),)), "comment:ALT"),
    ],
)
def test_a_comment_that_cannot_be_kept_is_refused_naming_it(
    world: Container,
    admin: Principal,
    result_id: int,
    correction_id: int,
    edit: CorrectionEdit,
    field: str,
) -> None:
    with pytest.raises(ValidationFailed) as err:
        _accept(world, admin, correction_id, edit)
    assert [p.field for p in err.value.problems] == [field]
    assert _current(world, result_id).version == 1


# ---------------------------------------------------------------- API and page
@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


def test_the_api_corrects_numerals_and_comments(
    world: Container, login: Login, client: TestClient, result_id: int, correction_id: int
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    body = {
        "reason": "按原始记录更正",
        "observations": [
            {"code": "ALT", "value_text": "8.10", "comment": ""},
            {"code": "TBIL", "value_num": 12.3, "value_text": "12.30", "comment": "轻度黄疸"},
        ],
        "comment": "已复查",
    }
    r = client.post(f"/api/v1/corrections/{correction_id}/accept", json=body, headers=headers)
    assert r.status_code == 200, r.text
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    report = client.get(f"/api/v1/retrieval/results/{result_id}?purpose=treatment", headers=doctor)
    assert report.status_code == 200, report.text
    shown = {o["code"]: (o["value"], o["comment"]) for o in report.json()["observations"]}
    assert shown["ALT"] == ("8.10", "")
    assert shown["TBIL"] == ("12.30", "轻度黄疸")
    assert report.json()["comment"] == "已复查"


@pytest.mark.parametrize(
    ("observation", "report_comment", "field"),
    [
        ({"code": "ALT", "comment": "溶" * 2001}, None, "observations.0.comment"),
        ({"code": "ALT"}, "复" * 4001, "comment"),
        ({"code": "ALT", "value_num": "NaN"}, None, "observations.0.value_num"),
    ],
)
def test_the_api_refuses_what_a_correction_cannot_carry_naming_it(
    world: Container,
    login: Login,
    client: TestClient,
    result_id: int,
    correction_id: int,
    observation: dict[str, object],
    report_comment: str | None,
    field: str,
) -> None:
    body: dict[str, object] = {"reason": "更正", "observations": [observation]}
    if report_comment is not None:
        body["comment"] = report_comment
    r = client.post(
        f"/api/v1/corrections/{correction_id}/accept",
        json=body,
        headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A),
    )
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert _current(world, result_id).version == 1


def test_the_review_page_corrects_numerals_and_comments(
    world: Container, login: Login, client: TestClient, result_id: int, correction_id: int
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    page = client.get(f"/corrections/{correction_id}", headers=headers)
    assert page.status_code == 200, page.text
    assert 'name="comment:ALT"' in page.text
    assert f">{HAEMOLYSED}</textarea>" in page.text  # the comment as it is, to edit
    assert ">报告已复查</textarea>" in page.text
    form = {
        "reason": "按原始记录更正",
        "obs:ALT": "8.10",
        "flag:ALT": "H",
        "comment:ALT": f"{HAEMOLYSED}\r\n已复查",  # a textarea's line ends
        "comment:AST": "",
        "comment": "",
    }
    r = client.post(
        f"/corrections/{correction_id}/accept", data=form, headers=headers, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    now = _current(world, result_id)
    alt = _alt(now)
    assert (alt.value_num, alt.value_text, alt.shown_value()) == (8.1, "8.10", "8.10")
    assert alt.comment == f"{HAEMOLYSED}\n已复查"
    assert now.comment == ""
    report = client.get(f"/retrieval/results/{result_id}?purpose=treatment", headers=headers)
    assert "<td>8.10</td>" in report.text


@pytest.mark.parametrize(
    ("form", "label"),
    [
        ({"comment:ALT": "溶" * 2001}, "备注过长"),
        ({"comment": "复" * 4001}, "报告备注过长"),
    ],
)
def test_a_comment_the_page_cannot_carry_is_named_and_nothing_is_corrected(
    world: Container,
    login: Login,
    client: TestClient,
    result_id: int,
    correction_id: int,
    form: dict[str, str],
    label: str,
) -> None:
    r = client.post(
        f"/corrections/{correction_id}/accept",
        data={"reason": "核实", **form},
        headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A),
    )
    assert r.status_code == 422, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    assert label in r.text
    assert _current(world, result_id).version == 1
