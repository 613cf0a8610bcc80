"""The data model: typed tables, the shared vocabulary, engines and migrations."""

from .db import make_engine, session_factory, transaction, upgrade
from .tables import (
    Agent,
    AgentCampaign,
    Base,
    CallAttempt,
    Callback,
    Campaign,
    CaseEvent,
    Contact,
    ContactList,
    DncEntry,
    PhoneNumber,
)
from .types import (
    AgentRole,
    AttemptState,
    CallbackState,
    CallResult,
    CampaignState,
    ContactState,
    DialMode,
    PhoneType,
    utcnow,
)

__all__ = [
    "Agent",
    "AgentCampaign",
    "AgentRole",
    "AttemptState",
    "Base",
    "CallAttempt",
    "CallResult",
    "Callback",
    "CallbackState",
    "Campaign",
    "CampaignState",
    "CaseEvent",
    "Contact",
    "ContactList",
    "ContactState",
    "DialMode",
    "DncEntry",
    "PhoneNumber",
    "PhoneType",
    "make_engine",
    "session_factory",
    "transaction",
    "upgrade",
    "utcnow",
]
