"""The product's call path on the sandbox, for integration tests: the FastAGI server with
every route (agi_scripts.routes.register), the dialer's AMI connection, the Originator and
agent sessions, on a fresh SQLite database. Plus the two questions the tests keep asking:
an attempt's row, and who is in a conference (asked of Asterisk)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from agi_scripts.routes import register
from agi_scripts.server import AgiServer
from ami_bridge.connection import AmiConnection
from ami_bridge.originator import Originator
from ami_bridge.sessions import AgentSessions
from outbound.config import Config, load_config
from outbound.model import CallAttempt
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient, AmiError
from tests.helpers.db import migrated_factory

TRUNK = "Local/${NUMBER}@sim-contacts"


@asynccontextmanager
async def call_stack(
    sandbox: SandboxInfo, db: Path, agi_cls: type[AgiServer] = AgiServer
) -> AsyncIterator[dict[str, Any]]:
    """{"factory", "originator", "sessions", "agi", "db"}; everything stopped afterwards."""
    factory = migrated_factory(db)
    agi = agi_cls("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
    register(agi, factory)
    await agi.start()
    ami = AmiConnection(sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret)
    o = Originator(ami, factory, trunk=TRUNK, ring_timeout=15)
    sessions = AgentSessions(ami)
    sessions.attach()
    o.start()
    await ami.start(wait=15)
    try:
        yield {"factory": factory, "originator": o, "sessions": sessions, "agi": agi, "db": db}
    finally:
        await o.stop()
        await ami.close()
        await agi.close()


def attempt_row(factory: sessionmaker[Session], aid: str) -> CallAttempt:
    with factory() as s:
        a = s.get(CallAttempt, aid)
        assert a is not None
        return a


async def conference_members(admin: AmiClient, conference: str) -> list[str]:
    """Uniqueids in `conference` (ConfbridgeList); [] when it does not exist."""
    try:
        _, ev = await admin.collect("ConfbridgeList", Conference=conference)
    except AmiError:
        return []
    return [e["Uniqueid"] for e in ev]


def bridge_config(
    sandbox: SandboxInfo,
    tmp_path: Path,
    *,
    server: str,
    redis_url: str,
    database_url: str | None = None,
    ring_timeout: int = 15,
    ami_port: int | None = None,
    **extra: str,
) -> Config:
    """The configuration of a Bridge (and the API) on the sandbox: the dialer's AMI account,
    the simulated contacts as trunk, pings every second; `extra` as `section.key` values
    (dots written as `__`: web__command_timeout="20")."""
    overrides = {
        "redis.url": redis_url,
        "ami.port": str(ami_port or sandbox.ami_port),
        "ami.username": sandbox.ami_user,
        "ami.secret": sandbox.ami_secret,
        "ami.ping_interval": "1",
        "dialer.server": server,
        "dialer.trunk": TRUNK,
        "dialer.ring_timeout": str(ring_timeout),
        **{k.replace("__", "."): v for k, v in extra.items()},
    }
    if database_url is not None:
        overrides["database.url"] = database_url
    return load_config(env={}, cwd=tmp_path, overrides=overrides)
