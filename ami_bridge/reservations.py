"""Agent reservations of the dialing loop (ami_bridge.dialer): an agent is reserved in
Redis (SET NX with a TTL, names.key_agent_reservation) before a record is leased and dialed
for them, so neither two ticks nor two workers give one agent two calls."""

from __future__ import annotations

import uuid
from typing import Any

from outbound import names

RESERVE_TTL_S = 120  # a worker that dies frees its agents after this

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
