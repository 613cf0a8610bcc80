"""SQLAlchemy 2 typed tables. The database is the source of truth; Redis is rebuilt from it.

Every change to these classes needs an Alembic migration in `migrations/versions/`; a test
compares the migrated schema with this metadata on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import datetime, time
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Time,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .types import (
    AgentRole,
    AttemptState,
    CallbackState,
    CallResult,
    CampaignState,
    ContactState,
    DialMode,
    PhoneType,
    UTCDateTime,
    utcnow,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(cls: type) -> Enum:
    # Stored as plain strings (no native PG enum): identical on both databases, and a new
    # value needs no ALTER TYPE.
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(String(500), default="")
    mode: Mapped[DialMode] = mapped_column(_enum(DialMode))
    state: Mapped[CampaignState] = mapped_column(
        _enum(CampaignState), default=CampaignState.CREATED
    )
    caller_ids: Mapped[list[Any]] = mapped_column(default=list)
    ask_caller_id: Mapped[bool] = mapped_column(Boolean, default=False)
    trunk: Mapped[str | None] = mapped_column(String(200))  # dial string; None: config default
    calling_hours_start: Mapped[time] = mapped_column(Time, default=time(8, 0))
    calling_hours_end: Mapped[time] = mapped_column(Time, default=time(21, 0))
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    treatments: Mapped[dict[str, Any]] = mapped_column(default=dict)  # result -> treatment
    disposition_codes: Mapped[list[Any]] = mapped_column(default=list)
    disposition_required: Mapped[bool] = mapped_column(Boolean, default=False)
    amd_policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    abandon_target: Mapped[float] = mapped_column(Float, default=0.03)
    push_timeout_s: Mapped[int] = mapped_column(Integer, default=30)
    # Progressive only: the record is shown to the reserved agent, who accepts (dialed at
    # once) or rejects (back to the top) within push_timeout_s.
    interaction_preview: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    callback_fallback: Mapped[str] = mapped_column(String(10), default="pool")  # or "wait"
    callback_grace_s: Mapped[int] = mapped_column(Integer, default=300)
    callback_max_days: Mapped[int] = mapped_column(Integer, default=3)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    lists: Mapped[list[ContactList]] = relationship(
        back_populates="campaign", cascade="all, delete-orphan", passive_deletes=True
    )
    agents: Mapped[list[Agent]] = relationship(
        secondary="agent_campaigns", back_populates="campaigns"
    )


class ContactList(Base):
    __tablename__ = "contact_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="lists")
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_lists.id", ondelete="CASCADE"))
    # Stable identity within a campaign: the CSV's id column, else a hash of the row's
    # identity; makes re-import idempotent.
    external_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str | None] = mapped_column(String(64))  # IANA; None: unknown
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict)  # custom case fields
    state: Mapped[ContactState] = mapped_column(_enum(ContactState), default=ContactState.READY)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime | None] = mapped_column()  # earliest next dial (UTC)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    number_index: Mapped[int] = mapped_column(Integer, default=0)  # which number is next
    last_result: Mapped[CallResult | None] = mapped_column(_enum(CallResult))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    numbers: Mapped[list[PhoneNumber]] = relationship(
        back_populates="contact",
        order_by="PhoneNumber.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    __table_args__ = (
        UniqueConstraint("campaign_id", "external_key"),
        Index("ix_contacts_dialable", "campaign_id", "state", "next_at"),
    )


class PhoneNumber(Base):
    __tablename__ = "phone_numbers"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    e164: Mapped[str] = mapped_column(String(20))
    type: Mapped[PhoneType] = mapped_column(_enum(PhoneType), default=PhoneType.OTHER)
    position: Mapped[int] = mapped_column(Integer, default=0)

    contact: Mapped[Contact] = relationship(back_populates="numbers")
    __table_args__ = (
        UniqueConstraint("contact_id", "e164"),
        Index("ix_phone_numbers_e164", "e164"),
    )


class CallAttempt(Base):
    """One dial of one number. Committed before the Originate; its id is the ChannelId."""

    __tablename__ = "call_attempts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    e164: Mapped[str] = mapped_column(String(20))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    server: Mapped[str] = mapped_column(String(64), default="default")  # which bridge owns it
    trunk: Mapped[str | None] = mapped_column(String(200))
    caller_id: Mapped[str | None] = mapped_column(String(80))
    state: Mapped[AttemptState] = mapped_column(_enum(AttemptState), default=AttemptState.CREATED)
    result: Mapped[CallResult | None] = mapped_column(_enum(CallResult))
    hangup_cause: Mapped[int | None] = mapped_column(Integer)
    amd_status: Mapped[str | None] = mapped_column(String(20))
    amd_cause: Mapped[str | None] = mapped_column(String(60))
    # Classification feedback, kept beside the AMD decision above (never overwriting it), so
    # that error rates per campaign and trunk can be measured (outbound.campaigns.feedback).
    # `feedback`: the connected agent's flag ("machine": AMD said human, it was not).
    feedback: Mapped[str | None] = mapped_column(String(20))
    feedback_by: Mapped[str | None] = mapped_column(String(32))  # agent id (kept if deleted)
    feedback_at: Mapped[datetime | None] = mapped_column()
    feedback_note: Mapped[str | None] = mapped_column(String(500))
    # `review`: a supervisor's verdict ("human" / "machine") on a machine-classified call or
    # on an agent's flag; when present it wins over the flag.
    review: Mapped[str | None] = mapped_column(String(20))
    reviewed_by: Mapped[str | None] = mapped_column(String(32))
    reviewed_at: Mapped[datetime | None] = mapped_column()
    review_note: Mapped[str | None] = mapped_column(String(500))
    disposition: Mapped[str | None] = mapped_column(String(60))
    is_callback: Mapped[bool] = mapped_column(Boolean, default=False)
    audit: Mapped[dict[str, Any]] = mapped_column(default=dict)  # which rules allowed the dial
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    originated_at: Mapped[datetime | None] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column()
    connected_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("contact_id", "attempt_no"),
        Index("ix_call_attempts_campaign_created", "campaign_id", "created_at"),
        # Is this agent free (a live call, a call waiting for its disposition)? Asked
        # every tick by every dial mode and by the dashboard.
        Index("ix_call_attempts_agent_state", "agent_id", "state"),
        # At most one live attempt per contact, enforced by the database itself.
        Index(
            "uq_call_attempts_live_contact",
            "contact_id",
            unique=True,
            sqlite_where=text("state != 'ended'"),
            postgresql_where=text("state != 'ended'"),
        ),
    )


class Callback(Base):
    __tablename__ = "callbacks"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column()  # UTC
    personal: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    phone_number_id: Mapped[int | None] = mapped_column(
        ForeignKey("phone_numbers.id", ondelete="SET NULL")
    )
    new_number: Mapped[str | None] = mapped_column(String(20))  # E.164
    new_number_type: Mapped[PhoneType | None] = mapped_column(_enum(PhoneType))
    window_start: Mapped[time | None] = mapped_column(Time)  # contact's local time
    window_end: Mapped[time | None] = mapped_column(Time)
    state: Mapped[CallbackState] = mapped_column(
        _enum(CallbackState), default=CallbackState.PENDING
    )
    created_by: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    attempt_id: Mapped[str | None] = mapped_column(String(36))  # the attempt it was made on
    days_tried: Mapped[int] = mapped_column(Integer, default=0)
    fired_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_callbacks_due", "state", "due_at"),)


class AgentCampaign(Base):
    __tablename__ = "agent_campaigns"

    agent_id: Mapped[str] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # login id, also keypad id
    name: Mapped[str] = mapped_column(String(100))
    extension: Mapped[str] = mapped_column(String(80))  # desk phone, e.g. PJSIP/1001
    role: Mapped[AgentRole] = mapped_column(_enum(AgentRole), default=AgentRole.AGENT)
    password_hash: Mapped[str | None] = mapped_column(String(200))  # argon2
    pin_hash: Mapped[str | None] = mapped_column(String(200))  # argon2
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    failed_pins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    campaigns: Mapped[list[Campaign]] = relationship(
        secondary="agent_campaigns", back_populates="agents"
    )


class DncEntry(Base):
    """Do-not-call: campaign_id None is the global list."""

    __tablename__ = "dnc_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    e164: Mapped[str] = mapped_column(String(20))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(40), default="admin")  # admin/agent/optout/import
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        # Two partial unique indexes: NULL never collides in a plain unique constraint.
        Index(
            "uq_dnc_global",
            "e164",
            unique=True,
            sqlite_where=text("campaign_id IS NULL"),
            postgresql_where=text("campaign_id IS NULL"),
        ),
        Index(
            "uq_dnc_campaign",
            "e164",
            "campaign_id",
            unique=True,
            sqlite_where=text("campaign_id IS NOT NULL"),
            postgresql_where=text("campaign_id IS NOT NULL"),
        ),
    )


class CaseEvent(Base):
    """Case history of a contact: dispositions, DTMF sent, callbacks, notes."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    attempt_id: Mapped[str | None] = mapped_column(String(36))
    agent_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_case_events_contact", "contact_id", "created_at"),)


class OfferState(StrEnum):
    """What became of a record handed to an agent before it was dialed."""

    OPEN = "open"  # the agent sees the case information; not dialed yet
    DIALED = "dialed"  # the agent dialed: the call attempt (attempt_id) carries on
    CALL_LATER = "call_later"  # declined: back to the top of the list
    DO_NOT_CALL = "do_not_call"  # declined: removed, on the campaign's do-not-call list
    EXPIRED = "expired"  # left unanswered past its lease; the record went to another agent
    REJECTED = "rejected"  # push preview: the agent rejected it; back to the top of the list


class Offer(Base):
    """A record handed to an agent before any dial (preview "get record", a callback).

    It holds what no call attempt can, because there is no call yet: who sees which record,
    which caller ID they chose, and how it ended (dialed, declined later / do not call).
    Once dialed, the attempt row carries the interaction (outbound.campaigns.interaction).
    The partial unique indexes keep one open offer per contact and per agent, even if the
    dial queue in Redis is lost and rebuilt."""

    __tablename__ = "offers"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    callback_id: Mapped[int | None] = mapped_column(ForeignKey("callbacks.id", ondelete="SET NULL"))
    e164: Mapped[str | None] = mapped_column(String(20))  # the number a dial would call
    caller_id: Mapped[str | None] = mapped_column(String(80))  # chosen by the agent
    state: Mapped[OfferState] = mapped_column(_enum(OfferState), default=OfferState.OPEN)
    attempt_id: Mapped[str | None] = mapped_column(String(36))  # once dialed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_offers_campaign_created", "campaign_id", "created_at"),
        Index(
            "uq_offers_open_contact",
            "contact_id",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
        Index(
            "uq_offers_open_agent",
            "agent_id",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
    )
