"""Log-in, sessions, CSRF and the log-in rate limit of the status page API.

Sessions are server-side, in Redis: the cookie holds a random 256-bit token and Redis
holds only its SHA-256, so a copy of Redis gives nobody a usable cookie; a log-out or an
admin's flush ends the session at once. Each session has its own CSRF token, which every
state-changing request must echo in `X-CSRF-Token` (the cookie alone, which a browser
sends with any request, never suffices).

Failed log-ins are counted per agent id and per client address in Redis for a window;
at the limit further attempts are refused (429, Retry-After) without checking the
password. An unknown agent id costs the same argon2 check as a wrong password and gets
the same answer, so the API does not tell which ids exist.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outbound import names
from outbound.model import Agent
from outbound.security import hash_secret, verify_secret

COOKIE = "ob_session"
CSRF_HEADER = "X-CSRF-Token"
BAD_LOGIN = "wrong agent id or password"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def session_key(token: str) -> str:
    return f"{names.REDIS_PREFIX}web:session:{_digest(token)}"


def failures_key(kind: str, subject: str) -> str:
    """Failed log-ins per "agent" id or per client "ip"; hashed: any text is a safe key."""
    return f"{names.REDIS_PREFIX}web:loginfail:{kind}:{_digest(subject)[:32]}"


@dataclass(frozen=True)
class Who:
    """The person behind a request's session."""

    agent_id: str
    role: str
    csrf: str
    token: str


@dataclass(frozen=True)
class LoginPolicy:
    attempts: int = 5
    attempts_ip: int = 20
    window_s: int = 300


@functools.cache
def _dummy_hash() -> str:
    return hash_secret("not-the-password-of-anyone")


def check_password(factory: sessionmaker[Session], agent_id: str, password: str) -> str | None:
    """The agent's role when `password` is right, else None. Blocking (argon2, the
    database): run it in a thread. Every refusal costs one argon2 check."""
    with factory() as s:
        a = s.get(Agent, agent_id) if 0 < len(agent_id) <= 32 else None
        stored = a.password_hash if a is not None else None
        role = a.role.value if a is not None else None
    if not stored:
        verify_secret(_dummy_hash(), password)
        return None
    return role if verify_secret(stored, password) else None


class Sessions:
    """Sessions and failed log-in counts on an asyncio Redis client."""

    def __init__(self, redis: Any, ttl_s: int, policy: LoginPolicy) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.policy = policy

    async def create(self, agent_id: str, role: str) -> Who:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        key = session_key(token)
        fields = {"agent_id": agent_id, "role": role, "csrf": csrf, "created": f"{time.time():.0f}"}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.ttl_s)
        await pipe.execute()
        return Who(agent_id, role, csrf, token)

    async def lookup(self, token: str | None) -> Who | None:
        """The session of a cookie, its idle time restarted; None when there is none."""
        if not token or len(token) > 200:
            return None
        key = session_key(token)
        raw = await self.redis.hgetall(key)
        if not raw:
            return None
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        if "agent_id" not in f or "csrf" not in f:
            return None
        await self.redis.expire(key, self.ttl_s)
        return Who(f["agent_id"], f.get("role", "agent"), f["csrf"], token)

    async def end(self, token: str) -> None:
        await self.redis.delete(session_key(token))

    async def locked_for(self, agent_id: str, ip: str) -> int:
        """Seconds until log-ins for this id / from this address are allowed again (0: now)."""
        left = 0
        for kind, subject, limit in self._counters(agent_id, ip):
            raw = await self.redis.get(failures_key(kind, subject))
            if raw is not None and int(raw) >= limit:
                ttl = int(await self.redis.ttl(failures_key(kind, subject)))
                left = max(left, ttl if ttl > 0 else 1)
        return left

    async def failed(self, agent_id: str, ip: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for kind, subject, _ in self._counters(agent_id, ip):
            key = failures_key(kind, subject)
            pipe.incr(key)
            pipe.expire(key, self.policy.window_s, nx=True)
        await pipe.execute()

    async def succeeded(self, agent_id: str) -> None:
        """A right password forgets the id's failures (the address's count stays: one
        good log-in must not reset a count someone is running up against other ids)."""
        await self.redis.delete(failures_key("agent", agent_id))

    def _counters(self, agent_id: str, ip: str) -> list[tuple[str, str, int]]:
        return [("agent", agent_id, self.policy.attempts), ("ip", ip, self.policy.attempts_ip)]


def csrf_ok(who: Who, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(who.csrf.encode(), given.encode())
