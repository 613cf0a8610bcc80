"""A callback from end to end, every part real: on the sandbox Asterisk an agent talks to a
contact (progressive), schedules a personal callback to a new mobile number through the
API (first a time in the past: refused), marks the call done; the Celery worker and beat
(subprocesses) fire it when due; the bridge routes it: not to the other, Ready agent
within the grace period, then to the pool once it is over; the other agent rejects it, it
goes back to routing and reaches its own agent when they are Ready again, who accepts;
Asterisk dials the new number exactly once, into that agent's conference. One PostgreSQL
database, one private Redis for everything."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aredis
from sqlalchemy import select

from agi_scripts.routes import register
from agi_scripts.server import AgiServer
from ami_bridge.service import Bridge, health_key
from outbound import names
from outbound.model import (
    Agent,
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    Campaign,
    ContactState,
    DialMode,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.model.tables import Offer, OfferState
from outbound.sandbox import SandboxInfo
from outbound.security import hash_secret
from status_page.app import create_app
from tests.helpers.ami import AmiClient
from tests.helpers.api_agent import phone_login, set_ready
from tests.helpers.callbacks import private_redis
from tests.helpers.celery_procs import Scheduler
from tests.helpers.db import add_agent, add_contact
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

pytestmark = pytest.mark.asterisk
PASSWORD = "correct horse battery"
GRACE_S = 6


@pytest.fixture
async def stack(sandbox: SandboxInfo, tmp_path: Path, pg_url: str) -> AsyncIterator[dict[str, Any]]:
    engine = make_engine(pg_url)
    upgrade(engine)
    f = session_factory(engine)
    name = f"cb-e2e-{uuid.uuid4().hex[:6]}"
    number = f"+4930{random.randrange(10**6, 10**7)}8"  # a person who talks long
    contact = add_contact(
        f,
        number,
        campaign=name,
        mode=DialMode.PROGRESSIVE,
        callback_grace_s=GRACE_S,
        callback_fallback="pool",
        push_timeout_s=60,
    )
    agents = [
        add_agent(
            f,
            str(random.randrange(10**7, 10**8)),
            f"Local/{random.randrange(10**5, 10**6)}@sim-phones",
        )
        for _ in range(2)
    ]
    with transaction(f) as s:
        cid = s.scalars(select(Campaign.id).where(Campaign.name == name)).one()
        for a in agents:
            row = s.get(Agent, a)
            assert row is not None
            row.password_hash = hash_secret(PASSWORD)
            s.add(AgentCampaign(agent_id=a, campaign_id=cid))
    with private_redis() as redis_url:
        server = f"cb-{uuid.uuid4().hex[:6]}"
        cfg = bridge_config(
            sandbox,
            tmp_path,
            database_url=pg_url,
            redis_url=redis_url,
            server=server,
            web__command_timeout="20",
        )
        agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
        agi_redis = aredis.Redis.from_url(redis_url)
        register(agi, f, agi_redis, cfg)
        await agi.start()
        r = redis.Redis.from_url(redis_url)
        bridge = Bridge(cfg, f, aredis.Redis.from_url(redis_url))
        task = asyncio.ensure_future(bridge.run())
        app = create_app(cfg, f, r)
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            for _ in agents
        ]
        sched = Scheduler(tmp_path, pg_url, redis_url)
        try:
            sched.worker()
            sched.beat()
            await async_until(lambda: r.get(health_key(server)) is not None, 15)
            yield {
                "f": f,
                "r": r,
                "clients": clients,
                "agents": agents,
                "contact": contact,
                "campaign_id": cid,
                "sched": sched,
            }
        finally:
            sched.stop()
            for c in clients:
                await c.aclose()
            await app.state.ctx.aredis.aclose()
            bridge.stop()
            await asyncio.wait_for(task, 15)
            await agi.close()
            await agi_redis.aclose()
            r.close()
            engine.dispose()


async def _shown(c: httpx.AsyncClient, timeout: float) -> dict[str, Any]:
    async def offer() -> dict[str, Any] | None:
        ix = (await c.get("/api/interaction")).json().get("interaction")
        return dict(ix["case"]) if ix and ix["kind"] == "offer" else None

    return await async_until(offer, timeout, interval=0.3, message="no callback offered")


async def test_given_a_personal_callback_then_it_fires_once_goes_to_the_pool_after_grace_and_dials_the_new_number_once(
    stack: dict[str, Any], admin_ami: AmiClient
) -> None:
    f, r = stack["f"], stack["r"]
    (ca, cb), (a, b) = stack["clients"], stack["agents"]
    ha = await phone_login(ca, a, PASSWORD)
    await set_ready(ca, ha, True)

    # The progressive dialer connects the contact to A.
    def attempts() -> list[CallAttempt]:
        with f() as s:
            return list(s.scalars(select(CallAttempt).order_by(CallAttempt.created_at)))

    await async_until(lambda: any(x.state is AttemptState.CONNECTED for x in attempts()), 30)
    call = attempts()[0].id
    await admin_ami.wait_event(
        "ConfbridgeJoin", 10, Conference=names.agent_bridge(a), Uniqueid=call
    )

    # A schedules a personal callback to a new mobile number: first a time in the past.
    mobile = f"+49151{random.randrange(10**6, 10**7)}0"  # a person answers
    now = datetime.now(UTC)
    before = now - timedelta(minutes=2)
    body = {
        "attempt_id": call,
        "date": f"{before:%Y-%m-%d}",
        "time": f"{before:%H:%M}",
        "personal": True,
        "new_number": mobile,
        "new_number_type": "mobile",
        "window_from": "00:00",
        "window_to": "23:59",
    }
    past = await ca.post("/api/callbacks", json=body, headers=ha)
    assert past.status_code == 422 and "in the past" in past.json()["error"]
    # Two minutes ahead on A's clock (UTC); the window is the whole day where the contact
    # lives (a zone where it is daytime now), so the due time is always inside it.
    ahead = now + timedelta(minutes=2)
    body |= {"date": f"{ahead:%Y-%m-%d}", "time": f"{ahead:%H:%M}"}
    made = await ca.post("/api/callbacks", json=body, headers=ha)
    assert made.status_code == 200, made.text
    cb_id = made.json()["callback"]["id"]
    # A ends the call and marks it done: the contact waits for its callback.
    assert (await ca.post(f"/api/calls/{call}/end", headers=ha)).status_code == 200
    await async_until(lambda: attempts()[0].state is AttemptState.ENDED, 10)
    done = await ca.post(f"/api/calls/{call}/done", json={}, headers=ha)
    assert done.status_code == 200, done.text
    assert done.json()["contact_state"] == ContactState.CALLBACK.value
    # A is Not Ready when it comes due; B is Ready. (The test brings the due time closer
    # than the API's minute resolution allows, to keep the run short.)
    await set_ready(ca, ha, False)
    hb = await phone_login(cb, b, PASSWORD)
    await set_ready(cb, hb, True)
    with transaction(f) as s:
        row = s.get(Callback, cb_id)
        assert row is not None and row.state is CallbackState.PENDING
        row.due_at = datetime.now(UTC) + timedelta(seconds=3)

    # Celery fires it once; within the grace period nobody else is offered it.
    def callback() -> Callback:
        with f() as s:
            got = s.get(Callback, cb_id)
            assert got is not None
            return got

    await async_until(lambda: callback().state is CallbackState.QUEUED, 20, message="not fired")
    fired_at = callback().fired_at
    assert fired_at is not None
    shown_b = await _shown(cb, GRACE_S + 15)
    assert shown_b["origin"] == "Personal callback" and shown_b["dialed_number"] == mobile
    with f() as s:
        first = s.scalar(select(Offer).where(Offer.callback_id == cb_id))
        assert first is not None and first.agent_id == b
        assert first.created_at >= fired_at + timedelta(seconds=GRACE_S)
    # B rejects: back to routing; A is Ready again and gets it (its own agent).
    rej = await cb.post(f"/api/offers/{shown_b['offer_id']}/reject", headers=hb)
    assert rej.status_code == 200, rej.text
    await set_ready(ca, ha, True)
    shown_a = await _shown(ca, 15)
    assert shown_a["origin"] == "Personal callback"
    acc = await ca.post(f"/api/offers/{shown_a['offer_id']}/accept", json={}, headers=ha)
    assert acc.status_code == 200, acc.text
    again = acc.json()["dial"]["attempt_id"]
    await admin_ami.wait_event(
        "ConfbridgeJoin", 20, Conference=names.agent_bridge(a), Uniqueid=again
    )
    with f() as s:
        att = s.get(CallAttempt, again)
        assert att is not None and att.is_callback and att.e164 == mobile
    assert callback().state is CallbackState.DONE and callback().fired_at == fired_at
    # Asterisk dialed the new number exactly once, the first number once.
    assert await admin_ami.db_get("simcount", mobile) == "1"
    assert await admin_ami.db_get("simdup", mobile) is None
    with f() as s:
        offers = [(o.agent_id, o.state) for o in s.scalars(select(Offer).order_by(Offer.id))]
    assert offers == [(b, OfferState.REJECTED), (a, OfferState.DIALED)]
    # Fired once: one callback_due event on the stream.
    due = [e for _, e in r.xrange(names.KEY_EVENTS) if e.get(b"event") == b"callback_due"]
    assert len(due) == 1
