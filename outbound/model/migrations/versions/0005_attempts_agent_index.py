"""call_attempts (agent_id, state) index: "is this agent free?" without a table scan

Every dial mode asks it every tick for every Ready agent (a live call, or an ended
connected call still waiting for its disposition), and so does the dashboard.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 04:35:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_call_attempts_agent_state", "call_attempts", ["agent_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_call_attempts_agent_state", table_name="call_attempts")
