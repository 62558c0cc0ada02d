"""CRL scopes remember the certificate their issuingDistributionPoint is named from, and each
published CRL which one it used (so a delta repeats its base's IDP byte for byte)

Revision ID: 0003b
Revises: 0003

Idempotent: a database that got these columns from an early cut of 0003 is left as it is.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003b"
down_revision = "0003"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_COLUMNS = (("crl_scopes", "sample_certificate_id"), ("crl_published", "idp_certificate_id"))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, column in _COLUMNS:
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, sa.Column(column, _BIGID, nullable=True))


def downgrade() -> None:
    for table, column in _COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
