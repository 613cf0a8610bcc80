"""offers: records handed to an agent before any dial

A preview record ("get record") or a callback offered to an agent has no call attempt yet,
so who sees which record, the caller ID they chose and how it ended (dialed, declined
"call later" / "do not call", expired) live here. Partial unique indexes: one open offer
per contact and one per agent.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OPEN = sa.text("state = 'open'")


def upgrade() -> None:
    op.create_table(
        "offers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(length=32), nullable=True),
        sa.Column("callback_id", sa.Integer(), nullable=True),
        sa.Column("e164", sa.String(length=20), nullable=True),
        sa.Column("caller_id", sa.String(length=80), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "open",
                "dialed",
                "call_later",
                "do_not_call",
                "expired",
                name="offerstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempt_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_offers_agent_id_agents"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["callback_id"],
            ["callbacks.id"],
            name=op.f("fk_offers_callback_id_callbacks"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_offers_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_offers_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_offers")),
    )
    with op.batch_alter_table("offers", schema=None) as batch_op:
        batch_op.create_index(
            "ix_offers_campaign_created", ["campaign_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "uq_offers_open_contact",
            ["contact_id"],
            unique=True,
            sqlite_where=OPEN,
            postgresql_where=OPEN,
        )
        batch_op.create_index(
            "uq_offers_open_agent",
            ["agent_id"],
            unique=True,
            sqlite_where=OPEN,
            postgresql_where=OPEN,
        )


def downgrade() -> None:
    with op.batch_alter_table("offers", schema=None) as batch_op:
        batch_op.drop_index("uq_offers_open_agent", sqlite_where=OPEN, postgresql_where=OPEN)
        batch_op.drop_index("uq_offers_open_contact", sqlite_where=OPEN, postgresql_where=OPEN)
        batch_op.drop_index("ix_offers_campaign_created")
    op.drop_table("offers")
