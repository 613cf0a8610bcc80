"""campaigns.interaction_preview: progressive with an interaction preview

A progressive campaign may show the agent the record before the system dials it: the
record is pushed to the reserved agent (as push preview does, on the voice channel), the
agent accepts (the call is placed at once) or rejects (the record goes back to the top of
the list); no answer within push_timeout_s counts as a reject.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 04:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as b:
        b.add_column(
            sa.Column(
                "interaction_preview", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as b:
        b.drop_column("interaction_preview")
