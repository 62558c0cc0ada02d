"""Per key generation CRLs: the covering index of revoked certificates also holds the key
generation that issued each one; and one head again (merges 0003b, 0004, 0005 and 0006)

Revision ID: 0007
Revises: 0003b, 0004, 0005, 0006

After a key rollover every live generation has CRLs of its own, listing only the certificates
that generation's key signed (docs/crl.md). The CRL build then reads the revoked certificates of
one partition *and one generation*: with ``key_generation_id`` in the partial covering index of
0003 the read stays an index-only scan. (Authorities that never rolled over do not filter on it.)
Rebuilding the index reads the revoked and held rows only.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = ("0003b", "0004", "0005", "0006")
branch_labels = None
depends_on = None

_REVOKED = sa.text("status IN ('revoked', 'on_hold')")
_COLUMNS = [
    "authority_id",
    "partition",
    "status",
    "serial",
    "not_after",
    "revoked_at",
    "revocation_reason",
    "invalidity_date",
]


def _index(columns: list[str]) -> None:
    op.create_index(
        "ix_certificates_crl_revoked",
        "certificates",
        columns,
        sqlite_where=_REVOKED,
        postgresql_where=_REVOKED,
    )


def upgrade() -> None:
    op.drop_index("ix_certificates_crl_revoked", table_name="certificates")
    _index([*_COLUMNS, "key_generation_id"])


def downgrade() -> None:
    op.drop_index("ix_certificates_crl_revoked", table_name="certificates")
    _index(_COLUMNS)
