"""Shared parts of the per-mode end-to-end tests (test_api_modes_*.py): one running
campaign on the sandbox Asterisk with a real Bridge (dialer on), every FastAGI route and
the JSON API app on the same database and Redis, and agents who do everything through
the API (log in, phone session, Ready, accept / reject, end, mark done).

Redis db 8 is these tests' own; every key they make is campaign-, agent- or server-scoped
and deleted after (no flushdb: other suites may run at the same time)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from agi_scripts.routes import register
from agi_scripts.server import AgiServer
from ami_bridge.service import Bridge, health_key
from outbound import live, names
from outbound.dial_queue import DialQueue
from outbound.model import (
    Agent,
    AgentCampaign,
    CallAttempt,
    Campaign,
    CampaignState,
    ContactList,
    DialMode,
    transaction,
)
from outbound.sandbox import SandboxInfo
from outbound.security import hash_secret
from status_page.app import create_app
from tests.helpers.ami import AmiClient
from tests.helpers.db import DAYTIME, add_agent, add_contact, migrated_factory
from tests.helpers.redis_url import redis_url
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

from .conftest import PASSWORD, Person

REDIS_URL = redis_url(8)


def number(last_digit: int, prefix: str = "+4930") -> str:
    """A fresh number whose last digit picks the sandbox contact's behaviour."""
    return f"{prefix}{random.randrange(10**6, 10**7)}{last_digit}"


class WebAgent(Person):
    """A logged-in agent's browser, with the calls these tests make."""

    async def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """POST / DELETE that must succeed: its JSON answer."""
        if method == "DELETE":
            resp = await self.delete(path)
        else:
            resp = await self.post(path, body)
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text}"
        out: dict[str, Any] = resp.json()
        return out

    async def ready(self, channel: str = "voice", on: bool = True) -> dict[str, Any]:
        return await self.ok("POST", "/api/agent/ready", {"channel": channel, "ready": on})

    async def interaction(self) -> dict[str, Any] | None:
        resp = await self.get("/api/interaction")
        assert resp.status_code == 200, resp.text
        got: dict[str, Any] | None = resp.json()["interaction"]
        return got

    async def events(self, since: str) -> list[tuple[str, dict[str, str]]]:
        """(kind, data) of this agent's SSE events after stream id `since` (one short
        read: the app's sse_max)."""
        resp = await self.get("/api/events", headers={"Last-Event-ID": f"{since},0-0"})
        assert resp.status_code == 200, resp.text
        out: list[tuple[str, dict[str, str]]] = []
        kind = ""
        for line in resp.text.splitlines():
            if line.startswith("event: "):
                kind = line.split(": ", 1)[1]
            elif line.startswith("data: ") and kind:
                out.append((kind, json.loads(line.split(": ", 1)[1])))
                kind = ""
        return out


@dataclass
class Stack:
    """The running campaign and what the test needs of it."""

    factory: sessionmaker[Session]
    r: redis.Redis
    campaign_id: int
    name: str
    server: str
    app: Starlette
    bridge: Bridge
    agents: list[str]
    numbers: dict[str, str]
    contacts: dict[str, int]
    browsers: list[httpx.AsyncClient] = field(default_factory=list)

    def queue(self) -> DialQueue:
        return DialQueue(self.r, self.campaign_id)

    def mark(self) -> str:
        """A position on the events stream: what comes after it is this test's."""
        raw = self.r.xadd(names.KEY_EVENTS, {"event": "test-mark"})
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def attempts(self, **where: Any) -> list[CallAttempt]:
        with self.factory() as s:
            q = select(CallAttempt).filter_by(campaign_id=self.campaign_id, **where)
            return list(s.scalars(q.order_by(CallAttempt.created_at)))

    async def login(self, agent_id: str) -> WebAgent:
        """Web log-in, then the desk phone is called into the agent's conference."""
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")
        self.browsers.append(c)
        resp = await c.post("/api/login", json={"agent_id": agent_id, "password": PASSWORD})
        assert resp.status_code == 200, resp.text
        agent = WebAgent(agent_id, c, resp.json()["csrf_token"])
        await agent.ok("POST", "/api/agent/session")
        return agent


async def conference_members(admin: AmiClient, agent_id: str) -> list[str]:
    """The channels in the agent's conference now (Asterisk's ConfbridgeList)."""
    try:
        _, ev = await admin.collect("ConfbridgeList", Conference=names.agent_bridge(agent_id))
    except Exception:  # no such conference (yet)
        return []
    return [e["Channel"] for e in ev]


def contact_joins(admin: AmiClient, agent_id: str, ids: set[str]) -> list[tuple[str, str]]:
    """(join / leave, attempt id) of contacts in the agent's conference, in order."""
    conf = names.agent_bridge(agent_id)
    return [
        ("join" if e["Event"] == "ConfbridgeJoin" else "leave", e["Uniqueid"])
        for e in admin.events
        if e.get("Event") in ("ConfbridgeJoin", "ConfbridgeLeave")
        and e.get("Conference") == conf
        and e.get("Uniqueid") in ids
    ]


def one_contact_at_a_time(admin: AmiClient, agent_id: str, ids: set[str]) -> None:
    inside: set[str] = set()
    for what, uid in contact_joins(admin, agent_id, ids):
        inside = inside | {uid} if what == "join" else inside - {uid}
        assert len(inside) <= 1, f"two contacts in {agent_id}'s conference at once"


def _campaign(factory: sessionmaker[Session], prefix: str, mode: DialMode, **fields: Any) -> int:
    """A running campaign named <prefix>-<its id>."""
    cid = random.randrange(10**6, 10**9)
    with transaction(factory) as s:
        s.add(
            Campaign(
                id=cid, name=f"{prefix}-{cid}", mode=mode, state=CampaignState.RUNNING, **fields
            )
        )
        s.flush()
        s.add(ContactList(campaign_id=cid, name="l"))
    return cid


def _agents(factory: sessionmaker[Session], cid: int, count: int) -> list[str]:
    """Member agents with the web password and a sim desk phone each."""
    base = random.randrange(10**7, 9 * 10**7)
    out = [
        add_agent(factory, str(base + i), f"Local/{random.randrange(10**5, 10**6)}@sim-phones")
        for i in range(count)
    ]
    with transaction(factory) as s:
        for a in out:
            row = s.get(Agent, a)
            assert row is not None
            row.password_hash = hash_secret(PASSWORD)
            s.add(AgentCampaign(agent_id=a, campaign_id=cid))
    return out


@asynccontextmanager
async def running(
    sandbox: SandboxInfo,
    tmp_path: Path,
    *,
    mode: DialMode,
    scenarios: dict[str, int],
    agents: int = 2,
    zones: dict[str, str] | None = None,
    prefix: str = "modes",
    number_prefix: str = "+4930",
    ring_timeout: int = 10,
    history: Callable[[sessionmaker[Session], int], None] | None = None,
    tune: Callable[[Bridge], None] | None = None,
    **campaign: Any,
) -> AsyncIterator[Stack]:
    """A running campaign (its own random id) with one contact per scenario (name -> the
    number's last digit, created in that order), `agents` member agents, the FastAGI
    routes, a Bridge with its dialer on and the API app; `history` writes earlier
    attempts before the bridge starts, `tune` adjusts the bridge's dialer."""
    factory = migrated_factory(tmp_path / "modes.db")
    cid = _campaign(factory, prefix, mode, **campaign)
    name = f"{prefix}-{cid}"
    if history is not None:
        history(factory, cid)
    staff = _agents(factory, cid, agents)
    numbers = {k: number(d, number_prefix) for k, d in scenarios.items()}
    contacts = {
        k: add_contact(factory, n, campaign=name, timezone=(zones or {}).get(k, DAYTIME))
        for k, n in numbers.items()
    }
    server = f"modes-{uuid.uuid4().hex[:6]}"
    cfg = bridge_config(
        sandbox,
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'modes.db'}",
        redis_url=REDIS_URL,
        server=server,
        ring_timeout=ring_timeout,
        web__command_timeout="20",
        web__sse_max="1",
        web__sse_heartbeat="0.3",
    )
    r = redis.Redis.from_url(REDIS_URL)
    agi_redis = aredis.Redis.from_url(REDIS_URL)
    agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
    register(agi, factory, agi_redis)
    await agi.start()
    bridge = Bridge(cfg, factory, aredis.Redis.from_url(REDIS_URL))
    assert bridge.dialer is not None
    if tune is not None:
        tune(bridge)
    task = asyncio.ensure_future(bridge.run())
    app = create_app(cfg, factory, r)
    stack = Stack(factory, r, cid, name, server, app, bridge, staff, numbers, contacts)
    try:
        await async_until(lambda: r.get(health_key(server)) is not None, 15)
        yield stack
    finally:
        for c in stack.browsers:
            await c.aclose()
        await app.state.ctx.aredis.aclose()
        bridge.stop()
        await asyncio.wait_for(task, 15)
        await agi.close()
        await agi_redis.aclose()
        r.delete(
            *DialQueue(r, cid).all_keys(),
            *(names.key_agent_reservation(a) for a in staff),
            *(live.agent_key(a) for a in staff),
            names.key_commands(server),
        )
        r.close()


async def serve_calls(agent: WebAgent, stop: asyncio.Event, handled: list[str]) -> None:
    """An agent at work through the API until `stop`: a connected call is ended, a call
    in wrap-up marked done (no disposition: the campaign has no codes). The attempt ids
    marked done go into `handled`. A call the person hung up first answers 409 to the
    end: the next look sees it in wrap-up."""
    while not stop.is_set():
        ix = await agent.interaction()
        case = ix["case"] if ix is not None and ix["kind"] == "call" else None
        if case is not None and case["state"] == "connected":
            resp = await agent.post(f"/api/calls/{case['attempt_id']}/end")
            assert resp.status_code in (200, 409), resp.text
        elif case is not None and case["state"] == "wrapup":
            await agent.ok("POST", f"/api/calls/{case['attempt_id']}/done", {})
            handled.append(case["attempt_id"])
        try:
            await asyncio.wait_for(stop.wait(), 0.3)
        except TimeoutError:
            pass


def dial_cdrs(rows: list[dict[str, str]], attempt_id: str) -> list[tuple[str, str]]:
    """(number dialed, disposition) of Asterisk's CDR rows for the attempt's Dial of the
    contact (account code = attempt id, the outbound-dial leg; the far end's leg carries
    the same account code but is the sandbox's, not ours)."""
    return [
        (r["dst"], r["disposition"])
        for r in rows
        if r["accountcode"] == attempt_id and r["lastapp"] == "Dial"
    ]
