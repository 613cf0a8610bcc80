"""The bridge daemon against the sandbox: refuses an over-privileged AMI account, runs with
the least-privilege one, publishes its health, answers commands (clear error for a call
that no longer exists)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis

from ami_bridge.rights import TooManyRights
from ami_bridge.service import Bridge, health_key
from outbound.commands import CommandFailed, send_command
from outbound.config import load_config
from outbound.model import make_engine, session_factory, upgrade
from outbound.sandbox import SandboxInfo
from tests.helpers.until import async_until

REDIS_URL = "redis://127.0.0.1:6379/12"


def _config(sandbox: SandboxInfo, tmp_path: Path, user: str, secret: str, server: str):  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'b.db'}"
    upgrade(make_engine(db))
    return load_config(
        env={},
        cwd=tmp_path,
        overrides={
            "database.url": db,
            "redis.url": REDIS_URL,
            "ami.port": str(sandbox.ami_port),
            "ami.username": user,
            "ami.secret": secret,
            "dialer.server": server,
            "dialer.trunk": "Local/${NUMBER}@sim-contacts",
            "ami.ping_interval": "1",
        },
    )


async def test_given_admin_account_then_bridge_refuses_to_start(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    cfg = _config(sandbox, tmp_path, sandbox.admin_ami_user, sandbox.admin_ami_secret, "adm")
    b = Bridge(
        cfg, session_factory(make_engine(cfg.database_url)), aredis.Redis.from_url(REDIS_URL)
    )
    with pytest.raises(TooManyRights, match="command, config, system"):
        await b.run()


async def test_given_dialer_account_then_bridge_runs_reports_health_and_answers_commands(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    server = f"srv-{uuid.uuid4().hex[:6]}"
    cfg = _config(sandbox, tmp_path, sandbox.ami_user, sandbox.ami_secret, server)
    b = Bridge(
        cfg, session_factory(make_engine(cfg.database_url)), aredis.Redis.from_url(REDIS_URL)
    )
    task = asyncio.ensure_future(b.run())
    r = redis.Redis.from_url(REDIS_URL)
    try:
        await async_until(
            lambda: r.get(health_key(server)) is not None, 10, message="no health record"
        )
        assert json.loads(r.get(health_key(server)))["healthy"] is True  # type: ignore[arg-type]
        gone = str(uuid.uuid4())
        with pytest.raises(CommandFailed, match=f"call {gone} does not exist"):
            await asyncio.to_thread(send_command, r, server, "end", {"attempt_id": gone}, 5)
    finally:
        b.stop()
        await asyncio.wait_for(task, 10)
    # The record expires when the bridge is gone (no stale "healthy").
    assert r.ttl(health_key(server)) <= 5
