"""What every handler of the API needs, built once by `create_app`: the configuration,
the database, Redis (a synchronous client for the core's dial queue and live state, an
asyncio one for sessions, bridge commands and events) and the session store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis as sync_redis
import redis.asyncio as aredis
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from outbound.commands import send_command_async
from outbound.config import Config
from outbound.dial_queue import DialQueue

from .auth import Sessions

T = TypeVar("T")


class ApiError(Exception):
    """An answer other than 200 decided by the web layer itself (not a domain error)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def async_twin(client: sync_redis.Redis) -> aredis.Redis:
    """An asyncio client on the same server and database as a synchronous one."""
    kw = client.connection_pool.connection_kwargs
    keep = ("host", "port", "db", "username", "password", "path", "socket_timeout")
    return aredis.Redis(**{k: kw[k] for k in keep if k in kw and kw[k] is not None})


@dataclass
class Ctx:
    config: Config
    factory: sessionmaker[Session]
    redis: sync_redis.Redis
    aredis: aredis.Redis
    sessions: Sessions
    _queues: dict[int, DialQueue] = field(default_factory=dict)

    @property
    def server(self) -> str:
        """The Asterisk server whose bridge runs the agents' commands."""
        return str(self.config.get("dialer", "server"))

    def web(self, key: str) -> Any:
        return self.config.get("web", key)

    def queue(self, campaign_id: int) -> DialQueue:
        q = self._queues.get(campaign_id)
        if q is None:
            q = self._queues[campaign_id] = DialQueue(self.redis, campaign_id)
        return q

    async def command(
        self, kind: str, args: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a bridge command and wait for its result (CommandFailed / CommandTimeout)."""
        wait = float(timeout if timeout is not None else self.web("command_timeout"))
        return await send_command_async(self.aredis, self.server, kind, args, wait)

    @staticmethod
    async def blocking(fn: Any, *args: Any, **kw: Any) -> Any:
        """Run the core's blocking code (database, synchronous Redis, argon2) in a thread."""
        return await run_in_threadpool(fn, *args, **kw)
