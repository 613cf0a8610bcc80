"""A preview campaign driven through the API only, on the sandbox Asterisk: an agent logs
in, calls their desk phone into their conference, goes Ready, gets a record, dials it,
ends the call and marks it done. Asterisk keeps the evidence: the phone and the contact
in the agent's conference (ConfbridgeJoin / ConfbridgeList), the number dialed exactly
once (AstDB simcount/<number>, never two at once: simdup), the call under the attempt's
id (Newchannel Uniqueid). A real Bridge with its dialer on runs the commands."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aredis
from sqlalchemy import select

from ami_bridge.service import Bridge, health_key
from outbound import live, names
from outbound.dial_queue import DialQueue
from outbound.model import (
    Agent,
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Campaign,
    Contact,
    ContactState,
    DialMode,
    transaction,
    utcnow,
)
from outbound.sandbox import SandboxInfo
from outbound.security import hash_secret
from status_page.app import create_app
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact, migrated_factory
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

from .conftest import PASSWORD, REDIS_URL

pytestmark = pytest.mark.asterisk


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A running preview campaign with one record (a person who talks long), a member
    agent with a web password and a sim desk phone, a Bridge and the API app."""
    factory = migrated_factory(tmp_path / "api.db")
    name = f"api-prev-{uuid.uuid4().hex[:6]}"
    number = f"+4930{random.randrange(10**6, 10**7)}8"  # sim scenario human_long
    contact = add_contact(factory, number, campaign=name, mode=DialMode.PREVIEW)
    agent = add_agent(
        factory,
        str(random.randrange(10**7, 10**8)),
        f"Local/{random.randrange(10**5, 10**6)}@sim-phones",
    )
    with transaction(factory) as s:
        a = s.get(Agent, agent)
        assert a is not None
        a.password_hash = hash_secret(PASSWORD)
        campaign_id = s.scalars(select(Campaign.id).where(Campaign.name == name)).one()
        s.add(AgentCampaign(agent_id=agent, campaign_id=campaign_id))
    server = f"api-{uuid.uuid4().hex[:6]}"
    cfg = bridge_config(
        sandbox,
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        redis_url=REDIS_URL,
        server=server,
        web__command_timeout="20",
        web__sse_max="1",
    )
    r = redis.Redis.from_url(REDIS_URL)
    queue = DialQueue(r, campaign_id)
    queue.rebuild(factory, utcnow())
    bridge = Bridge(cfg, factory, aredis.Redis.from_url(REDIS_URL))
    task = asyncio.ensure_future(bridge.run())
    app = create_app(cfg, factory, r)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    try:
        await async_until(lambda: r.get(health_key(server)) is not None, 15)
        yield {
            "factory": factory,
            "r": r,
            "client": client,
            "agent": agent,
            "campaign_id": campaign_id,
            "contact": contact,
            "number": number,
        }
    finally:
        await client.aclose()
        await app.state.ctx.aredis.aclose()
        bridge.stop()
        await asyncio.wait_for(task, 15)
        r.delete(*queue.all_keys(), live.agent_key(agent), names.key_commands(server))
        r.close()


def _id(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _attempt(factory: Any, attempt_id: str) -> CallAttempt:
    with factory() as s:
        a = s.get(CallAttempt, attempt_id)
        assert a is not None
        return a


async def test_given_a_preview_campaign_when_driven_through_the_api_then_asterisk_dials_once(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    c, f, r = stack["client"], stack["factory"], stack["r"]
    agent, number = stack["agent"], stack["number"]
    conf = names.agent_bridge(agent)

    async def members() -> list[str]:
        try:
            _, ev = await admin_ami.collect("ConfbridgeList", Conference=conf)
        except Exception:  # no conference yet
            return []
        return [e["Channel"] for e in ev]

    login = await c.post("/api/login", json={"agent_id": agent, "password": PASSWORD})
    assert login.status_code == 200, login.text
    h = {"X-CSRF-Token": login.json()["csrf_token"]}

    # The desk phone is called into the agent's conference.
    phone = await c.post("/api/agent/session", headers=h)
    assert phone.status_code == 200, phone.text
    assert len(await members()) == 1
    ready = await c.post("/api/agent/ready", json={"channel": "voice", "ready": True}, headers=h)
    assert ready.status_code == 200, ready.text
    assert (await c.get("/api/me")).json()["live"]["ready_voice"] is True

    # Get record, then dial it.
    got = await c.post(f"/api/campaigns/{stack['campaign_id']}/record", headers=h)
    assert got.status_code == 200 and got.json()["contact_id"] == stack["contact"], got.text
    mark = _id(r.xadd(names.KEY_EVENTS, {"event": "test-mark"}))
    dialed = await c.post(f"/api/offers/{got.json()['offer_id']}/dial", json={}, headers=h)
    assert dialed.status_code == 200, dialed.text
    aid = dialed.json()["attempt_id"]

    # Asterisk placed the call under the attempt's id, to that number, and the person
    # joined the agent's conference.
    await admin_ami.wait_event("Newchannel", 15, Uniqueid=aid)
    await async_until(lambda: admin_ami.db_get("simcount", number), 15, message="not dialed")
    await admin_ami.wait_event("ConfbridgeJoin", 20, Conference=conf, Uniqueid=aid)
    await async_until(lambda: _attempt(f, aid).state is AttemptState.CONNECTED, 10)
    ix = (await c.get("/api/interaction")).json()["interaction"]
    assert ix["kind"] == "call" and ix["case"]["attempt_id"] == aid
    assert ix["case"]["state"] == "connected" and ix["case"]["dialed_number"] == number

    # A second dial of the same record is refused: nothing twice.
    twice = await c.post(f"/api/offers/{got.json()['offer_id']}/dial", json={}, headers=h)
    assert twice.status_code == 409
    # Mark done while connected: refused.
    early = await c.post(f"/api/calls/{aid}/done", json={}, headers=h)
    assert early.status_code == 409 and "still connected" in early.json()["error"]

    ended = await c.post(f"/api/calls/{aid}/end", headers=h)
    assert ended.status_code == 200, ended.text
    await admin_ami.wait_event("ConfbridgeLeave", 10, Conference=conf, Uniqueid=aid)
    await async_until(lambda: _attempt(f, aid).state is AttemptState.ENDED, 10)
    done = await c.post(f"/api/calls/{aid}/done", json={}, headers=h)
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "done" and done.json()["next"]["status"] == "none"
    assert _attempt(f, aid).disposition == ""

    # Asterisk dialed the number exactly once, never twice at once.
    assert await admin_ami.db_get("simcount", number) == "1"
    assert await admin_ami.db_get("simdup", number) is None
    # The page heard the call's progress on its event stream.
    sse = await c.get("/api/events", headers={"Last-Event-ID": f"{mark},0-0"})
    kinds = [line.split(": ", 1)[1] for line in sse.text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "call_connecting" and "call_connected" in kinds and "call_ended" in kinds

    # Phone log-out: the session ends, the agent is not Ready.
    out = await c.delete("/api/agent/session", headers=h)
    assert out.status_code == 200, out.text
    await async_until(lambda: r.hget(live.agent_key(agent), "session") == b"ended", 10)
    assert r.hget(live.agent_key(agent), "ready_voice") == b"0"


async def test_given_preview_records_when_declined_through_the_api_then_later_is_on_top_and_dnc_never_dialed(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    c, f, r = stack["client"], stack["factory"], stack["r"]
    agent, first = stack["agent"], stack["contact"]
    with f() as s:
        name = s.get(Campaign, stack["campaign_id"]).name  # type: ignore[union-attr]
    second_number = f"+4930{random.randrange(10**6, 10**7)}0"
    second = add_contact(f, second_number, campaign=name, mode=DialMode.PREVIEW)
    DialQueue(r, stack["campaign_id"]).rebuild(f, utcnow())
    login = await c.post("/api/login", json={"agent_id": agent, "password": PASSWORD})
    h = {"X-CSRF-Token": login.json()["csrf_token"]}
    assert (await c.post("/api/agent/session", headers=h)).status_code == 200
    await c.post("/api/agent/ready", json={"channel": "voice", "ready": True}, headers=h)

    async def get() -> dict[str, Any]:
        got = await c.post(f"/api/campaigns/{stack['campaign_id']}/record", headers=h)
        assert got.status_code == 200, got.text
        return dict(got.json())

    # "Call later": the same record is first in line again.
    one = await get()
    assert one["contact_id"] == first
    later = await c.post(
        f"/api/offers/{one['offer_id']}/decline", json={"choice": "later"}, headers=h
    )
    assert later.status_code == 200, later.text
    again = await get()
    assert again["contact_id"] == first and again["offer_id"] != one["offer_id"]
    # "Do not call": off the list for good; the next record is the other contact.
    dnc = await c.post(
        f"/api/offers/{again['offer_id']}/decline", json={"choice": "dnc"}, headers=h
    )
    assert dnc.status_code == 200, dnc.text
    nxt = await get()
    assert nxt["contact_id"] == second
    await c.post(f"/api/offers/{nxt['offer_id']}/decline", json={"choice": "dnc"}, headers=h)
    assert (await get())["status"] == "none"
    with f() as s:
        states = {cid: s.get(Contact, cid).state for cid in (first, second)}  # type: ignore[union-attr]
    assert set(states.values()) == {ContactState.DNC}
    # Asterisk never saw a call to either number.
    await asyncio.sleep(1)
    for n in (stack["number"], second_number):
        assert await admin_ami.db_get("simcount", n) is None
