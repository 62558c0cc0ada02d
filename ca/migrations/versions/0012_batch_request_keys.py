"""Bulk-issuance lines have an identity, and rows left ``signing`` are found without a scan

Revision ID: 0012
Revises: 0011

- ``certificates.request_key``: the identity of the ``kakuin issue --batch`` line a certificate
  was issued for (ca.bulk.line_identity, a SHA-256), NULL for every other certificate. Unique per
  issuer among rows that are not ``failed`` (a partial unique index): a line is issued at most
  once, and a line whose row failed (never signed) can be issued anew.
- ``ix_certificates_signing``: a partial index of the rows still ``signing`` (a handful, or none),
  where the reconciler (ca.reconcile) finds what a killed process left without reading every
  certificate.

Adding a nullable column rewrites no row on either database; each index is built by one scan and
holds no entry for existing rows.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_KEYED = sa.text("request_key IS NOT NULL AND status <> 'failed'")
_SIGNING = sa.text("status = 'signing'")


def upgrade() -> None:
    op.add_column("certificates", sa.Column("request_key", sa.String(length=64), nullable=True))
    op.create_index(
        "uq_certificates_request_key",
        "certificates",
        ["authority_id", "request_key"],
        unique=True,
        sqlite_where=_KEYED,
        postgresql_where=_KEYED,
    )
    op.create_index(
        "ix_certificates_signing",
        "certificates",
        ["created_at"],
        sqlite_where=_SIGNING,
        postgresql_where=_SIGNING,
    )


def downgrade() -> None:
    op.drop_index("ix_certificates_signing", table_name="certificates")
    op.drop_index("uq_certificates_request_key", table_name="certificates")
    op.drop_column("certificates", "request_key")
