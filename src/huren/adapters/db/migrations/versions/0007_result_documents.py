"""the laboratory's original report documents: result_document

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

Hospitals' LIS/RIS send the signed, printed report as a PDF (or an image) inside the
result: HL7 v2 OBX of value type ED (encapsulated data, v2.5.1 §2.A.24), FHIR R4
DiagnosticReport.presentedForm. It was named in the acknowledgement as not kept; from
now on it is kept per result version (``result_document``: decoded bytes, type, digest
and size), written in the transaction of the version. A new table only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "result_document",
        sa.Column("result_id", _ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id", "version"],
            ["result_version.result_id", "result_version.version"],
            name=op.f("fk_result_document_result_id_result_version"),
        ),
        sa.PrimaryKeyConstraint("result_id", "version", "seq", name=op.f("pk_result_document")),
    )


def downgrade() -> None:
    op.drop_table("result_document")
