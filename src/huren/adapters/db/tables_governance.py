"""Governance tables: the QC lifecycle (R8) and the monitoring aggregates (R9).

QC: ``qc_evaluation`` (质量评价 / 室间质评 / 抽查 / 室间比对 per institution × item or
group), ``suspension_proposal`` (暂停互认资质的建议与决定) and ``spot_check_draw``
(双随机一公开抽查). Status changes of qualifications themselves are written to the core
``qualification_event`` table.

Monitoring: counters per month × institution × department × clinician × item, kept up to
date incrementally by a job that remembers the last processed ``reminder`` / ``decision`` /
``result`` id in ``monitoring_cursor`` (see ``adapters/db/governance.py`` for why a
watermark job and not an outbox). ``monitoring_month_inst`` is the same counters without
department and clinician, so that region-wide queries read few rows; ``monitoring_decline``
counts declines by negative-list reason (``monitoring_decline_inst`` the same per
institution only). Months are calendar months in China Standard
Time (UTC+8), stored as the first day of the month.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from huren.adapters.db.tables import Id, UtcDateTime, decision, metadata
from huren.domain.recognition import CLINICIAN_MAX

# ---------------------------------------------------------------- QC lifecycle (R8)
qc_evaluation = Table(
    "qc_evaluation",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=False),
    Column("item_code", String(32), nullable=False, default=""),
    Column("group_code", String(32), nullable=False, default=""),
    # the scope the evaluation qualifies for (province, region, alliance …)
    Column("scope_code", String(32), ForeignKey("scope.code"), nullable=False),
    # evaluation | eqa_round | spot_check | alliance_comparison
    Column("kind", String(24), nullable=False),
    # national_centre | provincial_centre | city_centre | alliance_lead
    Column("organiser", String(24), nullable=False),
    Column("organiser_name", String(100), nullable=False, default=""),
    # what 冀卫医政函〔2025〕7号 suggests "in principle" (原则上) for this level; "" = no suggestion
    Column("suggested_organiser", String(24), nullable=False, default=""),
    Column("round_id", String(64), nullable=False, default=""),
    Column("evaluated_on", Date, nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("score", Float, nullable=True),
    Column("notes", Text, nullable=False, default=""),
    Column("rectification", Text, nullable=False, default=""),
    Column("rectification_accepted_on", Date, nullable=True),
    Column("rectification_accepted_by", String(64), nullable=False, default=""),
    Column("recorded_by", String(64), nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("spot_check_draw_id", Id, nullable=True),
    # qualification ids this failure set to 不合格 (甘: restored when the rectification is accepted)
    Column("removed_qualifications", JSON, nullable=False, default=list),
    Column("proposal_id", Id, nullable=True),
    Index("ix_qc_evaluation_target", "institution_code", "item_code", "group_code", "evaluated_on"),
    Index("ix_qc_evaluation_on", "evaluated_on"),
)

suspension_proposal = Table(
    "suspension_proposal",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=False),
    # item | group | laboratory (all lab items of the institution: 暂停…实验室的互认资质)
    Column("target_kind", String(16), nullable=False),
    Column("item_code", String(32), nullable=False, default=""),
    Column("group_code", String(32), nullable=False, default=""),
    Column("origin", String(8), nullable=False),  # auto | manual
    Column("reason_code", String(40), nullable=False),
    Column("reason_text", Text, nullable=False),
    Column("evidence", JSON, nullable=False, default=list),  # qc_evaluation ids
    # proposed | confirmed | rejected | reinstated
    Column("status", String(16), nullable=False),
    Column("raised_by", String(64), nullable=False),
    Column("raised_at", UtcDateTime(), nullable=False),
    Column("decided_by", String(64), nullable=False, default=""),
    Column("decided_at", UtcDateTime(), nullable=True),
    Column("decision_note", Text, nullable=False, default=""),
    Column("affected", JSON, nullable=False, default=list),  # qualification ids suspended
    Column("reinstated_by", String(64), nullable=False, default=""),
    Column("reinstated_at", UtcDateTime(), nullable=True),
    Column("reinstate_reason", Text, nullable=False, default=""),
    Index("ix_suspension_proposal_status", "status", "raised_at"),
    Index("ix_suspension_proposal_inst", "institution_code"),
)

spot_check_draw = Table(
    "spot_check_draw",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("jurisdiction", String(32), ForeignKey("scope.code"), nullable=False),
    Column("period", String(16), nullable=False),  # e.g. 2026H1
    Column("seed", String(40), nullable=False),
    Column("institution_count", Integer, nullable=False),
    Column("inspectors_per_check", Integer, nullable=False),
    Column("candidates", JSON, nullable=False),  # institution codes drawn from
    Column("inspectors", JSON, nullable=False),  # [{name, institution}]
    Column("drawn", JSON, nullable=False),  # [{institution, inspectors, outcome, notes}]
    Column("created_by", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_spot_check_draw_jur", "jurisdiction", "period"),
)

# ---------------------------------------------------------------- monitoring (R9)


def _counters() -> list[Column[int]]:
    return [
        Column("reminders", BigInteger, nullable=False, default=0),
        Column("reminders_recognizable", BigInteger, nullable=False, default=0),
        Column("accepted", BigInteger, nullable=False, default=0),  # 互认项次
        Column("declined", BigInteger, nullable=False, default=0),
        Column("saved_fen", BigInteger, nullable=False, default=0),
        Column("repeats_unrecorded", BigInteger, nullable=False, default=0),
    ]


monitoring_month = Table(
    "monitoring_month",
    metadata,
    Column("month", Date, primary_key=True),
    Column("institution_code", String(32), primary_key=True),
    Column("department", String(100), primary_key=True),
    Column("clinician", String(CLINICIAN_MAX), primary_key=True),
    Column("item_code", String(32), primary_key=True),
    *_counters(),
    Index("ix_monitoring_month_inst", "institution_code", "month"),
)

monitoring_month_inst = Table(
    "monitoring_month_inst",
    metadata,
    Column("month", Date, primary_key=True),
    Column("institution_code", String(32), primary_key=True),
    Column("item_code", String(32), primary_key=True),
    *_counters(),
)

monitoring_decline = Table(
    "monitoring_decline",
    metadata,
    Column("month", Date, primary_key=True),
    Column("institution_code", String(32), primary_key=True),
    Column("department", String(100), primary_key=True),
    Column("clinician", String(CLINICIAN_MAX), primary_key=True),
    Column("item_code", String(32), primary_key=True),
    Column("reason_code", String(32), primary_key=True),
    Column("declined", BigInteger, nullable=False, default=0),
    Index("ix_monitoring_decline_inst", "institution_code", "month"),
)

# Declines by reason without department, clinician and item: what region-wide "declines by
# reason" reads (a few rows per institution and month instead of one per clinician × item).
monitoring_decline_inst = Table(
    "monitoring_decline_inst",
    metadata,
    Column("month", Date, primary_key=True),
    Column("institution_code", String(32), primary_key=True),
    Column("reason_code", String(32), primary_key=True),
    Column("declined", BigInteger, nullable=False, default=0),
)

monitoring_cursor = Table(
    "monitoring_cursor",
    metadata,
    Column("source", String(16), primary_key=True),  # reminder | decision | result
    Column("last_id", BigInteger, nullable=False, default=0),
    Column("updated_at", UtcDateTime(), nullable=False),
)

# "Tests repeated inside the time limit without any recorded decision": for each new
# result the job asks whether the repeating institution recorded a decision for the
# patient and item; this index on the core ``decision`` table keeps that a point lookup.
Index("ix_decision_patient_item", decision.c.patient_id, decision.c.item_code, decision.c.at)
