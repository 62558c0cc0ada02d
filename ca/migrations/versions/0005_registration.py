"""registration authority: offices, accounts, applications, reviews, revocation requests,
resident events, idempotency keys

Revision ID: 0005
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ra_offices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
    )
    op.create_table(
        "ra_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("office_id", sa.Integer(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("certificate_serial", sa.String(length=40), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("disabled_at", When, nullable=True),
        sa.ForeignKeyConstraint(["office_id"], ["ra_offices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_table(
        "ra_applications",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("office_id", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("authority", sa.String(length=64), nullable=True),
        sa.Column("csr_pem", sa.Text(), nullable=False),
        sa.Column("applicant", sa.Text(), nullable=False),
        sa.Column("resident_key", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("submitted_by", sa.Integer(), nullable=False),
        sa.Column("first_reviewer", sa.Integer(), nullable=True),
        sa.Column("second_reviewer", sa.Integer(), nullable=True),
        sa.Column("rejection_reason", sa.Text(), nullable=True),
        sa.Column("certificate_authority", sa.String(length=64), nullable=True),
        sa.Column("certificate_serial", sa.String(length=40), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("issued_at", When, nullable=True),
        sa.Column("collected_at", When, nullable=True),
        sa.ForeignKeyConstraint(["office_id"], ["ra_offices.id"]),
        sa.ForeignKeyConstraint(["submitted_by"], ["ra_accounts.id"]),
        sa.ForeignKeyConstraint(["first_reviewer"], ["ra_accounts.id"]),
        sa.ForeignKeyConstraint(["second_reviewer"], ["ra_accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ra_applications_office_state", "ra_applications", ["office_id", "state"])
    op.create_index("ix_ra_applications_resident", "ra_applications", ["resident_key"])
    op.create_table(
        "ra_reviews",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("application_id", BigID, nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", When, nullable=False),
        sa.ForeignKeyConstraint(["application_id"], ["ra_applications.id"]),
        sa.ForeignKeyConstraint(["account_id"], ["ra_accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("application_id", "stage", name="uq_ra_reviews_stage"),
    )
    op.create_table(
        "ra_revocation_requests",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("office_id", sa.Integer(), nullable=True),
        sa.Column("authority", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=False),
        sa.Column("reviewed_by", sa.Integer(), nullable=True),
        sa.Column("rejection_reason", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("decided_at", When, nullable=True),
        sa.ForeignKeyConstraint(["office_id"], ["ra_offices.id"]),
        sa.ForeignKeyConstraint(["requested_by"], ["ra_accounts.id"]),
        sa.ForeignKeyConstraint(["reviewed_by"], ["ra_accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_ra_revocation_requests_office_state", "ra_revocation_requests", ["office_id", "state"]
    )
    op.create_table(
        "ra_resident_events",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("sender_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("resident_key", sa.String(length=64), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=24), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("received_at", When, nullable=False),
        sa.ForeignKeyConstraint(["sender_id"], ["ra_accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sender_id", "event_id", name="uq_ra_resident_events_sender_event"),
    )
    op.create_table(
        "ra_idempotency_keys",
        sa.Column("id", BigID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("location", sa.String(length=255), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["ra_accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "key", name="uq_ra_idempotency_account_key"),
    )


def downgrade() -> None:
    op.drop_table("ra_idempotency_keys")
    op.drop_table("ra_resident_events")
    op.drop_index("ix_ra_revocation_requests_office_state", table_name="ra_revocation_requests")
    op.drop_table("ra_revocation_requests")
    op.drop_table("ra_reviews")
    op.drop_index("ix_ra_applications_resident", table_name="ra_applications")
    op.drop_index("ix_ra_applications_office_state", table_name="ra_applications")
    op.drop_table("ra_applications")
    op.drop_table("ra_accounts")
    op.drop_table("ra_offices")
