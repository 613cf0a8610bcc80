"""Progressive dialing with an interaction preview, driven through the API on the sandbox
Asterisk: the record is pushed to a Ready agent before anything is dialed; a reject, or no
answer within the campaign's push timeout, puts it back at the top of the list; an accept
has the call placed at once for that agent. Asterisk's own counters show the number was not
dialed before the accept, then exactly once, into the accepting agent's conference."""

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
    DialMode,
    transaction,
)
from outbound.model.tables import Offer, OfferState
from outbound.sandbox import SandboxInfo
from outbound.security import hash_secret
from status_page.app import create_app
from tests.helpers.ami import AmiClient
from tests.helpers.api_agent import phone_login, set_ready
from tests.helpers.db import add_agent, add_contact, migrated_factory
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

from .conftest import PASSWORD, REDIS_URL

pytestmark = pytest.mark.asterisk
PUSH_TIMEOUT_S = 6


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A running progressive campaign with an interaction preview and one record (a
    person who talks long), two member agents with web passwords and sim desk phones, a
    Bridge with its dialer on, and the API app."""
    factory = migrated_factory(tmp_path / "ip.db")
    name = f"api-ip-{uuid.uuid4().hex[:6]}"
    number = f"+4930{random.randrange(10**6, 10**7)}8"  # sim scenario human_long
    contact = add_contact(
        factory,
        number,
        campaign=name,
        mode=DialMode.PROGRESSIVE,
        interaction_preview=True,
        push_timeout_s=PUSH_TIMEOUT_S,
    )
    agents = [
        add_agent(
            factory,
            str(random.randrange(10**7, 10**8)),
            f"Local/{random.randrange(10**5, 10**6)}@sim-phones",
        )
        for _ in range(2)
    ]
    with transaction(factory) as s:
        campaign_id = s.scalars(select(Campaign.id).where(Campaign.name == name)).one()
        for agent in agents:
            a = s.get(Agent, agent)
            assert a is not None
            a.password_hash = hash_secret(PASSWORD)
            s.add(AgentCampaign(agent_id=agent, campaign_id=campaign_id))
    server = f"ip-{uuid.uuid4().hex[:6]}"
    cfg = bridge_config(
        sandbox,
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'ip.db'}",
        redis_url=REDIS_URL,
        server=server,
        web__command_timeout="20",
    )
    r = redis.Redis.from_url(REDIS_URL)
    bridge = Bridge(cfg, factory, aredis.Redis.from_url(REDIS_URL))
    task = asyncio.ensure_future(bridge.run())
    app = create_app(cfg, factory, r)
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        for _ in agents
    ]
    try:
        await async_until(lambda: r.get(health_key(server)) is not None, 15)
        yield {
            "factory": factory,
            "r": r,
            "clients": clients,
            "agents": agents,
            "campaign_id": campaign_id,
            "contact": contact,
            "number": number,
        }
    finally:
        for c in clients:
            await c.aclose()
        await app.state.ctx.aredis.aclose()
        bridge.stop()
        await asyncio.wait_for(task, 15)
        r.delete(
            *DialQueue(r, campaign_id).all_keys(),
            *(live.agent_key(a) for a in agents),
            *(names.key_agent_reservation(a) for a in agents),
            names.key_commands(server),
        )
        r.close()


async def _offer(c: httpx.AsyncClient, not_id: int | None = None) -> dict[str, Any]:
    """Wait until the agent's interaction is a pushed record (another than `not_id`)."""

    async def shown() -> dict[str, Any] | None:
        ix = (await c.get("/api/interaction")).json().get("interaction")
        if ix and ix.get("kind") == "offer" and ix["case"].get("offer_id") != not_id:
            return dict(ix)
        return None

    return await async_until(shown, 15, interval=0.3, message="no record pushed")


def _offers(factory: Any) -> list[Offer]:
    with factory() as s:
        return list(s.scalars(select(Offer).order_by(Offer.id)))


async def test_given_an_interaction_preview_then_reject_and_timeout_requeue_and_accept_dials_once(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    f, r, number, contact = stack["factory"], stack["r"], stack["number"], stack["contact"]
    (ca, cb), (a, b) = stack["clients"], stack["agents"]
    ha, hb = await phone_login(ca, a, PASSWORD), await phone_login(cb, b, PASSWORD)

    # A is Ready: the record is pushed to A, nothing is dialed.
    await set_ready(ca, ha, True)
    first = await _offer(ca)
    assert first["case"]["contact"]["id"] == contact
    oid = first["case"]["offer_id"]
    # A goes Not Ready and rejects: the record is back at the top of the list.
    await set_ready(ca, ha, False)
    rej = await ca.post(f"/api/offers/{oid}/reject", headers=ha)
    assert rej.status_code == 200, rej.text
    top = DialQueue(r, stack["campaign_id"]).peek(1)
    assert [(e.contact_id, e.section) for e in top] == [(contact, "top")]

    # B is Ready: the record is pushed to B, who lets it time out: back on top, pushed again.
    await set_ready(cb, hb, True)
    second = await _offer(cb)
    assert second["case"]["contact"]["id"] == contact
    third = await _offer(cb, not_id=second["case"]["offer_id"])
    states = [(o.agent_id, o.state) for o in _offers(f)]
    assert states == [(a, OfferState.REJECTED), (b, OfferState.EXPIRED), (b, OfferState.OPEN)]
    # Nothing was dialed so far (Asterisk's own count).
    assert await admin_ami.db_get("simcount", number) is None

    # B accepts: the call is placed at once, for B, and the person joins B's conference.
    acc = await cb.post(f"/api/offers/{third['case']['offer_id']}/accept", json={}, headers=hb)
    assert acc.status_code == 200, acc.text
    aid = acc.json()["dial"]["attempt_id"]
    await admin_ami.wait_event("Newchannel", 15, Uniqueid=aid)
    await admin_ami.wait_event("ConfbridgeJoin", 20, Conference=names.agent_bridge(b), Uniqueid=aid)

    def attempt() -> CallAttempt:
        with f() as s:
            got = s.get(CallAttempt, aid)
            assert got is not None
            return got

    await async_until(lambda: attempt().state is AttemptState.CONNECTED, 10)
    assert attempt().agent_id == b
    assert not admin_ami.find_events(
        "ConfbridgeJoin", Conference=names.agent_bridge(a), Uniqueid=aid
    )

    # B ends the call and marks it done; the number was dialed exactly once.
    assert (await cb.post(f"/api/calls/{aid}/end", headers=hb)).status_code == 200
    await async_until(lambda: attempt().state is AttemptState.ENDED, 10)
    done = await cb.post(f"/api/calls/{aid}/done", json={}, headers=hb)
    assert done.status_code == 200, done.text
    assert await admin_ami.db_get("simcount", number) == "1"
    assert await admin_ami.db_get("simdup", number) is None
