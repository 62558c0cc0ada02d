"""The municipalities each registration office serves (ra_office_municipalities), kept by the
registry admin: an office's applications may name only these, so no client value creates a CRL
partition. Existing offices whose code starts with a municipality code (131010001: Chiyoda, 13101)
serve that municipality, as new ones do by default.

Revision ID: 0010
Revises: 0009b
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009b"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)
# The reception office code's form (9 characters, the first five the municipality's code, with a
# prefecture 01-47), as registration.store.default_municipality reads it at this revision.
_OFFICE_CODE = re.compile(r"(0[1-9]|[1-3][0-9]|4[0-7])[0-9]{3}[0-9A-Za-z]{4}", re.ASCII)


def upgrade() -> None:
    served = op.create_table(
        "ra_office_municipalities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("office_id", sa.Integer(), nullable=False),
        sa.Column("municipality_code", sa.String(length=5), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["office_id"], ["ra_offices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("office_id", "municipality_code", name="uq_ra_office_municipalities"),
    )
    offices = sa.table(
        "ra_offices",
        sa.column("id", sa.Integer()),
        sa.column("code", sa.String()),
        sa.column("created_at", When),
    )
    rows = [
        {"office_id": row.id, "municipality_code": row.code[:5], "created_at": row.created_at}
        for row in op.get_bind().execute(sa.select(offices.c.id, offices.c.code, offices.c.created_at))
        if _OFFICE_CODE.fullmatch(row.code)
    ]
    if rows:
        op.bulk_insert(served, rows)


def downgrade() -> None:
    op.drop_table("ra_office_municipalities")
