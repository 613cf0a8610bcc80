"""The one vocabulary of modes, states and call results, shared by code, database and page."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class DialMode(StrEnum):
    PREVIEW = "preview"
    PUSH_PREVIEW = "push_preview"
    PROGRESSIVE = "progressive"
    PREDICTIVE = "predictive"

    @property
    def delivery(self) -> str:
        """The agent-facing delivery mode shown in "My campaigns"."""
        return {
            "preview": "manual",
            "push_preview": "semi-automatic",
            "progressive": "automatic",
            "predictive": "automatic",
        }[self.value]


class CampaignState(StrEnum):
    CREATED = "created"
    LOADED = "loaded"
    RUNNING = "running"
    STOPPED = "stopped"
    UNLOADED = "unloaded"


class PhoneType(StrEnum):
    MOBILE = "mobile"
    WORK = "work"
    HOME = "home"
    OTHER = "other"


class ContactState(StrEnum):
    READY = "ready"  # dialable when its next_at has come and the rules allow
    IN_PROGRESS = "in_progress"  # leased, being previewed or in a call
    CALLBACK = "callback"  # waiting for a scheduled callback
    DONE = "done"  # final result reached
    DNC = "dnc"  # removed: do not call


class CallResult(StrEnum):
    """Every outcome of one attempt, from dial result, classification or agent."""

    ANSWERED = "answered"  # a live person connected to an agent
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    ANSWERING_MACHINE = "answering_machine"
    FAX = "fax"
    SILENCE = "silence"
    ABANDONED = "abandoned"  # live answer, no agent within 2 s
    CONGESTION = "congestion"  # network problem
    INVALID_NUMBER = "invalid_number"
    FAILED = "failed"  # anything else the network refused
    CANCELLED = "cancelled"  # we stopped it before answer
    HANGUP = "hangup"  # answered, contact hung up during classification
    AGENT_CALLBACK = "agent_callback"  # agent scheduled a callback


class AttemptState(StrEnum):
    CREATED = "created"  # row committed, Originate not yet sent
    ORIGINATING = "originating"  # Originate written to the socket
    RINGING = "ringing"
    ANSWERED = "answered"  # answered, being classified
    CONNECTED = "connected"  # in an agent's bridge
    ENDED = "ended"


class CallbackState(StrEnum):
    PENDING = "pending"  # scheduled, not yet due
    QUEUED = "queued"  # due, in the dial queue / offered
    DONE = "done"  # dialed (fired)
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # window missed on every allowed day


class AgentRole(StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError("UTCDateTime needs a datetime")
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a time zone")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
