"""Agent reservations of the dialing loop (ami_bridge.dialer): an agent is reserved in
Redis (SET NX with a TTL, names.key_agent_reservation) before a record is leased and dialed
for them, so neither two ticks nor two workers give one agent two calls."""

from __future__ import annotations

import re
import uuid
from typing import Any

from outbound import names
from outbound.errors import Conflict

RESERVE_TTL_S = 120  # a worker that dies frees its agents after this (or its restart)

# Release / extend a reservation only if it is still ours (it may have expired and been
# taken by another worker meanwhile).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""


class AgentReservations:
    """Agents reserved by this worker: in memory (agent -> token) and in Redis (SET NX EX),
    so that no tick here and no other worker reserves one of them again."""

    def __init__(self, redis: Any, owner: str, ttl_s: int = RESERVE_TTL_S) -> None:
        self.redis = redis
        self.owner = owner
        self.ttl_s = ttl_s
        self.held: dict[str, str] = {}
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)

    async def take(self, agent_id: str) -> str | None:
        """A token if the agent is now ours; None if reserved already (here or elsewhere)."""
        if agent_id in self.held:
            return None
        token = f"{self.owner}:{uuid.uuid4().hex[:12]}"
        self.held[agent_id] = token  # before the await: a concurrent take here sees it
        try:
            ok = await self.redis.set(
                names.key_agent_reservation(agent_id), token, nx=True, ex=self.ttl_s
            )
        except BaseException:
            self.held.pop(agent_id, None)
            raise
        if not ok:
            self.held.pop(agent_id, None)
            return None
        return token

    async def give_back(self, agent_id: str, token: str) -> None:
        if self.held.get(agent_id) == token:
            del self.held[agent_id]
        await self._release(keys=[names.key_agent_reservation(agent_id)], args=[token])

    async def extend(self, agent_id: str, token: str) -> bool:
        key = names.key_agent_reservation(agent_id)
        return bool(await self._extend(keys=[key], args=[token, str(self.ttl_s)]))

    async def release_predecessors(self) -> list[str]:
        """At start-up: the reservations a killed predecessor of this worker left are
        released now rather than after their TTL, so its agents get calls again at once
        (see `predecessor`). Returns the agents released."""
        released: list[str] = []
        prefix = names.key_agent_reservation("")
        async for raw in self.redis.scan_iter(match=prefix + "*", count=500):
            key = _text(raw)
            token = await self.redis.get(key)
            if token is None or not predecessor(self.owner, _text(token)):
                continue
            if await self._release(keys=[key], args=[_text(token)]):  # unless it changed
                released.append(key[len(prefix) :])
        return released


def predecessor(owner: str, other: str) -> bool:
    """`other` (a lease owner, or a reservation token: owner + ':' + 12 hex) is an earlier
    run's of this worker: owners are `dialer:<server>:<worker>:<8-hex run id>`, and only
    the run id differs. Acting on it is sound only because one server name runs one
    bridge at a time (its command stream's consumer group and the originator's reconcile,
    which settles the server's live attempts it cannot see, assume it too); an agent's
    call that run left live is still guarded by the database (create_attempt refuses an
    agent already in a live attempt, and a contact already in one)."""
    stem, run = owner.rsplit(":", 1)
    got = re.fullmatch(re.escape(stem) + r":([0-9a-f]{8})(?::[0-9a-f]{12})?", other)
    return got is not None and got.group(1) != run


async def release_predecessor_leases(redis: Any, queue: Any, owner: str) -> list[int]:
    """The records a killed predecessor had leased (its calls in flight) go back to the
    top of `queue` (an AsyncDialQueue) now, not when their lease expires: the database
    decides on the next lease whether they are dialable (their attempt settled by the
    reconcile and its treatment applied, or still live: refused, back when it ends)."""
    back: list[int] = []
    leases = await redis.hgetall(names.key_leases(queue.campaign_id))
    for contact, other in leases.items():
        if not predecessor(owner, _text(other)):
            continue
        try:
            if await queue.release(int(_text(contact)), _text(other), top=True):
                back.append(int(_text(contact)))
        except Conflict:  # lapsed or leased again meanwhile: no longer the predecessor's
            continue
    return back


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
