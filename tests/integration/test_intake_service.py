"""Result intake (R3, R4) through ``container.intake`` on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from huren.adapters.db import tables as t
from huren.adapters.db.masterdata import write_code_maps
from huren.adapters.db.tables import (
    inbound_message,
    observation,
    outbox,
    patient_identifier,
    patient_link_event,
    result,
    result_version,
)
from huren.bootstrap import Container
from huren.domain.errors import ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.masterdata import CodeMapping
from huren.domain.results import ResultStatus
from huren.services.intake import Channel, Disposition, Rejection
from tests.fixtures.results import (
    LI_SI_ID,
    ZHANG_SAN_ID,
    imaging_report,
    lab_panel,
    message,
    patient,
    store,
)
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B, HOSP_C, LFT


def _counts(c: Container) -> dict[str, int]:
    tables = (result, result_version, observation, t.patient, patient_identifier)
    with c.engine.connect() as conn:
        return {
            tab.name: conn.execute(select(func.count()).select_from(tab)).scalar_one()
            for tab in tables
        }


# ---------------------------------------------------------------- storing
def test_lab_panel_is_stored_with_unified_code_and_mark_at_issue_time(world: Container) -> None:
    ref = store(world, lab_panel(HOSP_A)).results[0]
    stored = world.results.get_result(ref.result_id)
    assert (ref.disposition, ref.version) == (Disposition.CREATED, 1)
    assert stored.item_code == LFT
    # 冀卫医政函〔2025〕7号 二(二)1: lab results qualified in Hebei carry ☆
    assert (stored.mark_scope, stored.mark_symbol) == ("HE", "☆")
    assert [o.code for o in stored.observations] == ["ALT", "AST", "TBIL", "ALB"]
    assert stored.observations[0].flag == "H"


def test_mark_is_that_of_the_issue_time_not_of_today(world: Container) -> None:
    # Hospital A's qualifications run from 2026-01-01: a 2025 report carries no mark.
    old = lab_panel(HOSP_A, issued_at=datetime(2025, 11, 3, 8, 0, tzinfo=UTC))
    ref = store(world, old).results[0]
    assert ref.mark_symbol is None
    assert world.results.get_result(ref.result_id).mark_scope is None


def test_imaging_findings_and_conclusion_are_kept_apart(world: Container) -> None:
    sub = imaging_report(HOSP_A)
    stored = world.results.get_result(store(world, sub).results[0].result_id)
    # 沪卫医〔2024〕135号: 检查检验结果不包括医师出具的诊断结论
    assert stored.findings == sub.findings
    assert stored.conclusion == sub.conclusion
    assert (stored.accession_number, stored.study_uid) == (sub.accession_number, sub.study_uid)
    assert stored.item_code == CT_CHEST


def test_every_message_is_recorded_with_channel_control_id_and_response(
    world: Container,
) -> None:
    outcome = store(world, lab_panel(), channel=Channel.FHIR, control_id="bundle-0001")
    with world.engine.connect() as c:
        row = c.execute(
            select(inbound_message).where(inbound_message.c.id == outcome.message_id)
        ).one()
    assert (row.channel, row.control_id, row.status) == ("fhir", "bundle-0001", "accepted")
    assert row.institution_code == HOSP_A
    assert str(outcome.results[0].result_id) in row.response


def test_stored_results_are_announced_in_the_outbox(world: Container) -> None:
    outcome = store(world, lab_panel())
    with world.engine.connect() as c:
        payloads = c.execute(select(outbox.c.payload).where(outbox.c.topic == "results.stored"))
        events = list(payloads.scalars())
    assert events[0]["results"][0]["id"] == outcome.results[0].result_id


# ---------------------------------------------------------------- idempotency and versions
def test_identical_resend_answers_the_same_and_changes_nothing(world: Container) -> None:
    msg = message(lab_panel(), imaging_report(), control_id="MSG-42")
    first = world.intake.receive(msg)
    before = _counts(world)
    again = world.intake.receive(msg)
    assert again.duplicate
    assert not first.duplicate
    assert again.results == first.results
    assert again.message_id == first.message_id
    assert _counts(world) == before


def test_same_content_under_a_new_control_id_is_unchanged(world: Container) -> None:
    sub = lab_panel()
    first = store(world, sub, control_id="A1").results[0]
    second = store(world, sub, control_id="A2")
    assert not second.duplicate
    assert second.results[0].disposition is Disposition.UNCHANGED
    assert second.results[0].result_id == first.result_id
    assert world.results.versions(first.result_id)[-1].version == 1


def test_corrected_report_creates_a_new_version_and_keeps_the_old_one(world: Container) -> None:
    sub = lab_panel(report_no="JY-7001")
    v1 = store(world, sub).results[0]
    alt = replace(sub.observations[0], value_num=36.0, flag="N")
    corrected = replace(
        sub, status=ResultStatus.CORRECTED, observations=(alt, *sub.observations[1:])
    )
    v2 = store(world, corrected).results[0]
    assert (v2.result_id, v2.version, v2.disposition) == (v1.result_id, 2, Disposition.UPDATED)
    current = world.results.get_result(v1.result_id)
    earlier = world.results.get_result(v1.result_id, version=1)
    assert current.status is ResultStatus.CORRECTED
    assert current.observations[0].value_num == 36.0
    assert earlier.status is ResultStatus.FINAL
    assert earlier.observations[0].value_num == 56.0
    assert [v.version for v in world.results.versions(v1.result_id)] == [1, 2]
    with world.engine.connect() as c:
        n_obs = c.execute(
            select(func.count()).where(observation.c.result_id == v1.result_id)
        ).scalar_one()
    assert n_obs == len(sub.observations)  # replaced, not added


def test_entered_in_error_is_kept_but_hidden_from_the_patients_results(
    world: Container,
) -> None:
    sub = imaging_report(report_no="CT-9001")
    ref = store(world, sub).results[0]
    store(world, replace(sub, status=ResultStatus.ENTERED_IN_ERROR))
    stored = world.results.get_result(ref.result_id)
    assert stored.status is ResultStatus.ENTERED_IN_ERROR
    assert world.results.results_for_patient(stored.patient_id) == []
    shown = world.results.results_for_patient(stored.patient_id, include_entered_in_error=True)
    assert [r.id for r in shown] == [ref.result_id]
    assert world.results.get_result(ref.result_id, version=1).status is ResultStatus.FINAL


def test_results_for_patient_filters_by_unified_item(world: Container) -> None:
    outcome = store(world, lab_panel(), imaging_report())
    pid = world.results.get_result(outcome.results[0].result_id).patient_id
    only_ct = world.results.results_for_patient(pid, item_codes=[CT_CHEST])
    assert [r.item_code for r in only_ct] == [CT_CHEST]


# ---------------------------------------------------------------- 对码
def test_unmapped_code_is_stored_flagged_and_does_not_block_the_rest(world: Container) -> None:
    unmapped = lab_panel(HOSP_A, local_code="LIS-GLU", local_name="空腹血糖")
    outcome = store(world, unmapped, lab_panel(HOSP_A))
    assert outcome.unmapped_codes == ("LIS-GLU",)
    stored = world.results.get_result(outcome.results[0].result_id)
    assert (stored.item_code, stored.mark_symbol) == (None, None)
    assert outcome.results[1].item_code == LFT
    listed = world.intake.unmapped_codes(HOSP_A)
    assert [(u.local_code, u.local_name, u.results) for u in listed] == [("LIS-GLU", "空腹血糖", 1)]


def test_remap_gives_stored_results_their_code_and_mark_once_the_map_is_fixed(
    world: Container,
) -> None:
    ref = store(world, lab_panel(HOSP_A, local_code="LIS-LIVER")).results[0]
    assert world.intake.remap(HOSP_A, "LIS-LIVER") == 0  # still unmapped
    with world.engine.begin() as c:
        write_code_maps(c, [CodeMapping(HOSP_A, "LIS-LIVER", LFT, "肝功能")], world.clock.now())
    assert world.intake.remap(HOSP_A, "LIS-LIVER") == 1
    stored = world.results.get_result(ref.result_id)
    assert (stored.item_code, stored.mark_symbol) == (LFT, "☆")
    assert world.intake.unmapped_codes(HOSP_A) == []


def test_loinc_sent_as_the_only_code_maps_to_the_item_with_that_loinc(
    world: Container,
) -> None:
    ref = store(world, lab_panel(HOSP_B, local_code="24325-3")).results[0]
    assert ref.item_code == LFT


# ---------------------------------------------------------------- bad input
def test_invalid_national_id_rejects_the_whole_message_and_stores_nothing(
    world: Container,
) -> None:
    bad = patient(ZHANG_SAN_ID[:-1] + ("0" if ZHANG_SAN_ID[-1] != "0" else "1"))
    msg = message(lab_panel(), imaging_report(patient_demographics=bad))
    before = _counts(world)
    with pytest.raises(ValidationFailed) as err:
        world.intake.receive(msg)
    assert [p.field for p in err.value.problems] == ["submissions[1].patient.identifiers[0]"]
    assert "居民身份证" in err.value.problems[0].message
    assert _counts(world) == before


def test_unknown_institution_is_refused_naming_the_field(world: Container) -> None:
    with pytest.raises(ValidationFailed) as err:
        store(world, lab_panel("H999999999"))
    fields = {p.field for p in err.value.problems}
    assert "institution" in fields


def test_missing_report_number_is_refused_naming_the_field(world: Container) -> None:
    with pytest.raises(ValidationFailed) as err:
        store(world, replace(lab_panel(), report_no=" "))
    assert [p.field for p in err.value.problems] == ["submissions[0].report_no"]


def test_naive_performed_time_is_refused(world: Container) -> None:
    with pytest.raises(ValidationFailed) as err:
        store(world, replace(lab_panel(), performed_at=datetime(2026, 6, 1, 8, 0)))
    assert [p.field for p in err.value.problems] == ["submissions[0].performed_at"]


def test_times_at_the_ends_of_the_calendar_are_refused_naming_the_field(
    world: Container,
) -> None:
    # Found by a mutation fuzzer: 0001-01-01 at +08:00 is year 0 in UTC, 9999-12-31 at
    # -05:00 year 10000; converting them for the database overflowed (a 500).
    first = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=8)))
    last = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    before = _counts(world)
    with pytest.raises(ValidationFailed) as err:
        store(world, replace(lab_panel(), performed_at=first, issued_at=last))
    assert [p.field for p in err.value.problems] == [
        "submissions[0].performed_at",
        "submissions[0].issued_at",
    ]
    assert "1900–2199" in err.value.problems[0].message
    assert _counts(world) == before


def test_rejection_is_recorded_with_its_reason(world: Container) -> None:
    mid = world.intake.reject(
        Rejection(Channel.HL7V2_MLLP, HOSP_A, "MSG-9", "MSH|^~\\&|...", "PID-3: 缺少患者标识")
    )
    with world.engine.connect() as c:
        row = c.execute(select(inbound_message).where(inbound_message.c.id == mid)).one()
    assert (row.status, row.error, row.control_id) == ("rejected", "PID-3: 缺少患者标识", "MSG-9")
    assert _counts(world)["result"] == 0


# ---------------------------------------------------------------- patient identity (R4)
def test_same_national_id_at_two_institutions_is_one_patient(world: Container) -> None:
    a = store(world, lab_panel(HOSP_A)).results[0]
    b = store(world, imaging_report(HOSP_B, local_code="B-CT-CHEST")).results[0]
    pa = world.results.get_result(a.result_id).patient_id
    assert world.results.get_result(b.result_id).patient_id == pa
    assert _counts(world)["patient"] == 1


def test_mrn_matches_only_within_its_institution(world: Container) -> None:
    at_a = patient("", "张三", mrn="000123", mrn_institution=HOSP_A)
    at_c = patient("", "李四", mrn="000123", mrn_institution=HOSP_C)
    store(world, lab_panel(HOSP_A, patient_demographics=at_a))
    store(world, lab_panel(HOSP_C, local_code="JY-SH-001", patient_demographics=at_c))
    assert _counts(world)["patient"] == 2


def test_new_identifier_of_a_known_patient_is_added_to_that_patient(world: Container) -> None:
    store(world, lab_panel(HOSP_A))
    with_mrn = patient(ZHANG_SAN_ID, mrn="A-778", mrn_institution=HOSP_A)
    store(world, imaging_report(HOSP_A, patient_demographics=with_mrn))
    found = world.results.find_patients(PatientIdentifier(IdentifierKind.MRN, "A-778", HOSP_A))
    by_id = world.results.find_patients(PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID))
    assert found == by_id
    assert len(found) == 1


def test_identifiers_pointing_to_two_patients_are_linked_not_merged(world: Container) -> None:
    store(world, lab_panel(HOSP_A, patient_demographics=patient(ZHANG_SAN_ID)))
    store(world, lab_panel(HOSP_A, patient_demographics=patient("", mrn="A-1", name="张三")))
    both = patient(ZHANG_SAN_ID, mrn="A-1", mrn_institution=HOSP_A)
    ref = store(world, imaging_report(HOSP_A, patient_demographics=both)).results[0]
    strong = world.results.find_patients(
        PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID)
    )
    assert world.results.get_result(ref.result_id).patient_id == strong[0]
    with world.engine.connect() as c:
        links = c.execute(select(patient_link_event)).all()
        merged = c.execute(
            select(t.patient.c.merged_into).where(t.patient.c.merged_into.is_not(None))
        )
        assert merged.first() is None
    assert len(links) == 1
    assert (links[0].action, links[0].to_patient) == ("link", strong[0])
    assert links[0].actor == f"intake:manual:{HOSP_A}"
    assert "未自动合并" in links[0].reason


def test_identifiers_are_stored_hashed_encrypted_and_masked(world: Container) -> None:
    store(world, lab_panel(patient_demographics=patient(LI_SI_ID, "李四")))
    with world.engine.connect() as c:
        row = c.execute(select(patient_identifier)).one()
        dump = " ".join(str(v) for v in c.execute(text("SELECT * FROM patient")).one())
    assert LI_SI_ID not in (row.value_hash + row.value_enc)
    assert row.value_masked == LI_SI_ID[:4] + "*" * 10 + LI_SI_ID[-4:]
    assert "李四" not in dump
    assert "李*" in dump
    assert world.vault.decrypt(row.value_enc) == LI_SI_ID


def test_result_of_a_merged_patient_goes_to_the_patient_it_was_merged_into(
    world: Container,
) -> None:
    first = store(world, lab_panel(HOSP_A, patient_demographics=patient(ZHANG_SAN_ID)))
    second = store(world, imaging_report(HOSP_A, patient_demographics=patient(LI_SI_ID)))
    merged = world.results.get_result(first.results[0].result_id).patient_id
    survivor = world.results.get_result(second.results[0].result_id).patient_id
    with world.engine.begin() as c:
        c.execute(t.patient.update().where(t.patient.c.id == merged).values(merged_into=survivor))
    later = lab_panel(
        HOSP_A, report_no="JY-AFTER-MERGE", patient_demographics=patient(ZHANG_SAN_ID)
    )
    ref = store(world, later)
    assert world.results.get_result(ref.results[0].result_id).patient_id == survivor


def test_a_message_is_stored_deflated_and_read_as_text(world: Container) -> None:
    raw = "MSH|^~\\&|LIS|H130100001 王秀英 丙氨酸氨基转移酶".encode()
    bundle = '{"resourceType": "Bundle", "entry": [' + '{"fullUrl": "urn:x"},' * 500 + "]}"
    for kept in (raw, bundle):
        outcome = world.intake.receive(replace(message(lab_panel(HOSP_A)), raw=kept))
        detail = world.inbound_messages.get(outcome.message_id)
        assert detail is not None
        assert detail.raw == (kept.decode() if isinstance(kept, bytes) else kept)
        with world.engine.connect() as c:
            stored = c.execute(
                text("SELECT raw_deflated FROM inbound_message WHERE id = :i"),
                {"i": outcome.message_id},
            ).scalar_one()
        assert isinstance(stored, bytes)
    assert len(stored) < len(bundle) // 20
