"""Key ceremony records: one signed record per CA key generation (docs/audit.md)

Revision ID: 0009b
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0009b"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_ceremonies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("authority", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.UniqueConstraint("authority", "generation", name="uq_key_ceremonies_generation"),
    )


def downgrade() -> None:
    op.drop_table("key_ceremonies")
