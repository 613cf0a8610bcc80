"""Every FastAGI route the dialplan calls, in one place: `outbound run agi`, the process
AGI mode and the tests all register them through `register`, so a route added here is
served everywhere."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from outbound import names

from .classify import make_classify, make_fax
from .features import make_features
from .optout import make_optout
from .server import AgiServer


def register(
    server: AgiServer, factory: sessionmaker[Session], redis: Any = None, config: Any = None
) -> None:
    """Serve every route on `server`. `redis` (redis.asyncio.Redis) carries live agent
    state; routes that need it are skipped when it is None (features refuses every code).
    `config` (outbound.config.Config) gives settings such as [agents]; None: DEFAULTS."""
    server.route(names.AGI_CLASSIFY, make_classify(factory, redis))
    server.route(names.AGI_FEATURES, make_features(factory, redis, config))
    server.route(names.AGI_FAX, make_fax(factory))
    server.route(names.AGI_OPTOUT, make_optout(factory))
