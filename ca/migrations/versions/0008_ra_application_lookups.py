"""RA application lookups that stay fast with millions of applications: by certificate serial
(certificate views, revocation requests, the console's serial search) and by state in id order
(the CA operators' queue of second reviews, oldest first, across every office)

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ra_applications_certificate", "ra_applications", ["certificate_serial"])
    op.create_index("ix_ra_applications_state_id", "ra_applications", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_ra_applications_state_id", table_name="ra_applications")
    op.drop_index("ix_ra_applications_certificate", table_name="ra_applications")
