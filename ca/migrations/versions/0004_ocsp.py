"""OCSP service tables: delegated responder keys, the restricted-authority query log, pre-signer runs

Revision ID: 0004
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ocsp_responder_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("key_label", sa.String(length=64), nullable=False),
        sa.Column("key_spec", sa.String(length=16), nullable=False),
        sa.Column("certificate_id", _BIGID, nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["authority_id"], ["authorities.id"]),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("authority_id", "generation", name="uq_ocsp_responder_generation"),
        sa.UniqueConstraint("key_label"),
    )
    op.create_table(
        "ocsp_query_log",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verifier_id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("cert_status", sa.String(length=16), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["authority_id"], ["authorities.id"]),
        sa.ForeignKeyConstraint(["verifier_id"], ["verifiers.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ocsp_query_log_at", "ocsp_query_log", ["at"])
    op.create_index("ix_ocsp_query_log_verifier", "ocsp_query_log", ["verifier_id", "at"])
    op.create_table(
        "ocsp_presigner_runs",
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due", sa.Integer(), nullable=False),
        sa.Column("signed", sa.Integer(), nullable=False),
        sa.Column("milliseconds", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["authority_id"], ["authorities.id"]),
        sa.PrimaryKeyConstraint("authority_id"),
    )


def downgrade() -> None:
    op.drop_table("ocsp_presigner_runs")
    op.drop_index("ix_ocsp_query_log_verifier", table_name="ocsp_query_log")
    op.drop_index("ix_ocsp_query_log_at", table_name="ocsp_query_log")
    op.drop_table("ocsp_query_log")
    op.drop_table("ocsp_responder_keys")
