"""Point-of-care tables beyond the core ``reminder`` / ``decision``: the CDS Hooks cards
handed out, so that feedback (which names only ``card.uuid`` and suggestion ids) can be
recorded as a decision on the right result version (CDS Hooks 2.0 §Feedback)."""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Table

from huren.adapters.db.tables import Id, UtcDateTime, metadata
from huren.domain.recognition import CLINICIAN_MAX

cds_card = Table(
    "cds_card",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("reminder_id", Id, ForeignKey("reminder.id"), nullable=True),
    Column("at", UtcDateTime(), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook_instance", String(64), nullable=False, default=""),
    Column("institution_code", String(32), nullable=False),
    Column("department", String(100), nullable=False, default=""),
    Column("clinician", String(CLINICIAN_MAX), nullable=False, default=""),
    Column("patient_id", Id, nullable=True),
    Column("item_code", String(32), nullable=True),
    Column("draft_order", String(200), nullable=False, default=""),  # ServiceRequest/<id>
    Column("result_id", Id, ForeignKey("result.id"), nullable=True),
    Column("result_version", Integer, nullable=True),
    Column("suggestion_uuid", String(36), nullable=True),
    Column("decision_id", Id, ForeignKey("decision.id"), nullable=True),
    Index("ix_cds_card_at", "at"),
)
