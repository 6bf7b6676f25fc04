"""``huren synth`` into a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import hashlib
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

# The values and flags of seed 42's first 400 results, computed by the code before
# comments were synthesized (4d9eefb).
SEED_42_VALUES = "a2e59f8276b5360b2ddfbef070450ea4feb4d3f90144a7db5bb2df098ed000d7"


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


def test_laboratories_comments_are_synthesized_and_read_back(container: Container) -> None:
    """Haemolysis on the analytes it raises, re-tests of far-out values, a remark on a
    report now and then: stored as intake stores comments and read back with the result."""
    _run(container, results=3000)
    with container.engine.connect() as c:
        by_comment: dict[str, int] = dict(
            c.execute(
                select(t.observation.c.comment, func.count())
                .where(t.observation.c.comment != "")
                .group_by(t.observation.c.comment)
            ).all()
        )
        haemolysed = c.execute(
            select(t.observation.c.result_id, t.observation.c.code).where(
                t.observation.c.comment == synth.HAEMOLYSIS_COMMENT
            )
        ).first()
        remarks = c.scalar(select(func.count()).where(t.result.c.comment != ""))
    assert set(by_comment) == {synth.HAEMOLYSIS_COMMENT, synth.RETEST_COMMENT}
    assert remarks is not None
    assert remarks >= 1
    assert haemolysed is not None
    assert haemolysed.code in synth.HAEMOLYSIS_SENSITIVE
    stored = container.results.get_result(haemolysed.result_id)
    assert any(o.comment == synth.HAEMOLYSIS_COMMENT for o in stored.observations)


def test_comments_leave_the_world_of_a_seed_as_it_was(container: Container) -> None:
    """Comments draw from their own random stream: the results, values and flags of a
    seed are those it gave before they were added."""
    _run(container, results=400)
    with container.engine.connect() as c:
        rows = c.execute(
            select(t.observation.c.value_num, t.observation.c.flag).order_by(
                t.observation.c.result_id, t.observation.c.seq
            )
        ).all()
    assert len(rows) == 1395
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()
    assert digest == SEED_42_VALUES, digest
