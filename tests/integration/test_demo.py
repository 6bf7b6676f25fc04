"""The demo's story holds: hospital B's clinician is offered A's CT and liver panel, and
the blood count beyond its 72-hour reference limit is shown but not proposed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from huren.adapters.db.tables import inbound_message
from huren.bootstrap import build
from huren.cli.demo import build_demo, story_text
from huren.cli.demo_story import CBC, CT_CHEST, LFT
from huren.domain.accounts import Principal, Role
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.recognition import CheckRequest, PatientRef


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("demo")
    return build_demo(directory, "127.0.0.1", 8000, seed=7, institutions=300, results=2000)


def test_story_results_carry_marks(demo) -> None:  # type: ignore[no-untyped-def]
    _, story, _ = demo
    assert story.marks[CT_CHEST] not in ("无标识", "—")
    assert story.marks[LFT] not in ("无标识", "—")


def test_ordering_clinician_is_offered_the_ct_and_liver_panel(demo) -> None:  # type: ignore[no-untyped-def]
    settings, story, _ = demo
    c = build(settings)
    try:
        patient = c.results.find_patients(
            PatientIdentifier(IdentifierKind.NATIONAL_ID, story.national_id)
        )[0]
        doctor = Principal(
            1, "doctor-b", "张明", Role.CLINICIAN, institution=story.orderer, department="消化内科"
        )
        outcome = c.recognition.check(
            CheckRequest(
                principal=doctor,
                patient=PatientRef(patient_id=patient),
                codes=tuple(story.orderer_local_codes[i] for i in (CT_CHEST, LFT, CBC)),
                channel="rest",
                department="消化内科",
                clinician="doctor-b",
            )
        )
    finally:
        c.close()
    answers = {a.item_code: a.recognition for a in outcome.items}
    ct_chest = answers[CT_CHEST]
    assert ct_chest is not None
    assert ct_chest.best is not None
    lft = answers[LFT]
    assert lft is not None
    assert lft.best is not None
    # The lab's comment on the raised ALT travels with the value (the card shows it).
    comments = {o.code: o.comment for o in lft.best.result.observations}
    assert comments["ALT"] == "结果偏高，已复查确认"
    cbc = answers[CBC]
    assert cbc is not None
    assert cbc.best is None
    assert cbc.near_misses or cbc.information  # shown, with the reason it is not proposed


def test_printout_names_accounts_and_links(demo) -> None:  # type: ignore[no-untyped-def]
    settings, story, accounts = demo
    text = story_text(settings, story, accounts)
    assert "/workbench?patient=" in text
    assert "doctor-b" in text
    assert "regulator-he" in text
    assert all(password for _, password, _, _ in accounts)
    assert (Path(settings.data_dir).parent / "demo.env").stat().st_mode & 0o077 == 0


def test_the_integration_engineer_has_a_refused_message_and_an_unmapped_code(demo) -> None:  # type: ignore[no-untyped-def]
    """Step 4 of the story: hospital A's engineer finds the message its LIS sent without a
    patient identifier, with the field named, and the local code it has not mapped."""
    settings, story, accounts = demo
    c = build(settings)
    try:
        unmapped = c.intake.unmapped_codes(story.producer)
        with c.engine.connect() as conn:
            rows = conn.execute(
                select(inbound_message.c.status, inbound_message.c.error).where(
                    inbound_message.c.institution_code == story.producer,
                    inbound_message.c.channel == "hl7v2-mllp",
                )
            ).all()
    finally:
        c.close()
    assert [u.local_code for u in unmapped] == ["LIS-HCY-2026"]
    assert sorted(r.status for r in rows) == ["accepted", "rejected"]
    refusal = next(r.error for r in rows if r.status == "rejected")
    assert "PID" in refusal
    text = story_text(settings, story, accounts)
    assert "/integration/messages?status=rejected" in text
    assert "/integration/unmapped" in text


def test_the_printout_names_only_the_listeners_that_run(demo) -> None:  # type: ignore[no-untyped-def]
    settings, story, accounts = demo
    assert "HL7 MLLP" in story_text(settings, story, accounts)
    quiet = settings.model_copy(update={"start_mllp": False, "start_dicom": False})
    text = story_text(quiet, story, accounts)
    assert "HL7 MLLP" not in text
    assert "DICOM " not in text
