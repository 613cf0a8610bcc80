"""Agent accounts: ids, extensions, argon2 password and PIN hashes, campaign membership;
the desk-phone log-in check (`verify_pin`, `phone_of`) and its lockout (`PinGuard`)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import names
from .config import timezone_name
from .errors import Conflict, Invalid, NotFound
from .model import Agent, AgentRole, Campaign
from .security import check_password, check_pin, hash_secret, verify_secret

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


# ------------------------------------------------------------------ desk-phone log-in
# A device as Asterisk names its channels: technology/resource (PJSIP/1001,
# Local/1001@sim-phones); the same shape sessions originate and `add_agent` accepts.
PHONE = re.compile(r"^[A-Za-z][A-Za-z0-9]*/[A-Za-z0-9_.@+-]{1,76}\Z")
# What Asterisk appends to a device to name one call: -<8 hex digits>, ;1/;2 for Local.
_CALL_SUFFIX = re.compile(r"-[0-9a-f]{8}(;[12])?\Z")


def phone_of(channel: str) -> str | None:
    """The device a channel belongs to: ``PJSIP/1001-0000002a`` -> ``PJSIP/1001``,
    ``Local/1001@sim-phones-0000002a;1`` -> ``Local/1001@sim-phones``; None when the name
    is no device channel. The channel name (not CALLERID(num)) identifies a phone: Asterisk
    builds it from the authenticated endpoint, while a caller ID is whatever the phone or
    the PBX dialplan put there."""
    m = _CALL_SUFFIX.search(channel)
    if m is None:
        return None
    device = channel[: m.start()]
    return device if PHONE.match(device) else None


@functools.cache
def _dummy_hash() -> str:
    return hash_secret("not-a-pin-of-anyone")


def verify_pin(s: Session, agent_id: str, pin: str) -> tuple[bool, bool]:
    """(known, ok): whether the agent exists, and whether `pin` matches their argon2 PIN
    hash. An unknown id (or an agent without a PIN) costs one hash check too, so the time
    a refusal takes does not tell which agent ids exist."""
    a = s.get(Agent, agent_id) if AGENT_ID.match(agent_id) else None
    if a is None or not a.pin_hash:
        verify_secret(_dummy_hash(), pin)
        return a is not None, False
    return True, verify_secret(a.pin_hash, pin)


# Count one wrong PIN; at the limit, lock and forget the count, in one step (two phones
# failing at once must not both slip under the limit). Returns the count, or -1 = locked.
_FAIL_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('DEL', KEYS[1])
  return -1
end
return n
"""


@dataclass(frozen=True)
class PinPolicy:
    """[agents] pin_attempts wrong PINs for one agent id on one phone lock that pair;
    pin_attempts_global wrong PINs for an agent id from any phones lock the id, and as
    many from one phone for any ids lock the phone; each lock lasts pin_lockout seconds.

    Why two levels: a lock of the id at the low threshold would let anyone lock a
    colleague out from any phone with three wrong PINs. The pair lock stops guessing at
    one phone; the id lock still caps guessing one agent's PIN across many phones, and the
    phone lock caps one phone trying one PIN against many ids, at a count no mistyping
    agent reaches."""

    attempts: int = 3
    lockout_s: int = 300
    attempts_global: int = 10

    def __post_init__(self) -> None:
        if self.attempts_global < self.attempts:
            raise ValueError("attempts_global must not be below attempts")


class PinGuard:
    """Wrong-PIN counting and lockouts in Redis (an asyncio client), per (agent id, phone)
    pair, per agent id and per phone (`PinPolicy` says at which counts). Counters and locks
    expire by themselves (TTL), so nothing has to clean up and a Redis flush only forgets
    recent failures. Lock kinds: "pair", "agent", "phone"."""

    def __init__(self, redis: Any, policy: PinPolicy | None = None) -> None:
        self.redis = redis
        self.policy = policy or PinPolicy()

    def _subjects(self, agent_id: str | None, phone: str) -> list[tuple[str, str, int]]:
        """(kind, subject, threshold) of every counter a login attempt touches."""
        out = [("phone", phone, self.policy.attempts_global)]
        if agent_id is not None:
            out[:0] = [
                ("pair", f"{agent_id}@{phone}", self.policy.attempts),
                ("agent", agent_id, self.policy.attempts_global),
            ]
        return out

    async def locked_for(self, agent_id: str | None, phone: str) -> int:
        """Seconds until none of the pair, the agent id and the phone is locked (0: not
        locked)."""
        left = 0
        for kind, subject, _ in self._subjects(agent_id, phone):
            ttl = int(await self.redis.ttl(names.key_pin_lock(kind, subject)))
            left = max(left, ttl if ttl > 0 else 0)
        return left

    async def failed(self, agent_id: str | None, phone: str) -> list[str]:
        """Count a wrong PIN (agent_id None: an unknown or malformed id, counted for the
        phone only). Returns the kinds ("pair", "agent", "phone") this failure has just
        locked."""
        locked: list[str] = []
        for kind, subject, threshold in self._subjects(agent_id, phone):
            n = await self.redis.eval(
                _FAIL_LUA,
                2,
                names.key_pin_failures(kind, subject),
                names.key_pin_lock(kind, subject),
                threshold,
                self.policy.lockout_s,
            )
            if int(n) == -1:
                locked.append(kind)
        return locked

    async def succeeded(self, agent_id: str, phone: str) -> None:
        """A right PIN forgets the earlier wrong ones of this pair (a lock stays until it
        expires). The id's and the phone's counts stay: a login of the agent (or of anyone
        with a PIN, on this phone) must not reset a count someone else is running up."""
        await self.redis.delete(names.key_pin_failures("pair", f"{agent_id}@{phone}"))
