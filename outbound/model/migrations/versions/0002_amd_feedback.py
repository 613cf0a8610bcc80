"""classification feedback beside the AMD decision

An agent's "really a machine" flag and a supervisor's review verdict, each with who, when
and an optional note, on `call_attempts`. Columns are nullable: old rows simply have no
feedback, and the AMD decision columns are left as they were.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS = [
    ("feedback_by", sa.String(length=32)),
    ("feedback_at", sa.DateTime()),
    ("feedback_note", sa.String(length=500)),
    ("review", sa.String(length=20)),
    ("reviewed_by", sa.String(length=32)),
    ("reviewed_at", sa.DateTime()),
    ("review_note", sa.String(length=500)),
]


def upgrade() -> None:
    with op.batch_alter_table("call_attempts", schema=None) as batch_op:
        for name, type_ in NEW_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("call_attempts", schema=None) as batch_op:
        for name, _ in reversed(NEW_COLUMNS):
            batch_op.drop_column(name)
