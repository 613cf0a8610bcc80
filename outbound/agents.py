"""Agent accounts: ids, extensions, argon2 password and PIN hashes, campaign membership."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .config import timezone_name
from .errors import Conflict, Invalid, NotFound
from .model import Agent, AgentRole, Campaign
from .security import check_password, check_pin, hash_secret

AGENT_ID = re.compile(r"^[0-9]{2,12}\Z")  # typed on a desk phone keypad at log-in
EXTENSION = re.compile(r"^[A-Za-z0-9/_.@+-]{1,80}\Z")


def get_agent(s: Session, agent_id: str) -> Agent:
    a = s.get(Agent, agent_id)
    if a is None:
        raise NotFound(f"no agent with id {agent_id!r}")
    return a


def add_agent(
    s: Session,
    agent_id: str,
    name: str,
    extension: str,
    *,
    password: str | None = None,
    pin: str | None = None,
    role: str = "agent",
    timezone: str = "UTC",
    campaigns: list[Campaign] | None = None,
) -> Agent:
    if not AGENT_ID.match(agent_id):
        raise Invalid("agent id must be 2-12 digits (agents type it on the phone keypad)")
    if not name.strip() or len(name) > 100 or any(c in name for c in "\r\n\0"):
        raise Invalid("agent name must be 1-100 characters without control characters")
    if not EXTENSION.match(extension):
        raise Invalid("extension must be a channel like PJSIP/1001 (letters, digits, / _ . @ + -)")
    try:
        r = AgentRole(role)
    except ValueError:
        raise Invalid("role must be agent or supervisor") from None
    try:
        timezone_name(timezone)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if s.get(Agent, agent_id) is not None:
        raise Conflict(f"agent {agent_id} already exists")
    a = Agent(
        id=agent_id,
        name=name.strip(),
        extension=extension,
        role=r,
        timezone=timezone,
        password_hash=hash_secret(check_password(password)) if password else None,
        pin_hash=hash_secret(check_pin(pin)) if pin else None,
    )
    a.campaigns = list(campaigns or [])
    s.add(a)
    s.flush()
    return a


def set_password(s: Session, agent_id: str, password: str | None, pin: str | None) -> Agent:
    a = get_agent(s, agent_id)
    if password is None and pin is None:
        raise Invalid("give a new password, a new PIN, or both")
    if password is not None:
        a.password_hash = hash_secret(check_password(password))
    if pin is not None:
        a.pin_hash = hash_secret(check_pin(pin))
        a.failed_pins = 0
        a.locked_until = None
    s.flush()
    return a


def list_agents(s: Session) -> list[dict[str, Any]]:
    rows = s.scalars(select(Agent).order_by(Agent.id)).all()
    return [
        {
            "id": a.id,
            "name": a.name,
            "extension": a.extension,
            "role": a.role.value,
            "timezone": a.timezone,
            "campaigns": sorted(c.name for c in a.campaigns),
            "has_password": bool(a.password_hash),
            "has_pin": bool(a.pin_hash),
        }
        for a in rows
    ]
