"""Tables of the sharing-and-trust area (R6, R7): correction requests, inbox
notifications, and the patient portal's bindings and one-time codes. Reads are audited
in the core ``audit_event`` table; notifications are also written to the core ``outbox``.
And the rate-limit counters every server process shares."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, String, Table, Text

from huren.adapters.db.tables import Id, UtcDateTime, metadata


def _ts(name: str, nullable: bool = True) -> Column[object]:
    return Column(name, UtcDateTime(), nullable=nullable)


# 纠错申请 (国卫医政发〔2024〕37号 三(三) 纠错及反馈机制)
correction_request = Table(
    "correction_request",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _ts("filed_at", nullable=False),
    Column("requester_account_id", Id, ForeignKey("account.id"), nullable=False),
    Column("requester_role", String(32), nullable=False),
    Column("requester_institution", String(32), nullable=True),
    Column("result_id", Id, ForeignKey("result.id"), nullable=False, index=True),
    Column("result_version", Integer, nullable=False),
    Column("producing_institution", String(32), nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(16), nullable=False),  # open | accepted | rejected
    _ts("due_at", nullable=False),
    _ts("resolved_at"),
    Column("resolver_account_id", Id, ForeignKey("account.id"), nullable=True),
    Column("resolution", Text, nullable=False, default=""),
    Column("new_version", Integer, nullable=True),
    Index("ix_correction_request_queue", "producing_institution", "status", "due_at"),
)

# 站内消息: one row per recipient account.
notification = Table(
    "notification",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("account.id"), nullable=False),
    _ts("created_at", nullable=False),
    Column("kind", String(32), nullable=False),
    Column("title", String(200), nullable=False),
    Column("body", Text, nullable=False, default=""),
    Column("result_id", Id, nullable=True),
    Column("correction_id", Id, ForeignKey("correction_request.id"), nullable=True),
    _ts("read_at"),
    Index("ix_notification_inbox", "account_id", "read_at", "id"),
)

# 患者端: an account bound to a patient by an institution, with the mobile number that
# receives one-time codes (checked against the ID card at the counter).
portal_binding = Table(
    "portal_binding",
    metadata,
    Column("account_id", Id, ForeignKey("account.id"), primary_key=True),
    Column("patient_id", Id, ForeignKey("patient.id"), nullable=False, index=True),
    Column("identifier_hash", String(64), nullable=False, unique=True),
    Column("phone_enc", Text, nullable=False),
    Column("phone_masked", String(32), nullable=False),
    Column("bound_by", Id, ForeignKey("account.id"), nullable=False),
    Column("bound_institution", String(32), nullable=False),
    _ts("bound_at", nullable=False),
)

otp_challenge = Table(
    "otp_challenge",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("identifier_hash", String(64), nullable=False),
    Column("account_id", Id, ForeignKey("account.id"), nullable=True),  # NULL: unknown ID
    Column("code_hash", String(64), nullable=False),
    _ts("created_at", nullable=False),
    _ts("expires_at", nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    _ts("consumed_at"),
    Index("ix_otp_challenge_ident", "identifier_hash", "created_at"),
)

# Rate limits shared by every server process (``huren.services.ratelimit``): events per
# key (e.g. ``lookup:<account>``, ``login:<user>|<address>``) in millisecond buckets. Rows
# of a key leave with its next hit once out of its window; ``expires_ms`` lets the
# occasional sweep drop keys that are never hit again.
rate_counter = Table(
    "rate_counter",
    metadata,
    Column("bucket_key", String(200), primary_key=True),
    Column("bucket_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("events", Integer, nullable=False),
    Column("expires_ms", BigInteger, nullable=False, index=True),
)
