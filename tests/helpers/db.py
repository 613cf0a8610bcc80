"""Test data in a real (migrated) database: a session factory and contacts to dial."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound.model import (
    Agent,
    Campaign,
    CampaignState,
    Contact,
    ContactList,
    DialMode,
    PhoneNumber,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.sandbox import daytime_zone


def migrated_factory(path: Path) -> sessionmaker[Session]:
    """A session factory on a fresh SQLite file migrated to the newest schema."""
    e = make_engine(f"sqlite:///{path}")
    upgrade(e)
    return session_factory(e)


def add_agent(factory: sessionmaker[Session], agent_id: str, phone: str = "") -> str:
    with transaction(factory) as s:
        s.add(
            Agent(
                id=agent_id,
                name=f"Agent {agent_id}",
                extension=phone or f"Local/{agent_id}@sim-phones",
            )
        )
    return agent_id


DAYTIME = "<daytime>"


def add_contact(
    factory: sessionmaker[Session],
    number: str,
    *,
    campaign: str = "test",
    mode: DialMode = DialMode.PROGRESSIVE,
    timezone: str | None = DAYTIME,
    **campaign_fields: Any,
) -> int:
    """A contact with one number in `campaign` (created running, with its list, when
    missing), dialable now under the default compliance rules: the campaign keeps its
    default calling hours and the contact lives where it is daytime (`timezone`:
    DAYTIME, or a zone name, or None for unknown)."""
    with transaction(factory) as s:
        c = s.scalar(select(Campaign).where(Campaign.name == campaign))
        if c is None:
            campaign_fields.setdefault("state", CampaignState.RUNNING)
            c = Campaign(name=campaign, mode=mode, **campaign_fields)
            s.add(c)
            s.flush()
            s.add(ContactList(campaign_id=c.id, name="l"))
            s.flush()
        lst = s.scalar(select(ContactList.id).where(ContactList.campaign_id == c.id))
        ct = Contact(
            campaign_id=c.id,
            list_id=lst,
            external_key=uuid.uuid4().hex,
            name="X",
            timezone=daytime_zone() if timezone == DAYTIME else timezone,
        )
        s.add(ct)
        s.flush()
        s.add(PhoneNumber(contact_id=ct.id, e164=number))
        return ct.id
