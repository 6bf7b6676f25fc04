"""Core schema: master data, accounts, patients, intake and results, point of care,
audit and outbox. One schema for SQLite and PostgreSQL; Alembic migrations are generated
from this metadata (``make migration``). Areas with their own tables (imaging, QC,
monitoring, sharing) keep them in ``tables_<area>.py`` on the same ``metadata``.

Times are stored as timezone-aware UTC (``DateTime(timezone=True)``); money in 分 (fen).
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from huren.domain.recognition import CLINICIAN_MAX

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends. SQLite keeps no zone and hands
    back naive values; this type stores UTC and returns aware datetimes everywhere, and
    refuses naive input so that a local time cannot slip in unnoticed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: HuRen stores timezone-aware UTC times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


# An integer primary key that is BIGINT on PostgreSQL and the rowid alias on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")


def _ts(name: str, nullable: bool = True, **kw: object) -> Column[object]:
    return Column(name, UtcDateTime(), nullable=nullable, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- master data (R1, R2)
scope = Table(
    "scope",
    metadata,
    Column("code", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("parent", String(32), ForeignKey("scope.code"), nullable=True),
    Column("abbreviation", String(16), nullable=False, default=""),
)

scope_member = Table(
    "scope_member",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("scope_code", String(32), ForeignKey("scope.code"), nullable=False, index=True),
    Column("member_scope", String(32), ForeignKey("scope.code"), nullable=True),
    Column("member_institution", String(32), nullable=True),
    UniqueConstraint("scope_code", "member_scope", "member_institution"),
)

institution = Table(
    "institution",
    metadata,
    Column("code", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("level", String(16), nullable=False),
    Column("public", Boolean, nullable=False, default=True),
    Column("jurisdiction", String(32), ForeignKey("scope.code"), nullable=False, index=True),
    Column("address", String(300), nullable=False, default=""),
    # DICOM AE titles accepted from this institution's PACS (comma separated)
    Column("ae_titles", String(300), nullable=False, default=""),
)

department = Table(
    "department",
    metadata,
    Column("institution_code", String(32), ForeignKey("institution.code"), primary_key=True),
    Column("code", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
)

item = Table(
    "item",
    metadata,
    Column("code", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("category", String(16), nullable=False),
    Column("group_code", String(32), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("body_part", String(64), nullable=False, default=""),
    Column("specimen", String(64), nullable=False, default=""),
    Column("loinc", String(32), nullable=False, default=""),
    Column("time_limit_hours", Integer, nullable=False),
    Column("price_fen", Integer, nullable=False, default=0),
    Column("quality", JSON, nullable=False, default=dict),
)

item_list_version = Table(
    "item_list_version",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("jurisdiction", String(32), ForeignKey("scope.code"), nullable=False),
    Column("version", String(32), nullable=False),
    Column("effective_from", Date, nullable=False),
    Column("effective_to", Date, nullable=True),
    Column("published_at", UtcDateTime(), nullable=True),
    UniqueConstraint("jurisdiction", "version"),
)

item_list_entry = Table(
    "item_list_entry",
    metadata,
    Column("version_id", Id, ForeignKey("item_list_version.id"), primary_key=True),
    Column("item_code", String(32), ForeignKey("item.code"), primary_key=True),
)

qualification = Table(
    "qualification",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=False),
    Column("item_code", String(32), nullable=False, default=""),
    Column("group_code", String(32), nullable=False, default=""),
    Column("scope_code", String(32), ForeignKey("scope.code"), nullable=False),
    Column("basis", String(32), nullable=False),
    Column("valid_from", Date, nullable=False),
    Column("valid_to", Date, nullable=True),
    Column("status", String(16), nullable=False),
    _ts("updated_at", nullable=False),
    Index("ix_qualification_inst_item", "institution_code", "item_code"),
)

qualification_event = Table(
    "qualification_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("qualification_id", Id, ForeignKey("qualification.id"), nullable=False, index=True),
    _ts("at", nullable=False),
    Column("actor", String(64), nullable=False),
    Column("old_status", String(16), nullable=True),
    Column("new_status", String(16), nullable=False),
    Column("reason", Text, nullable=False, default=""),
)

negative_reason = Table(
    "negative_reason",
    metadata,
    Column("jurisdiction", String(32), primary_key=True),
    Column("code", String(32), primary_key=True),
    Column("number", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("source", String(200), nullable=False),
    Column("imaging_only", Boolean, nullable=False, default=False),
    Column("requires_free_text", Boolean, nullable=False, default=False),
)

item_exclusion = Table(
    "item_exclusion",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("jurisdiction", String(32), nullable=False),
    Column("item_code", String(32), ForeignKey("item.code"), nullable=False),
    Column("reason", Text, nullable=False),
    Column("only_within_scope", String(32), nullable=False, default=""),
)

mark_symbol = Table(
    "mark_symbol",
    metadata,
    Column("scope_code", String(32), ForeignKey("scope.code"), primary_key=True),
    Column("category", String(16), primary_key=True),  # "" = every category
    Column("symbol", String(32), nullable=False),
    Column("symbol_en", String(32), nullable=False, default=""),
)

code_map = Table(
    "code_map",
    metadata,
    Column("institution_code", String(32), ForeignKey("institution.code"), primary_key=True),
    Column("local_code", String(64), primary_key=True),
    Column("unified_code", String(32), ForeignKey("item.code"), nullable=False),
    Column("local_name", String(200), nullable=False, default=""),
    _ts("updated_at", nullable=False),
)

# One row, raised by triggers (migration 0002) in every transaction that writes a table
# the catalog is built from: every process's CatalogCache sees a change within a second,
# whichever process or tool made it, and rebuilds only then.
catalog_version = Table(
    "catalog_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("n", BigInteger, nullable=False),
)

# ---------------------------------------------------------------- accounts
account = Table(
    "account",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("display_name", String(100), nullable=False),
    Column("role", String(32), nullable=False),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=True),
    Column("jurisdiction", String(32), ForeignKey("scope.code"), nullable=True),
    Column("department", String(32), nullable=True),
    Column("patient_id", Id, nullable=True),
    Column("password_hash", String(200), nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    _ts("created_at", nullable=False),
)

api_key = Table(
    "api_key",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("account.id"), nullable=False),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("key_hash", String(200), nullable=False),
    Column("label", String(100), nullable=False, default=""),
    _ts("created_at", nullable=False),
    _ts("revoked_at"),
)

# CDS Hooks 2.0 §Trusting CDS Clients: a CDS client (an HIS) signs a JWT with its own key;
# its issuer and public JWK Set are registered here, bound to the institution's interface
# account, whose principal the calls act as.
cds_client = Table(
    "cds_client",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("issuer", String(255), nullable=False, unique=True),
    Column("account_id", Id, ForeignKey("account.id"), nullable=False),
    Column("jwks", Text, nullable=False),
    Column("jku", String(500), nullable=False, default=""),
    Column("label", String(100), nullable=False, default=""),
    _ts("created_at", nullable=False),
    _ts("revoked_at"),
)

# Who created, deactivated or changed an account, an API key or a CDS client, and when
# (migration 0008): written in the transaction of the change itself, so that neither is
# kept without the other. ``account_id`` and ``institution_code`` are the account changed
# (its institution when the change was made); ``actor_*`` who changed it — an account, the
# server's command line (``actor`` 命令行, with the OS user), or a named system part. The
# subject is a key's prefix, a client's issuer or a username; never a key or a hash.
account_event = Table(
    "account_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    Column("actor_account_id", Id, nullable=True),
    Column("actor", String(64), nullable=False),
    Column("actor_name", String(100), nullable=False),
    Column("actor_role", String(32), nullable=False),
    Column("actor_os_user", String(64), nullable=False, default=""),
    Column("account_id", Id, ForeignKey("account.id"), nullable=False),
    Column("institution_code", String(32), nullable=True),
    Column("action", String(32), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("detail", String(500), nullable=False, default=""),
    Index("ix_account_event_inst_id", "institution_code", "id"),
)

# The ``jti`` of every client JWT accepted, kept until its ``exp``: a second use is a
# replay (CDS Hooks 2.0: "jti … used to protect against replay attacks").
cds_client_jti = Table(
    "cds_client_jti",
    metadata,
    Column("issuer", String(255), primary_key=True),
    Column("jti", String(255), primary_key=True),
    _ts("expires_at", nullable=False),
)

# ---------------------------------------------------------------- patients (R4)
patient = Table(
    "patient",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name_enc", Text, nullable=False, default=""),
    Column("name_masked", String(64), nullable=False, default=""),
    Column("sex", String(1), nullable=False, default=""),
    Column("birth_date", Date, nullable=True),
    # Indexed: finding the patients merged into one (the point-of-care check reads a
    # patient's whole family on every order) must not scan the patient table.
    Column("merged_into", Id, ForeignKey("patient.id"), nullable=True, index=True),
    _ts("created_at", nullable=False),
)

patient_identifier = Table(
    "patient_identifier",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("patient_id", Id, ForeignKey("patient.id"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # national_id | insurance | health_card | mrn
    Column("assigner", String(32), nullable=False, default=""),  # institution for MRN
    Column("value_hash", String(64), nullable=False),
    Column("value_enc", Text, nullable=False),
    Column("value_masked", String(64), nullable=False),
    UniqueConstraint("kind", "assigner", "value_hash"),
)

patient_link_event = Table(
    "patient_link_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(16), nullable=False),  # link | merge | unmerge
    Column("from_patient", Id, ForeignKey("patient.id"), nullable=False),
    Column("to_patient", Id, ForeignKey("patient.id"), nullable=False),
    Column("reason", Text, nullable=False),
)

# ---------------------------------------------------------------- intake (R3)
inbound_message = Table(
    "inbound_message",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("received_at", nullable=False),
    Column("channel", String(16), nullable=False),  # hl7v2-mllp | hl7v2-http | fhir | bulk | dicom
    Column("institution_code", String(32), nullable=True, index=True),
    Column("content_hash", String(64), nullable=False),
    Column("control_id", String(64), nullable=False, default=""),
    Column("status", String(16), nullable=False),  # accepted | rejected | partial
    Column("error", Text, nullable=False, default=""),
    Column("response", Text, nullable=False, default=""),
    # The message as received, UTF-8 and deflated (``deflate_message``).
    Column("raw_deflated", LargeBinary, nullable=False, default=b""),
    Index("ix_inbound_message_hash", "content_hash"),
    # The connection status of many institutions at once (``connection_statuses``): the
    # counts of a window read from the index alone (migration 0011).
    Index("ix_inbound_message_inst_received", "institution_code", "received_at", "status"),
)


# Messages are kept deflated (zlib, level 1): a FHIR Bundle of ten lab panels is 90 KB of
# JSON and deflates to a few KB, an HL7 ORU to about half. Kept as text, the messages
# were most of what a SQLite store wrote for FHIR intake (89 of 134 MB for 100,000
# Observations; storing them cost a fifth of the intake time); the deflating costs
# 0.09 ms a Bundle. PostgreSQL compresses large text itself (TOAST), but with pglz,
# which is slower, and its TOAST gives up at once on data already deflated.
def deflate_message(raw: str | bytes) -> bytes:
    """``inbound_message.raw_deflated`` of a message: its UTF-8, deflated; b"" for none."""
    data = raw.encode() if isinstance(raw, str) else raw
    return zlib.compress(data, 1) if data else b""


def inflate_message(stored: bytes) -> str:
    """The text of a kept message; bytes that were not UTF-8 as replacement characters."""
    return zlib.decompress(stored).decode("utf-8", "replace") if stored else ""


result = Table(
    "result",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("patient_id", Id, ForeignKey("patient.id"), nullable=False),
    Column("institution_code", String(32), ForeignKey("institution.code"), nullable=False),
    Column("department", String(100), nullable=False, default=""),
    Column("report_no", String(64), nullable=False),
    Column("local_code", String(64), nullable=False),
    Column("local_name", String(200), nullable=False, default=""),
    Column("item_code", String(32), nullable=True),  # unified; NULL = unmapped (对码缺失)
    Column("category", String(16), nullable=False),
    Column("status", String(24), nullable=False),
    _ts("performed_at", nullable=False),
    _ts("issued_at", nullable=False),
    Column("performer", String(100), nullable=False, default=""),
    Column("signer", String(100), nullable=False, default=""),
    Column("findings", Text, nullable=False, default=""),  # 检查所见 / 检验结果
    Column("conclusion", Text, nullable=False, default=""),  # 诊断结论 (not recognized)
    Column("accession_number", String(64), nullable=False, default=""),
    Column("study_uid", String(128), nullable=False, default=""),
    Column("mark_scope", String(32), nullable=True),
    Column("mark_symbol", String(32), nullable=True),
    Column("version", Integer, nullable=False, default=1),
    Column("content_hash", String(64), nullable=False),
    Column("source_message_id", Id, nullable=True),
    _ts("updated_at", nullable=False),
    # The sender's comment on the report (HL7 v2 NTE after OBR); migration 0004.
    Column("comment", Text, nullable=False, default="", server_default=""),
    UniqueConstraint("institution_code", "report_no", "local_code"),
    Index("ix_result_patient_item", "patient_id", "item_code", "performed_at"),
    Index("ix_result_updated", "updated_at"),
)

result_version = Table(
    "result_version",
    metadata,
    Column("result_id", Id, ForeignKey("result.id"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("status", String(24), nullable=False),
    _ts("recorded_at", nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("snapshot", JSON, nullable=False),
)

observation = Table(
    "observation",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("result_id", Id, ForeignKey("result.id"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("code", String(64), nullable=False),
    Column("loinc", String(32), nullable=False, default=""),
    Column("name", String(200), nullable=False, default=""),
    Column("value_type", String(8), nullable=False),
    Column("value_num", Float, nullable=True),
    Column("value_text", Text, nullable=False, default=""),
    Column("unit", String(32), nullable=False, default=""),
    Column("ref_low", Float, nullable=True),
    Column("ref_high", Float, nullable=True),
    Column("ref_text", String(100), nullable=False, default=""),
    Column("flag", String(8), nullable=False, default=""),
    # The sender's comment on the value (HL7 v2 NTE after OBX, FHIR Observation.note);
    # migration 0004.
    Column("comment", Text, nullable=False, default="", server_default=""),
)

# The laboratory's original report documents of a result version (HL7 v2 OBX of type ED,
# v2.5.1 §2.A.24; FHIR R4 DiagnosticReport.presentedForm), as sent, decoded; migration
# 0007. Written in the transaction of the version; each version keeps its own.
result_document = Table(
    "result_document",
    metadata,
    Column("result_id", Id, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),  # 1, 2 … in the order sent
    Column("content_type", String(64), nullable=False),  # application/pdf, image/jpeg|png
    Column("title", String(200), nullable=False, default=""),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    ForeignKeyConstraint(
        ["result_id", "version"], ["result_version.result_id", "result_version.version"]
    ),
)

# ---------------------------------------------------------------- point of care (R5)
reminder = Table(
    "reminder",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    Column("channel", String(16), nullable=False),  # cds-hooks | rest | workbench
    Column("institution_code", String(32), nullable=False),
    Column("department", String(100), nullable=False, default=""),
    Column("clinician", String(CLINICIAN_MAX), nullable=False, default=""),
    Column("patient_id", Id, nullable=True),
    Column("item_code", String(32), nullable=True),
    Column("local_code", String(64), nullable=False, default=""),
    Column("candidates", Integer, nullable=False, default=0),
    Column("recognizable", Integer, nullable=False, default=0),
    Column("request_id", String(64), nullable=False, default=""),
    Index("ix_reminder_at", "at"),
)

decision = Table(
    "decision",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("reminder_id", Id, ForeignKey("reminder.id"), nullable=True),
    _ts("at", nullable=False),
    Column("institution_code", String(32), nullable=False),
    Column("department", String(100), nullable=False, default=""),
    Column("clinician", String(CLINICIAN_MAX), nullable=False, default=""),
    Column("patient_id", Id, nullable=True),
    Column("item_code", String(32), nullable=False),
    Column("result_id", Id, ForeignKey("result.id"), nullable=True),
    Column("result_version", Integer, nullable=True),
    Column("action", String(16), nullable=False),  # accepted | declined
    Column("reason_code", String(32), nullable=False, default=""),
    Column("reason_text", Text, nullable=False, default=""),
    Column("saved_fen", Integer, nullable=False, default=0),
    Column("emr_text", Text, nullable=False, default=""),
    Column("patient_explanation", Text, nullable=False, default=""),
    Column("external_report", JSON, nullable=True),  # a report the patient brought (冀)
    Index("ix_decision_at", "at"),
    Index("ix_decision_inst_at", "institution_code", "at"),
    # a patient's decisions of the last day, read when an order is opened again (0010)
    Index("ix_decision_patient_at", "patient_id", "at"),
)

# ---------------------------------------------------------------- audit and outbox
audit_event = Table(
    "audit_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    Column("account_id", Id, nullable=True),
    Column("actor", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("institution_code", String(32), nullable=True),
    Column("patient_id", Id, nullable=True, index=True),
    Column("result_id", Id, nullable=True),
    Column("action", String(32), nullable=False),
    Column("purpose", String(200), nullable=False, default=""),
    Column("outcome", String(16), nullable=False, default="ok"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("at", nullable=False),
    Column("topic", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    _ts("processed_at"),
    Index("ix_outbox_pending", "processed_at", "id"),
)
