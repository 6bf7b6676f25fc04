"""The synthetic point-of-care history (``huren synth`` / the demo fill): reminders and
decisions written as the recognition service writes them, consistent with the results
stored before them, and monitoring that finds the outliers planted in them. Both backends,
one small world per backend shared by the module (the fill is the slow part)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import delete, func, select
from typer.testing import CliRunner

from huren.adapters import reference_data
from huren.adapters.clock import FixedClock
from huren.adapters.crypto import new_key
from huren.adapters.db import tables as t
from huren.bootstrap import Container, build
from huren.cli import synth as cli
from huren.cli.synth import fill_demo_database, synthesize_activity
from huren.config import Settings
from huren.domain.accounts import Principal, Role
from huren.domain.masterdata import Category
from huren.domain.monitoring import Counters, Metric
from huren.domain.recognition import (
    UNKNOWN_STUDY,
    PriorResult,
    Standing,
    assess_prior,
    exclusions_in_force,
    recognizable_priors,
)
from huren.domain.results import ResultStatus, StoredResult
from huren.services.monitoring import COUNTED_RESULT_STATUSES, Dimension, Period
from huren.services.recognition import PRIORS_PER_ITEM
from huren.services.synth import (
    ActivityConfig,
    ActivityGenerator,
    PlantedOutlier,
    SynthConfig,
    demo_config,
    generate_world,
)
from tests.conftest import BACKENDS, TEST_NOW, _truncate_all

SEED = 7
# Large enough for Hebei to have six tertiary hospitals (one planted, five peers).
INSTITUTIONS = 150
RESULTS = 6000
WHOLE = Period(date(2020, 1, 1), date(2030, 12, 1))
NATIONAL = Principal(1, "reg-national", "国家卫生健康委", Role.REGULATOR, jurisdiction="NATIONAL")


@dataclass
class Filled:
    container: Container
    cfg: SynthConfig
    planted: tuple[PlantedOutlier, ...]


def _settings(url: str, data: Path) -> Settings:
    return Settings(
        database_url=url,
        data_dir=data,
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
        start_mllp=False,
        start_dicom=False,
        background_jobs=False,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Filled]:
    tmp = tmp_path_factory.mktemp("activity")
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp / "huren.db")
        url = f"sqlite:///{tmp / 'huren.db'}"
    else:
        url = request.getfixturevalue("pg_database")
        _truncate_all(url)
    container = build(_settings(url, tmp / "data"), clock=FixedClock(TEST_NOW))
    fill_demo_database(container, seed=SEED, institutions=INSTITUTIONS, results=RESULTS)
    cfg = demo_config(TEST_NOW, seed=SEED, institutions=INSTITUTIONS, results=RESULTS)
    world = generate_world(reference_data.synth_reference(), cfg)
    planted = tuple(ActivityGenerator(world, ActivityConfig.of(cfg), {}).planted)
    yield Filled(container, cfg, planted)
    container.close()


def _rows(c: Container, table: Any) -> list[tuple[Any, ...]]:
    with c.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(table.c.id))]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _versions(c: Container) -> dict[int, list[tuple[int, ResultStatus, datetime]]]:
    v = t.result_version.c
    out: dict[int, list[tuple[int, ResultStatus, datetime]]] = {}
    with c.engine.connect() as conn:
        for x in conn.execute(
            select(v.result_id, v.version, v.status, v.recorded_at).order_by(v.result_id, v.version)
        ):
            out.setdefault(x.result_id, []).append(
                (x.version, ResultStatus(x.status), _aware(x.recorded_at))
            )
    return out


def _in_force(
    versions: list[tuple[int, ResultStatus, datetime]], at: datetime
) -> tuple[int, ResultStatus] | None:
    found = None
    for version, status, recorded in versions:
        if recorded <= at:
            found = (version, status)
    return found


def _stored(row: Any, version: int, status: ResultStatus) -> StoredResult:
    return StoredResult(
        id=row.id,
        patient_id=row.patient_id,
        institution=row.institution_code,
        report_no=row.report_no,
        local_code=row.local_code,
        local_name=row.local_name,
        item_code=row.item_code,
        category=Category(row.category),
        status=status,
        performed_at=_aware(row.performed_at),
        issued_at=_aware(row.issued_at),
        version=version,
        mark_scope=row.mark_scope,
        mark_symbol=row.mark_symbol,
    )


def test_the_same_seed_gives_the_same_reminders_and_decisions(filled: Filled) -> None:
    c = filled.container
    reminders, decisions = _rows(c, t.reminder), _rows(c, t.decision)
    assert len(reminders) > 1000
    assert len(decisions) > 500
    with c.engine.begin() as conn:
        conn.execute(delete(t.decision))
        conn.execute(delete(t.reminder))
    synthesize_activity(c, filled.cfg)
    assert _rows(c, t.reminder) == reminders
    assert _rows(c, t.decision) == decisions


def test_every_accepted_decision_took_a_prior_recognizable_when_the_reminder_was_shown(
    filled: Filled,
) -> None:
    c = filled.container
    catalog = c.catalog.get()
    versions = _versions(c)
    d, rem, res = t.decision.c, t.reminder.c, t.result.c
    with c.engine.connect() as conn:
        rows = conn.execute(
            select(
                d.result_version,
                d.saved_fen,
                d.emr_text,
                d.reminder_id,
                rem.at.label("shown_at"),
                rem.institution_code.label("ordering"),
                rem.recognizable,
                *res,
            )
            .join(t.reminder, rem.id == d.reminder_id)
            .join(t.result, res.id == d.result_id)
            .where(d.action == "accepted")
        ).all()
    assert len(rows) > 500
    for row in rows:
        shown_at = _aware(row.shown_at)
        in_force = _in_force(versions[row.id], shown_at)
        assert in_force is not None
        assert in_force[0] == row.result_version
        item = catalog.items[row.item_code]
        province = catalog.province_of(row.ordering)
        assessed = assess_prior(
            item,
            row.ordering,
            shown_at,
            PriorResult(_stored(row, *in_force), UNKNOWN_STUDY),
            catalog.graph,
            exclusions_in_force(item, (province, "NATIONAL"), catalog.exclusions),
        )
        assert assessed.standing is Standing.RECOGNIZABLE, (row.id, assessed.blocking())
        assert row.recognizable >= 1
        assert row.saved_fen == item.price_fen
        assert "医学检查检验互认项目" in row.emr_text
        assert row.report_no in row.emr_text


def test_reminder_counts_are_what_the_rules_give_for_the_priors_stored_at_that_moment(
    filled: Filled,
) -> None:
    c = filled.container
    catalog = c.catalog.get()
    versions = _versions(c)
    with c.engine.connect() as conn:
        results = conn.execute(select(t.result).where(t.result.c.item_code.is_not(None))).all()
        reminders = conn.execute(select(t.reminder).order_by(t.reminder.c.id)).all()
    history: dict[tuple[int, str], list[Any]] = {}
    for r in results:
        history.setdefault((r.patient_id, r.item_code), []).append(r)
    checked = recognizable = 0
    for rem in reminders[::7]:
        at = _aware(rem.at)
        priors = []
        for r in sorted(
            history[(rem.patient_id, rem.item_code)],
            key=lambda r: (_aware(r.performed_at), r.id),
            reverse=True,
        ):
            in_force = _in_force(versions[r.id], at)
            if _aware(r.issued_at) <= at and in_force is not None:
                priors.append(PriorResult(_stored(r, *in_force), UNKNOWN_STUDY))
        item = catalog.items[rem.item_code]
        province = catalog.province_of(rem.institution_code)
        rec = recognizable_priors(
            item,
            rem.institution_code,
            at,
            priors[:PRIORS_PER_ITEM],
            catalog.graph,
            exclusions_in_force(item, (province, "NATIONAL"), catalog.exclusions),
        )
        assert (rem.candidates, rem.recognizable) == (len(rec.all()), len(rec.candidates))
        checked += 1
        recognizable += rem.recognizable > 0
    assert 0 < recognizable < checked  # near-misses and unmarked priors are shown too


def test_decline_reasons_come_from_the_ordering_institutions_negative_list(
    filled: Filled,
) -> None:
    c = filled.container
    catalog = c.catalog.get()
    d = t.decision.c
    with c.engine.connect() as conn:
        rows = conn.execute(select(t.decision).where(d.action == "declined")).all()
    assert len(rows) > 100
    prefixes = set()
    for row in rows:
        reasons = {r.code: r for r in catalog.reasons_for(row.institution_code)}
        reason = reasons[row.reason_code]
        prefixes.add(row.reason_code.split("-")[0])
        assert row.reason_text.startswith(reason.text)
        if reason.requires_free_text:  # 其他情形确需复查的: with what the clinician wrote
            assert len(row.reason_text) > len(reason.text) + 1
        if reason.imaging_only:
            assert catalog.items[row.item_code].category is Category.IMAGING
        assert row.saved_fen == 0
        assert row.emr_text == ""
        assert row.patient_explanation.startswith("您在")
    assert {"HB", "SH"} <= prefixes  # Hebei's six and Shanghai's ten both in use


def test_some_reminders_are_left_without_a_decision(filled: Filled) -> None:
    c = filled.container
    r, d = t.reminder.c, t.decision.c
    with c.engine.connect() as conn:
        ignored = conn.scalar(
            select(func.count())
            .select_from(t.reminder)
            .where(r.recognizable > 0, ~select(d.id).where(d.reminder_id == r.id).exists())
        )
        total = conn.scalar(select(func.count()).select_from(t.reminder).where(r.recognizable > 0))
    assert ignored is not None
    assert total is not None
    assert 0 < ignored < total * 0.3


def _flagged_institutions(c: Container, province: str) -> set[str]:
    principal = Principal(2, "reg", "省卫健委", Role.REGULATOR, jurisdiction=province)
    return {f.key for f in c.monitoring.outliers(principal, WHOLE, Metric.RECOGNITION_RATIO)}


def test_the_planted_low_accepting_hospital_is_flagged_and_its_peers_are_not(
    filled: Filled,
) -> None:
    c = filled.container
    planted = [p for p in filled.planted if p.kind == "institution"]
    assert [c.catalog.get().province_of(p.institution) for p in planted] == ["HE"]
    findings = c.monitoring.outliers(
        NATIONAL, WHOLE, Metric.RECOGNITION_RATIO, scope="HE", only_flagged=False
    )
    hebei_tertiary = [f for f in findings if f.peer_group == "河北省·三级"]
    assert len(hebei_tertiary) >= 6
    assert {f.key for f in hebei_tertiary if f.flagged} == {planted[0].institution}
    assert _flagged_institutions(c, "HE") == {planted[0].institution}


def test_the_planted_clinician_is_flagged_among_the_clinicians_of_the_hospital(
    filled: Filled,
) -> None:
    c = filled.container
    (planted,) = [p for p in filled.planted if p.kind == "clinician"]
    # A small world: a handful of recognizable reminders per clinician.
    findings = c.monitoring.outliers(
        NATIONAL,
        WHOLE,
        Metric.RECOGNITION_RATIO,
        institution=planted.institution,
        min_volume=5,
        only_flagged=False,
    )
    assert len(findings) >= 5
    assert {f.key for f in findings if f.flagged} == {planted.clinician}
    with c.engine.connect() as conn:
        reasons: dict[str, int] = dict(
            conn.execute(
                select(t.decision.c.reason_code, func.count())
                .where(t.decision.c.clinician == planted.clinician)
                .where(t.decision.c.institution_code == planted.institution)
                .group_by(t.decision.c.reason_code)
            ).all()
        )
    assert reasons.get("HB-6", 0) >= 0.9 * sum(reasons.values())


def _repeats_without_decision(c: Container) -> int:
    """Monitoring's rule counted straight from the tables: a result repeated inside the
    item's time limit after a result at another institution, no decision recorded."""
    catalog = c.catalog.get()
    with c.engine.connect() as conn:
        results = conn.execute(select(t.result).where(t.result.c.item_code.is_not(None))).all()
        decisions = conn.execute(select(t.decision)).all()
    by_key: dict[tuple[int, str], list[Any]] = {}
    for r in results:
        if r.status in COUNTED_RESULT_STATUSES:
            by_key.setdefault((r.patient_id, r.item_code), []).append(r)
    decided: dict[tuple[int, str, str], list[datetime]] = {}
    for d in decisions:
        decided.setdefault((d.patient_id, d.item_code, d.institution_code), []).append(_aware(d.at))
    count = 0
    for (patient, code), rs in by_key.items():
        limit = catalog.items[code].time_limit
        for r in rs:
            since = _aware(r.performed_at) - limit
            prior = any(
                o.institution_code != r.institution_code
                and since <= _aware(o.performed_at) < _aware(r.performed_at)
                for o in rs
            )
            recorded = any(
                since <= at <= _aware(r.issued_at)
                for at in decided.get((patient, code, r.institution_code), [])
            )
            count += prior and not recorded
    return count


def test_monitoring_totals_after_the_fill_equal_the_counts_in_the_tables(
    filled: Filled,
) -> None:
    c = filled.container
    total = Counters()
    for _, counters in c.monitoring._store.totals(
        Dimension.INSTITUTION, None, WHOLE.start, WHOLE.end
    ):
        total += counters
    r, d = t.reminder.c, t.decision.c
    with c.engine.connect() as conn:
        direct = Counters(
            reminders=conn.scalar(select(func.count()).select_from(t.reminder)) or 0,
            reminders_recognizable=conn.scalar(
                select(func.count()).select_from(t.reminder).where(r.recognizable > 0)
            )
            or 0,
            accepted=conn.scalar(
                select(func.count()).select_from(t.decision).where(d.action == "accepted")
            )
            or 0,
            declined=conn.scalar(
                select(func.count()).select_from(t.decision).where(d.action == "declined")
            )
            or 0,
            saved_fen=conn.scalar(select(func.sum(d.saved_fen))) or 0,
            repeats_unrecorded=_repeats_without_decision(c),
        )
    assert total == direct
    assert direct.repeats_unrecorded > 0


# ---------------------------------------------------------------- the command
runner = CliRunner()


@pytest.fixture
def cli_container(container: Container, monkeypatch: pytest.MonkeyPatch) -> Container:
    monkeypatch.setattr(cli, "get_settings", lambda: container.settings)
    return container


def _count(c: Container, table: Any) -> int:
    with c.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def test_huren_synth_writes_the_activity_by_default(cli_container: Container) -> None:
    out = runner.invoke(
        cli.app, ["--seed", "3", "--results", "1500", "--institutions", "40", "--batch-size", "500"]
    )
    assert out.exit_code == 0, out.output
    assert "互认提醒" in out.output
    assert _count(cli_container, t.reminder) > 0
    assert _count(cli_container, t.decision) > 0


def test_huren_synth_without_activity_writes_no_reminders(cli_container: Container) -> None:
    out = runner.invoke(
        cli.app, ["--seed", "3", "--results", "300", "--institutions", "20", "--no-activity"]
    )
    assert out.exit_code == 0, out.output
    assert _count(cli_container, t.result) == 300
    assert (_count(cli_container, t.reminder), _count(cli_container, t.decision)) == (0, 0)


def test_activity_times_lie_inside_the_history_before_monitoring_settles(
    filled: Filled,
) -> None:
    c = filled.container
    with c.engine.connect() as conn:
        latest = max(
            _aware(conn.scalar(select(func.max(t.reminder.c.at)))),
            _aware(conn.scalar(select(func.max(t.decision.c.at)))),
        )
        earliest = _aware(conn.scalar(select(func.min(t.reminder.c.at))))
    assert filled.cfg.start <= earliest
    assert latest <= TEST_NOW - timedelta(hours=1)
