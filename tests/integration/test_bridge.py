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
from sqlalchemy import select

from ami_bridge.rights import TooManyRights
from ami_bridge.service import Bridge, health_key, live_key
from outbound import live, names
from outbound.commands import CommandFailed, send_command
from outbound.config import load_config
from outbound.model import CaseEvent, make_engine, session_factory, upgrade
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient, AmiError
from tests.helpers.db import add_agent, add_contact
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until

REDIS_URL = redis_url(12)


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
        # The resync on connect asked Asterisk for channels, bridges and conferences.
        snap = json.loads(r.get(live_key(server)))  # type: ignore[arg-type]
        assert set(snap) >= {"channels", "bridges", "conferences"}
        gone = str(uuid.uuid4())
        with pytest.raises(CommandFailed, match=f"call {gone} does not exist"):
            await asyncio.to_thread(send_command, r, server, "end", {"attempt_id": gone}, 5)
    finally:
        b.stop()
        await asyncio.wait_for(task, 10)
    # The record expires when the bridge is gone (no stale "healthy").
    assert r.ttl(health_key(server)) <= 5


async def test_given_bridge_when_agent_logs_in_and_works_a_call_by_commands_then_asterisk_follows(
    sandbox: SandboxInfo, tmp_path: Path, admin_ami: AmiClient
) -> None:
    server = f"srv-{uuid.uuid4().hex[:6]}"
    cfg = _config(sandbox, tmp_path, sandbox.ami_user, sandbox.ami_secret, server)
    f = session_factory(make_engine(cfg.database_url))
    ext = str(uuid.uuid4().int)[:6]
    agent = add_agent(f, str(70000 + int(uuid.uuid4().int % 9999)), f"Local/{ext}@sim-phones")
    add_agent(f, "99")
    number = "+4930" + str(uuid.uuid4().int)[:6] + "8"  # human, talks long
    contact_id = add_contact(f, number)
    b = Bridge(cfg, f, aredis.Redis.from_url(REDIS_URL))
    task = asyncio.ensure_future(b.run())
    r = redis.Redis.from_url(REDIS_URL)
    conf = names.agent_bridge(agent)

    def cmd(kind: str, **args: object) -> dict:  # type: ignore[type-arg]
        return send_command(r, server, kind, dict(args), 20)

    async def members() -> list[str]:
        try:
            _, ev = await admin_ami.collect("ConfbridgeList", Conference=conf)
        except AmiError:
            return []
        return [e["Channel"] for e in ev]

    async def app_of(uid: str) -> str | None:
        _, chans = await admin_ami.collect("CoreShowChannels")
        return next((c["Application"] for c in chans if c.get("Uniqueid") == uid), None)

    try:
        await async_until(lambda: r.get(health_key(server)) is not None, 10)
        out = await asyncio.to_thread(cmd, "login", agent_id=agent)
        assert len(await members()) == 1  # the desk phone waits in the agent's bridge
        assert r.hget(live.agent_key(agent), "session") == b"up"
        dialed = await asyncio.to_thread(
            cmd, "dial", contact_id=contact_id, agent_id=agent, connect=True
        )
        aid = dialed["attempt_id"]
        await async_until(lambda: _len_is(members, 2), 15, message="contact not in bridge")

        # DTMF: the contact hears the digits (Asterisk records them in AstDB) and they are
        # in the contact's case history.
        async def listening() -> bool:  # said hello; now hears (and records) digits
            _, chans = await admin_ami.collect("CoreShowChannels")
            return any(
                number in c.get("Channel", "") and c.get("Application", "").lower() == "background"
                for c in chans
            )

        await async_until(listening, 10, message="the contact is not listening")
        sent = await asyncio.to_thread(cmd, "dtmf", attempt_id=aid, agent_id=agent, digits="12#")
        assert sent["digits"] == "12#"
        await async_until(
            lambda: _eq(admin_ami.db_get("simdtmf", number), "12#"), 10, message="not heard"
        )
        with f() as s:
            dtmf = s.scalars(
                select(CaseEvent).where(CaseEvent.attempt_id == aid, CaseEvent.kind == "dtmf")
            ).all()
            assert [e.data["digits"] for e in dtmf] == ["12#"]
        held = await asyncio.to_thread(cmd, "hold", attempt_id=aid, agent_id=agent)
        assert held["state"] == "held"
        await async_until(lambda: _eq(app_of(aid), "MusicOnHold"), 10)
        assert len(await members()) == 1
        with pytest.raises(CommandFailed, match="not agent 99's"):
            await asyncio.to_thread(cmd, "resume", attempt_id=aid, agent_id="99")
        await asyncio.to_thread(cmd, "resume", attempt_id=aid, agent_id=agent)
        await async_until(lambda: _len_is(members, 2), 10)
        await asyncio.to_thread(cmd, "end", attempt_id=aid)
        await async_until(lambda: _eq(app_of(aid), None), 10)

        # Call events came back on the event stream, in order, ending with the result.
        def events() -> list[str]:
            return [
                f[b"event"].decode()
                for _, f in r.xrange(names.KEY_EVENTS)
                if f.get(b"attempt_id") == aid.encode()
            ]

        await async_until(lambda: "call_ended" in events(), 10)
        assert events()[0] == "call_connecting" and events()[-1] == "call_ended"
        assert "call_connected" in events()
        ended = [
            f
            for _, f in r.xrange(names.KEY_EVENTS)
            if f.get(b"attempt_id") == aid.encode() and f[b"event"] == b"call_ended"
        ]
        assert ended[0][b"result"] == b"answered"
        # Hanging up the desk phone ends the session: the agent is not ready.
        phone = out["channel_id"]
        _, chans = await admin_ami.collect("CoreShowChannels")
        await admin_ami.send(
            "Hangup", Channel=next(c["Channel"] for c in chans if c.get("Uniqueid") == phone)
        )
        await async_until(lambda: r.hget(live.agent_key(agent), "session") == b"ended", 10)
        assert r.hget(live.agent_key(agent), "ready_voice") == b"0"
        assert r.hget(live.agent_key(agent), "reason") == b"phone_hangup"
    finally:
        b.stop()
        await asyncio.wait_for(task, 10)


async def _len_is(fn, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await fn()) == n


async def _eq(aw, v) -> bool:  # type: ignore[no-untyped-def]
    return (await aw) == v
