"""CDS clients that authenticate with their own signed JWT

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

CDS Hooks 2.0 §Trusting CDS Clients: an HIS signs a JWT with its private key and sends
it as ``Authorization: Bearer``; the service verifies it with the client's public JWK
Set, communicated out of band. ``cds_client`` registers each client's issuer and keys,
bound to its institution's interface account; ``cds_client_jti`` keeps each accepted
token's ``jti`` until it expires, so that a replay is refused. New tables only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cds_client",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("jwks", sa.Text(), nullable=False),
        sa.Column("jku", sa.String(length=500), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_cds_client_account_id_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_client")),
        sa.UniqueConstraint("issuer", name=op.f("uq_cds_client_issuer")),
    )
    op.create_table(
        "cds_client_jti",
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name=op.f("pk_cds_client_jti")),
    )


def downgrade() -> None:
    op.drop_table("cds_client_jti")
    op.drop_table("cds_client")
