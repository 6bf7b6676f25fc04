"""``huren synth`` into a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import time
from datetime import UTC

from sqlalchemy import String, func, select

from huren.adapters import reference_data
from huren.adapters.db import tables as t
from huren.adapters.db.bulk import bulk_sink
from huren.bootstrap import Container
from huren.cli.synth import fill_demo_database
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.results import ResultStatus
from huren.services import synth


def _run(container: Container, seed: int = 42, results: int = 600) -> synth.SynthReport:
    cfg = synth.SynthConfig(
        seed=seed, results=results, until=container.clock.now(), institutions=60, batch_size=250
    )
    report = synth.run_synth(
        reference_data.synth_reference(),
        cfg,
        container.vault,
        bulk_sink(container.engine),
        timer=time.perf_counter,
    )
    container.catalog.invalidate()
    return report


def test_stored_marks_are_those_catalog_mark_for_gives_at_issue_time(
    container: Container,
) -> None:
    _run(container)
    catalog = container.catalog.get()
    with container.engine.connect() as c:
        rows = c.execute(
            select(
                t.result.c.institution_code,
                t.result.c.item_code,
                t.result.c.issued_at,
                t.result.c.mark_symbol,
                t.result.c.mark_scope,
            ).where(t.result.c.item_code.is_not(None))
        ).all()
    assert len(rows) > 500
    marked = 0
    for inst, item, issued, symbol, scope in rows:
        issued = issued.replace(tzinfo=UTC) if issued.tzinfo is None else issued
        mark = catalog.mark_for(inst, item, issued)
        assert (mark.symbol if mark else None, mark.scope if mark else None) == (symbol, scope)
        marked += mark is not None
    assert 0 < marked < len(rows)  # some results are unmarked (failed, suspended, unqualified)


def test_counts_match_the_report_and_every_result_has_its_versions(container: Container) -> None:
    report = _run(container)
    with container.engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(t.result)) == report.results
        assert c.scalar(select(func.count()).select_from(t.patient)) == report.patients
        assert c.scalar(select(func.count()).select_from(t.observation)) == report.observations
        assert c.scalar(select(func.count()).select_from(t.institution)) == report.institutions
        missing = c.scalar(
            select(func.count())
            .select_from(t.result)
            .where(
                ~select(t.result_version.c.result_id)
                .where(
                    t.result_version.c.result_id == t.result.c.id,
                    t.result_version.c.version == t.result.c.version,
                )
                .exists()
            )
        )
        assert missing == 0


def test_a_corrected_result_keeps_its_first_version_readable(container: Container) -> None:
    _run(container, results=1500)
    with container.engine.connect() as c:
        rid = c.scalar(
            select(t.result.c.id).where(t.result.c.status == ResultStatus.CORRECTED.value).limit(1)
        )
    assert rid is not None
    reader = container.results
    current, first = reader.get_result(rid), reader.get_result(rid, version=1)
    assert current.status is ResultStatus.CORRECTED
    assert current.version == 2
    assert first.status is ResultStatus.FINAL


def test_synthetic_patients_are_found_by_their_national_id(container: Container) -> None:
    _run(container, results=200)
    with container.engine.connect() as c:
        enc = c.scalar(
            select(t.patient_identifier.c.value_enc)
            .where(t.patient_identifier.c.kind == "national_id")
            .limit(1)
        )
    assert enc is not None
    national_id = container.vault.decrypt(enc)
    reader = container.results
    assert (
        len(reader.find_patients(PatientIdentifier(IdentifierKind.NATIONAL_ID, national_id))) == 1
    )


def test_more_results_can_be_appended_after_the_first_run(container: Container) -> None:
    _run(container, results=100)
    cfg = synth.SynthConfig(
        seed=42, results=50, until=container.clock.now(), institutions=60, patients=20
    )
    synth.run_synth(
        reference_data.synth_reference(),
        cfg,
        container.vault,
        bulk_sink(container.engine),
        timer=time.perf_counter,
        master=False,
    )
    with container.engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(t.result)) == 150


def test_the_demo_data_step_fills_a_fresh_database_with_marked_results(
    container: Container,
) -> None:
    report = fill_demo_database(container, institutions=80, results=1500)
    catalog = container.catalog.get()
    assert len(catalog.institutions) == report.institutions == 80
    with container.engine.connect() as c:
        marked = c.scalar(
            select(func.count()).select_from(t.result).where(t.result.c.mark_symbol.is_not(None))
        )
    assert marked is not None
    assert 0 < marked < report.results


def test_version_snapshots_keep_chinese_text_as_itself(container: Container) -> None:
    """Stored as intake stores them: UTF-8 text, not ``\\u`` escapes (half again as big)."""
    _run(container, results=50)
    with container.engine.connect() as c:
        stored = c.scalar(
            select(func.cast(t.result_version.c.snapshot, String))
            .where(t.result_version.c.version == 1)
            .limit(1)
        )
    assert stored is not None
    assert "\\u" not in stored
    assert any("\u4e00" <= ch <= "\u9fff" for ch in stored)
