"""Comments senders attach to results — HL7 v2 NTE after OBX or OBR (v2.5.1 §2.15.10,
§7.3.1), FHIR R4 Observation.note — are kept with the result and shown where the result
is shown: FHIR read, CDS Hooks card, workbench page. "标本溶血" decides whether a prior
potassium may be accepted instead of testing again (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import hl7
import pytest
from fastapi.testclient import TestClient

from huren.adapters.fhir.systems import REPORT_NOTE_EXTENSION
from huren.adapters.hl7v2.parse import AckCode
from huren.adapters.hl7v2.receiver import Hl7Receiver, Hl7Reply
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.errors import ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.masterdata import Category
from huren.domain.results import (
    ObservationValue,
    PatientDemographics,
    ResultStatus,
    ResultSubmission,
    StoredResult,
    ValueType,
)
from huren.services.intake import Channel, Disposition, encode_submission, submission_hash
from tests.fixtures.actors import Login
from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_control_id
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.test_fhir_realworld import (
    lab,
    observations_read_back,
    post,
    qty,
    stored_report_id,
    transaction,
)

HAEMOLYSED = "标本溶血"


# ------------------------------------------------------------------ idempotency (hash)
CST = timezone(timedelta(hours=8))


def _fixed_report(**changes: Any) -> ResultSubmission:
    """A fixed report without comments, as the code before comments were kept saw it."""
    sub = ResultSubmission(
        institution="H0001",
        report_no="R-2026-0001",
        local_code="LIS-K",
        local_name="电解质",
        patient=PatientDemographics(
            identifiers=(PatientIdentifier(IdentifierKind.NATIONAL_ID, "130102198501011235"),),
            name="张三",
            sex="M",
        ),
        status=ResultStatus.FINAL,
        performed_at=datetime(2026, 6, 13, 8, 0, tzinfo=CST),
        issued_at=datetime(2026, 6, 13, 10, 30, tzinfo=CST),
        category=Category.LAB,
        department="检验科",
        performer="李四",
        signer="王五",
        observations=(
            ObservationValue(
                "K", "钾", ValueType.NM, 6.1, "", "mmol/L", 3.5, 5.3, "3.5-5.3", "H", "2823-3"
            ),
            ObservationValue(
                "NOTE", "外观", ValueType.ST, None, "微黄", "", None, None, "", "", ""
            ),
        ),
    )
    return replace(sub, **changes)


# sha256 of ``_fixed_report()`` computed by the intake code before comments were kept
# (submission_hash at commit 113e7fe): a comment-less report must hash exactly so, or a
# message re-sent after the upgrade would be stored as a new version.
HASH_BEFORE_COMMENTS = "935d84014d51285d60d074f05bf9a863a9d581fe5c01834c77a2958f51b8d83d"


def test_a_report_without_comments_hashes_as_before_comments_were_kept() -> None:
    sub = _fixed_report()
    assert submission_hash(sub) == HASH_BEFORE_COMMENTS
    content_hash, observations = encode_submission(sub)
    assert content_hash == HASH_BEFORE_COMMENTS
    assert b"comment" not in observations


def test_a_comment_is_part_of_the_content() -> None:
    base = _fixed_report()
    k, note = base.observations
    on_value = _fixed_report(observations=(replace(k, comment=HAEMOLYSED), note))
    on_report = _fixed_report(comment="已复查")
    hashes = {submission_hash(s) for s in (base, on_value, on_report)}
    assert len(hashes) == 3
    assert encode_submission(on_value)[0] == submission_hash(on_value)
    assert json.loads(encode_submission(on_value)[1])[0]["comment"] == HAEMOLYSED


def test_resend_is_unchanged_and_a_changed_comment_is_a_new_version(world: Container) -> None:
    sub = lab_panel(HOSP_A, report_no="JY-COMMENT-1")
    first = store(world, sub).results[0]
    again = store(world, sub).results[0]
    assert again.disposition is Disposition.UNCHANGED
    alt, *rest = sub.observations
    noted = replace(sub, observations=(replace(alt, comment=HAEMOLYSED), *rest))
    second = store(world, noted).results[0]
    assert (second.disposition, second.version) == (Disposition.UPDATED, 2)
    assert store(world, noted).results[0].disposition is Disposition.UNCHANGED
    current = world.results.get_result(first.result_id)
    assert current.observations[0].comment == HAEMOLYSED
    earlier = world.results.get_result(first.result_id, version=1)
    assert [o.comment for o in earlier.observations] == [""] * len(sub.observations)


def test_a_comment_over_the_limit_is_refused_naming_the_field(world: Container) -> None:
    sub = lab_panel(HOSP_A)
    alt, *rest = sub.observations
    too_long = replace(sub, observations=(replace(alt, comment="溶" * 2001), *rest))
    with pytest.raises(ValidationFailed) as exc:
        store(world, too_long)
    assert [p.field for p in exc.value.problems] == ["submissions[0].observations[0].comment"]
    with pytest.raises(ValidationFailed) as exc:
        store(world, replace(sub, comment="复" * 4001))
    assert [p.field for p in exc.value.problems] == ["submissions[0].comment"]


# ------------------------------------------------------------------ HL7 v2 NTE
@pytest.fixture
def receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


def _with_notes(control: str = "LIS-NTE-0001", **after: list[str]) -> bytes:
    """The liver panel sample with NTE segments after the segments named (``PID``,
    ``OBR``, ``OBX2`` for the second OBX …), each NTE given as its NTE-3."""
    lines = with_control_id(sample_text(LAB_LFT_V251), control).split("\r")
    out: list[str] = []
    for line in lines:
        if not line:
            continue
        out.append(line)
        seg = line[:3]
        key = f"OBX{line.split('|')[1]}" if seg == "OBX" else seg
        out.extend(f"NTE|{n}|L|{text}" for n, text in enumerate(after.get(key, []), start=1))
    return "\r".join(out).encode()


def _stored(world: Container, reply: Hl7Reply) -> StoredResult:
    assert reply.outcome is not None, reply.ack
    (ref,) = reply.outcome.results
    return world.results.get_result(ref.result_id)


def _value(result: StoredResult, code: str) -> ObservationValue:
    return next(o for o in result.observations if o.code == code)


def _ack(reply: Hl7Reply) -> hl7.Message:
    return hl7.parse(reply.payload.strip(b"\x0b\x1c\r").decode())


def test_hl7_nte_after_obx_and_after_obr_are_stored_and_read_back(
    receiver: Hl7Receiver, world: Container
) -> None:
    raw = _with_notes(
        OBR=["报告已复查", r"标本量不足\.br\请结合临床"],
        OBX1=[HAEMOLYSED, r"结果\T\仅供参考~已电话通知"],
        OBX3=["已复查"],
    )
    reply = receiver.handle(raw)
    assert reply.code is AckCode.AA, reply.ack
    assert b"\rERR|" not in reply.payload  # nothing left out: no notice
    result = _stored(world, reply)
    assert result.comment == "报告已复查\n标本量不足\n请结合临床"
    # several NTE one line each, NTE-3 repetitions too, escapes decoded (§2.7)
    assert _value(result, "1742-6").comment == f"{HAEMOLYSED}\n结果&仅供参考\n已电话通知"
    assert _value(result, "1975-2").comment == "已复查"
    assert _value(result, "1920-8").comment == ""
    # the same message again: nothing new (the comments are part of the content)
    again = receiver.handle(raw)
    assert again.code is AckCode.AA
    assert again.outcome is not None
    assert again.outcome.duplicate


def test_hl7_patient_comment_after_pid_is_acknowledged_as_not_kept(
    receiver: Hl7Receiver, world: Container
) -> None:
    reply = receiver.handle(_with_notes(PID=["患者晕针"], OBX1=[HAEMOLYSED]))
    assert reply.code is AckCode.AA, reply.ack
    errs = _ack(reply).segments("ERR")
    assert [(str(e[2]), str(e[4])) for e in errs] == [("NTE^1", "W")]
    assert "患者晕针" in str(errs[0][8])
    result = _stored(world, reply)
    assert result.comment == ""
    assert _value(result, "1742-6").comment == HAEMOLYSED


def test_hl7_comment_over_the_limit_is_refused_naming_its_nte(receiver: Hl7Receiver) -> None:
    reply = receiver.handle(_with_notes(OBX2=["溶" * 2001]))
    assert reply.code is AckCode.AE
    err = _ack(reply).segment("ERR")
    assert str(err[2]) == "NTE^1^3^1"  # NTE-3 of the OBX's first comment
    assert reply.outcome is None


def test_hl7_comment_on_a_value_makes_a_new_version(
    receiver: Hl7Receiver, world: Container
) -> None:
    first = receiver.handle(_with_notes("LIS-NTE-V1"))
    assert first.outcome is not None
    second = receiver.handle(_with_notes("LIS-NTE-V2", OBX1=[HAEMOLYSED]))
    assert second.outcome is not None
    (ref,) = second.outcome.results
    assert (ref.disposition, ref.version) == (Disposition.UPDATED, 2)


# ------------------------------------------------------------------ FHIR Observation.note
def test_fhir_observation_note_is_stored_and_rendered_back_as_note(
    lis_client: TestClient, world: Container
) -> None:
    client = lis_client
    k = lab(
        "K",
        "钾",
        "2823-3",
        valueQuantity=qty(6.1, "mmol/L"),
        note=[{"text": HAEMOLYSED}, {"text": "已复查", "authorString": "李审核"}],
    )
    na = lab("NA", "钠", "2951-2", valueQuantity=qty(140, "mmol/L"))
    bp = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "note": [{"text": "袖带偏小"}],
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": qty(150, "mm[Hg]"),
            },
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                "valueQuantity": qty(95, "mm[Hg]"),
            },
        ],
    }
    body = transaction(
        {"urn:uuid:k": k, "urn:uuid:na": na, "urn:uuid:bp": bp},
        extension=[{"url": REPORT_NOTE_EXTENSION, "valueAnnotation": {"text": "标本量不足"}}],
    )
    rid = stored_report_id(post(client, body))
    stored = world.results.get_result(rid)
    assert [o.comment for o in stored.observations] == [
        f"{HAEMOLYSED}\n已复查",
        "",
        "袖带偏小",  # the parent Observation's note goes with its first value
        "",
    ]
    assert stored.comment == "标本量不足"
    read = observations_read_back(client, rid)
    assert read[0]["note"] == [{"text": f"{HAEMOLYSED}\n已复查"}]
    assert "note" not in read[1]
    report = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    assert {"url": REPORT_NOTE_EXTENSION, "valueAnnotation": {"text": "标本量不足"}} in report[
        "extension"
    ]
    # the Bundle sent again: unchanged
    again = post(client, body)
    assert again.status_code in (200, 201), again.text
    assert world.results.get_result(rid).version == 1


def test_fhir_note_over_the_limit_is_refused_naming_the_element(lis_client: TestClient) -> None:
    client = lis_client
    k = lab("K", "钾", valueQuantity=qty(6.1, "mmol/L"), note=[{"text": "溶" * 2001}])
    r = post(client, transaction({"urn:uuid:k": k}))
    assert r.status_code == 422, r.text
    issues = r.json()["issue"]
    assert any("note" in " ".join(i.get("expression", [])) for i in issues), issues


# ------------------------------------------------------------------ shown at the point of care
def _potassium_with_comments(world: Container) -> StoredResult:
    """张三's liver panel at hospital A, its ALT commented and the report too."""
    sub = lab_panel(HOSP_A)
    alt, *rest = sub.observations
    sub = replace(sub, observations=(replace(alt, comment=HAEMOLYSED), *rest), comment="报告已复查")
    ref = store(world, sub).results[0]
    return world.results.get_result(ref.result_id)


def test_card_detail_shows_a_value_comment_after_the_value(world: Container, login: Login) -> None:
    _potassium_with_comments(world)
    headers = login(Role.INTEGRATION, institution=HOSP_B)
    body = {
        "hook": "order-select",
        "hookInstance": "5d7f0a4e-2c7e-4a55-9a35-2f0f1c1d0c11",
        "context": {
            "userId": "Practitioner/dr-wang",
            "patientId": "pat-0001",
            "selections": ["ServiceRequest/sr-lft"],
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "id": "sr-lft",
                            "status": "draft",
                            "intent": "order",
                            "code": {
                                "coding": [
                                    {
                                        "system": "https://huren.example/fhir/CodeSystem/local/"
                                        + HOSP_B,
                                        "code": "B-LFT",
                                    }
                                ]
                            },
                            "subject": {"reference": "Patient/pat-0001"},
                        }
                    }
                ],
            },
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "pat-0001",
                "identifier": [
                    {"system": "https://huren.example/fhir/sid/national-id", "value": ZHANG_SAN_ID}
                ],
            }
        },
    }
    with TestClient(create_app(world)) as tc:
        r = tc.post("/cds-services/huren-recognition-order-select", json=body, headers=headers)
    assert r.status_code == 200, r.text
    details = "\n".join(c["detail"] for c in r.json()["cards"])
    assert f"丙氨酸氨基转移酶 56 U/L (H) — 备注：{HAEMOLYSED}" in details
    assert "报告备注：报告已复查" in details


def test_workbench_shows_comments_after_the_values(world: Container, login: Login) -> None:
    stored = _potassium_with_comments(world)
    token = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")[
        "Authorization"
    ].removeprefix("Bearer ")
    with TestClient(create_app(world)) as tc:
        page = tc.get(
            "/workbench",
            params={
                "patient": f"national_id:{ZHANG_SAN_ID}",
                "items": "B-LFT",
                "institution": HOSP_B,
                "token": token,
            },
        )
        assert page.status_code == 200, page.text
        assert f"↳ 备注：{HAEMOLYSED}" in page.text
        assert "报告已复查" in page.text
        report = tc.get(f"/workbench/results/{stored.id}", params={"token": token})
    assert report.status_code == 200, report.text
    assert f"↳ 备注：{HAEMOLYSED}" in report.text
    assert "报告已复查" in report.text


def test_emr_text_stays_without_comments(world: Container) -> None:
    """The EMR text's form is fixed by the policy (R5): the comment is not put into it."""
    from huren.domain.decisions import result_text

    stored = _potassium_with_comments(world)
    assert HAEMOLYSED not in result_text(stored)
    assert "报告已复查" not in result_text(stored)


def test_imaging_viewer_shows_the_report_comment(world: Container) -> None:
    from huren.api.routes import viewer as viewer_routes
    from huren.domain.accounts import Principal
    from tests.fixtures.results import imaging_report

    sub = replace(imaging_report(HOSP_A), comment="患者检查中移动，部分层面有运动伪影")
    rid = store(world, sub).results[0].result_id
    app = create_app(world)
    app.dependency_overrides[viewer_routes.page_user] = lambda: Principal(
        2, "dr", "李医生", Role.CLINICIAN, institution=HOSP_B
    )
    with TestClient(app) as http:
        page = http.get(f"/imaging/results/{rid}")
    assert page.status_code == 200, page.text
    assert "报告备注" in page.text
    assert "部分层面有运动伪影" in page.text


def test_patient_sees_the_comments_on_their_own_result(world: Container, login: Login) -> None:
    stored = _potassium_with_comments(world)
    with TestClient(create_app(world)) as http:
        headers = login(Role.PATIENT, patient_id=stored.patient_id)
        page = http.get(f"/patient/results/{stored.id}", headers=headers)
    assert page.status_code == 200, page.text
    assert f"备注：{HAEMOLYSED}" in page.text
    assert "报告已复查" in page.text
