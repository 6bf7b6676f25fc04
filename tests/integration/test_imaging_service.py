"""Imaging through ``container.imaging`` on SQLite and PostgreSQL: linking a study to its
report by accession number and patient, completeness for the item (沪卫医〔2024〕135号
四(二)2), the insurer's confirmation (冀卫医政函〔2025〕7号 三(四)), the patient's export and
the viewer page."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from io import BytesIO

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db.tables import audit_event
from huren.adapters.db.tables_imaging import imaging_study
from huren.api.app import create_app
from huren.api.routes import imaging as imaging_routes
from huren.api.routes import viewer as viewer_routes
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.services.imaging import ConflictingInstance, MissingRequiredTags, NotDicom, Source
from tests.fixtures.dicom import Spec, instance, instance_bytes, series_specs, to_bytes, uid
from tests.fixtures.results import imaging_report, patient, store
from tests.fixtures.world import HOSP_A

MRN = "MRN0001"


def _send(c: Container, specs: list[Spec]) -> None:
    for s in specs:
        c.imaging.store_instance(instance_bytes(s), institution=HOSP_A, source=Source.DIMSE)


def _ct_study(
    c: Container, study: str = "ct", *, thin: bool = True, accession: str = "ACC0001"
) -> None:
    _send(c, series_specs(study, "thick", 2, thickness=5.0, accession=accession, patient_id=MRN))
    if thin:
        _send(
            c,
            series_specs(
                study,
                "thin",
                3,
                thickness=1.0,
                description="Chest 1mm",
                accession=accession,
                patient_id=MRN,
            ),
        )


def _report(c: Container, accession: str = "ACC0001", mrn: str = MRN, study: str = "") -> int:
    """An imaging report; with ``study`` it names the Study Instance UID, else only the
    accession number links it (as RIS reports often do)."""
    sub = imaging_report(
        HOSP_A,
        accession_number=accession,
        study_uid=uid(study) if study else None,
        patient_demographics=patient(mrn=mrn),
    )
    if not study:
        sub = replace(sub, study_uid="")
    return store(c, sub).results[0].result_id


def test_report_and_complete_study_linked_by_accession_and_patient_is_complete(
    world: Container,
) -> None:
    _ct_study(world)
    rid = _report(world)
    status = world.imaging.study_status(rid)
    assert status.complete, status.missing
    assert (status.study_uid, status.series_count, status.instance_count) == (uid("ct"), 2, 5)


def test_study_arriving_after_its_report_completes_it(world: Container) -> None:
    rid = _report(world)
    assert world.imaging.study_status(rid).missing == (
        "影像未上传：尚未收到该报告对应的 DICOM 影像",
    )
    _ct_study(world)
    assert world.imaging.study_status(rid).complete


def test_ct_without_thin_slices_is_incomplete_for_chest_ct(world: Container) -> None:
    # world's CT_CHEST requires 厚层 (≥3 mm) and 薄层 (≤1.5 mm)
    _ct_study(world, thin=False)
    rid = _report(world)
    assert world.imaging.study_status(rid).missing == ("缺少薄层序列（层厚 ≤ 1.5 mm）",)


def test_same_accession_for_another_patient_does_not_link(world: Container) -> None:
    _ct_study(world)
    rid = _report(world, mrn="MRN9999")
    assert not world.imaging.study_status(rid).study_uid


def test_study_without_report_is_shown_incomplete(world: Container) -> None:
    _ct_study(world)
    view = world.imaging.study_view(uid("ct"))
    assert view.report is None
    assert "报告未上传：尚未收到影像科医生签发的报告" in view.status.missing


def test_report_naming_the_study_uid_links_even_with_another_accession(world: Container) -> None:
    _ct_study(world, accession="RIS-1")
    rid = _report(world, accession="HIS-77", study="ct")
    assert world.imaging.study_status(rid).study_uid == uid("ct")


def test_batch_status_answers_every_result(world: Container) -> None:
    _ct_study(world, "a", accession="A1")
    r1, r2 = _report(world, "A1"), _report(world, "B2")
    got = world.imaging.study_statuses([r1, r2])
    assert got[r1].complete
    assert not got[r2].complete


def test_recognition_study_states_map_completeness(world: Container) -> None:
    from huren.domain.recognition import StudyCompleteness

    _ct_study(world, thin=False)
    rid = _report(world)
    stored = world.results.get_result(rid)
    state = world.imaging.study_states([stored])[rid]
    assert state.completeness is StudyCompleteness.INCOMPLETE
    assert state.missing


def test_non_dicom_bytes_are_refused_and_nothing_is_indexed(world: Container) -> None:
    with pytest.raises(NotDicom):
        world.imaging.store_instance(
            b"%PDF-1.7 not an image", institution=HOSP_A, source=Source.STOW
        )
    with world.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(imaging_study)).scalar_one() == 0


def test_missing_study_uid_is_refused_naming_the_tag(world: Container) -> None:
    ds = instance(Spec(study="m"))
    del ds.StudyInstanceUID
    with pytest.raises(MissingRequiredTags) as err:
        world.imaging.store_instance(to_bytes(ds), institution=HOSP_A, source=Source.STOW)
    assert [p.field for p in err.value.problems] == ["StudyInstanceUID"]


def test_resending_identical_bytes_is_idempotent_and_different_bytes_conflict(
    world: Container,
) -> None:
    data = instance_bytes(Spec(study="d"))
    first = world.imaging.store_instance(data, institution=HOSP_A, source=Source.DIMSE)
    again = world.imaging.store_instance(data, institution=HOSP_A, source=Source.DIMSE)
    assert (first.duplicate, again.duplicate) == (False, True)
    changed = instance(Spec(study="d"))
    changed.SliceThickness = 2.0
    with pytest.raises(ConflictingInstance):
        world.imaging.store_instance(to_bytes(changed), institution=HOSP_A, source=Source.DIMSE)
    assert world.imaging.study_view(uid("d")).study.instance_count == 1


def test_insurer_confirmation_gives_counts_and_times_but_no_report(world: Container) -> None:
    _ct_study(world)
    _report(world)
    app = create_app(world)
    app.dependency_overrides[imaging_routes.insurer] = lambda: Principal(
        9, "yb", "医保", Role.INSURER, jurisdiction="HE"
    )
    with TestClient(app) as http:
        r = http.get(
            "/api/v1/imaging/confirm",
            params={"patient": MRN, "accession": "ACC0001", "date": "2026-06-10"},
        )
        none = http.get(
            "/api/v1/imaging/confirm", params={"patient": "OTHER", "accession": "ACC0001"}
        )
    body = r.json()
    assert r.status_code == 200
    assert body["exists"] is True
    assert (body["series_count"], body["instance_count"], body["modalities"]) == (2, 5, ["CT"])
    assert "findings" not in r.text
    assert "磨玻璃" not in r.text
    assert "PixelData" not in r.text
    assert none.json()["exists"] is False


def test_insurer_confirmation_needs_accession_or_study(world: Container) -> None:
    app = create_app(world)
    app.dependency_overrides[imaging_routes.insurer] = lambda: Principal(
        9, "yb", "医保", Role.INSURER
    )
    with TestClient(app) as http:
        r = http.get("/api/v1/imaging/confirm", params={"patient": MRN})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "accession"


def test_patient_download_holds_report_dicomdir_and_png(world: Container) -> None:
    _ct_study(world)
    rid = _report(world)
    pid = world.imaging.index.reports([rid])[0].patient_id
    app = create_app(world)
    app.dependency_overrides[imaging_routes.downloader] = lambda: Principal(
        5, "p", "张三", Role.PATIENT, patient_id=pid
    )
    with TestClient(app) as http:
        r = http.get(f"/api/v1/imaging/results/{rid}/export.zip")
    assert r.status_code == 200
    names = zipfile.ZipFile(BytesIO(r.content)).namelist()
    assert "DICOM/DICOMDIR" in names
    assert sum(n.endswith(".png") for n in names) == 5
    report = zipfile.ZipFile(BytesIO(r.content)).read("报告.txt").decode()
    assert "【检查所见】" in report
    assert "【诊断结论】" in report


def test_patient_cannot_download_someone_elses_study(world: Container) -> None:
    _ct_study(world)
    rid = _report(world)
    app = create_app(world)
    app.dependency_overrides[imaging_routes.downloader] = lambda: Principal(
        5, "p", "王五", Role.PATIENT, patient_id=999
    )
    with TestClient(app) as http:
        assert http.get(f"/api/v1/imaging/results/{rid}/export.zip").status_code == 403


def test_viewer_page_shows_findings_and_conclusion_apart_and_is_audited(world: Container) -> None:
    _ct_study(world)
    rid = _report(world)
    app = create_app(world)
    app.dependency_overrides[viewer_routes.page_user] = lambda: Principal(
        2, "dr", "李医生", Role.CLINICIAN, institution="H130600001"
    )
    with TestClient(app) as http:
        r = http.get(f"/imaging/results/{rid}")
    assert r.status_code == 200
    assert 'data-testid="findings"' in r.text
    assert 'data-testid="conclusion"' in r.text
    assert "肺窗" in r.text
    assert "/static/viewer.js" in r.text
    assert r.text.count('class="series-btn"') == 2
    with world.engine.connect() as c:
        assert (
            c.execute(select(audit_event.c.action).where(audit_event.c.result_id == rid)).scalar()
            == "imaging_view"
        )


def test_engineer_sees_rejections_in_the_event_log(world: Container) -> None:
    with pytest.raises(NotDicom):
        world.imaging.store_instance(b"garbage", institution=HOSP_A, source=Source.STOW)
    app = create_app(world)
    app.dependency_overrides[imaging_routes.engineer] = lambda: Principal(
        1, "pacs", "接口", Role.INTEGRATION, institution=HOSP_A
    )
    with TestClient(app) as http:
        [ev] = http.get("/api/v1/imaging/events").json()
    assert (ev["kind"], ev["status"]) == ("instance_rejected", "0xC001")
