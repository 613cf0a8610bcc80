"""Every FastAGI route the dialplan calls, in one place: `outbound run agi`, the process
AGI mode and the tests all register them through `register`, so a route added here is
served everywhere."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outbound import names

from .classify import make_classify
from .server import AgiServer


def register(server: AgiServer, factory: sessionmaker[Session], redis: Any = None) -> None:
    """Serve every route on `server`. `redis` (redis.asyncio.Redis) carries live agent
    state; routes that need it are skipped when it is None."""
    server.route(names.AGI_CLASSIFY, make_classify(factory))
