"""Inserting an audit event touches no index of the chain, and one head again (merges 0009b and 0010)

Revision ID: 0011
Revises: 0009b, 0010

The unique index on ``audit_events.seq`` becomes partial (sealed events only): an event is
inserted with ``seq`` NULL, so the INSERT on the hot path no longer writes an index entry for it
(on SQLite that was one more page per commit). The sealer finds the waiting events (ca.audit_chain):

- on SQLite by rowid after the newest sealed event's id: SQLite has one writer at a time, so ids
  are handed out in commit order and every waiting event has a higher id than every sealed one;
- on PostgreSQL, where an id is drawn before its transaction commits, through a partial index of
  the waiting events' ids (an entry per INSERT, as the full index had, which sealing removes).
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = ("0009b", "0010")
branch_labels = None
depends_on = None

_SEALED = sa.text("seq IS NOT NULL")
_WAITING = sa.text("seq IS NULL")


def upgrade() -> None:
    op.drop_index("ux_audit_events_seq", table_name="audit_events")
    op.create_index(
        "ux_audit_events_seq",
        "audit_events",
        ["seq"],
        unique=True,
        sqlite_where=_SEALED,
        postgresql_where=_SEALED,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_audit_events_unsealed", "audit_events", ["id"], postgresql_where=_WAITING)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_audit_events_unsealed", table_name="audit_events")
    op.drop_index("ux_audit_events_seq", table_name="audit_events")
    op.create_index("ux_audit_events_seq", "audit_events", ["seq"], unique=True)
