"""CRL service: scopes with their number counters, every published CRL, restricted downloads;
a covering partial index over revoked certificates for the streaming CRL build

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_REVOKED = sa.text("status IN ('revoked', 'on_hold')")


def upgrade() -> None:
    op.create_table(
        "crl_scopes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("partition", sa.String(length=32), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["authority_id"], ["authorities.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("authority_id", "partition", name="uq_crl_scopes_authority_partition"),
    )
    op.create_table(
        "crl_published",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("scope_id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("partition", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("base_number", sa.BigInteger(), nullable=True),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_generation_id", sa.Integer(), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["scope_id"], ["crl_scopes.id"]),
        sa.ForeignKeyConstraint(["authority_id"], ["authorities.id"]),
        sa.ForeignKeyConstraint(["key_generation_id"], ["key_generations.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("scope_id", "number", name="uq_crl_published_scope_number"),
    )
    op.create_index(
        "ix_crl_published_latest", "crl_published", ["authority_id", "partition", "kind", "number"]
    )
    op.create_table(
        "crl_downloads",
        sa.Column("id", _BIGID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verifier", sa.String(length=128), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("authority", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_crl_downloads_at", "crl_downloads", ["at"])
    # The CRL build reads exactly the revoked and held certificates of one partition: a partial
    # index holds only those rows, and holding every column the build reads makes it an
    # index-only scan (no random reads into a table of a hundred million certificates).
    op.create_index(
        "ix_certificates_crl_revoked",
        "certificates",
        [
            "authority_id",
            "partition",
            "status",
            "serial",
            "not_after",
            "revoked_at",
            "revocation_reason",
            "invalidity_date",
        ],
        sqlite_where=_REVOKED,
        postgresql_where=_REVOKED,
    )


def downgrade() -> None:
    op.drop_index("ix_certificates_crl_revoked", table_name="certificates")
    op.drop_index("ix_crl_downloads_at", table_name="crl_downloads")
    op.drop_table("crl_downloads")
    op.drop_index("ix_crl_published_latest", table_name="crl_published")
    op.drop_table("crl_published")
    op.drop_table("crl_scopes")
