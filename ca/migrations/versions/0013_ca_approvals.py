"""Dual control: requests for CA key operations waiting for a second operator (ca/approvals.py)

Revision ID: 0013
Revises: 0012

One row per request: the operation and its arguments as canonical JSON, who requested it and
when, until when it may be approved, its state (pending, approved, executed, rejected, expired),
who decided and when, and what came of it. A new table: no existing row is touched.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ca_approvals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("authority", sa.String(64), nullable=True),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
    )
    op.create_index("ix_ca_approvals_state", "ca_approvals", ["state", "operation"])


def downgrade() -> None:
    op.drop_index("ix_ca_approvals_state", table_name="ca_approvals")
    op.drop_table("ca_approvals")
