"""Two agents and a supervisor in three browser contexts (headless Chromium) on a push
preview campaign on the sandbox Asterisk, every part real: the page served by `outbound
run web`, a Bridge with its campaign engine on (so the bridge itself pushes records),
PostgreSQL and a private redis-server.

Agent B logs in, starts the phone session and goes Ready (voice and outbound preview);
the bridge pushes a record to B; B's page shows Accept / Reject; B leaves the outbound
preview channel (so that the bridge does not push the record straight back) and rejects
it: the offer is rejected in the database and the record is first in line again. Agent
C goes Ready: the bridge pushes that same record to C, who accepts it (the page's Accept
dials at once): Asterisk dials the number once and the contact joins C's conference. The
supervisor, on /supervisor, sees B and C go from Not ready to Ready and C In call.
A screenshot per step of each context."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from playwright.async_api import Browser, Page, ViewportSize, expect
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ami_bridge.service import Bridge, health_key
from outbound import names
from outbound.config import load_config
from outbound.dial_queue import DialQueue
from outbound.model import (
    Agent,
    AgentCampaign,
    AgentRole,
    CallAttempt,
    Campaign,
    DialMode,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.model.tables import Offer, OfferState
from outbound.sandbox import SandboxInfo
from outbound.security import hash_secret
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_contact
from tests.helpers.until import async_until

from .conftest import SMALL_SCREEN, Shots, Web, record_console, start_web, stop_web

PASSWORD = "two agents 1"
LIVE_MS = 10_000  # the pages follow by their event stream and polls (dashboard: 2 s)
SESSION_MS = 40_000  # the desk phone is called into the agent's conference
PHONE: ViewportSize = {"width": SMALL_SCREEN["width"], "height": SMALL_SCREEN["height"]}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}  # the supervisor's screen


def _person(f: sessionmaker[Session], name: str, role: AgentRole, cid: int | None) -> str:
    """An agent (a sim desk phone of their own) or supervisor with the web password;
    a member of campaign `cid` when given."""
    agent_id = str(random.randrange(10**7, 10**8))
    with transaction(f) as s:
        s.add(Agent(id=agent_id, name=name, role=role, password_hash=hash_secret(PASSWORD),
                    extension=f"Local/{random.randrange(10**5, 10**6)}@sim-phones"))  # fmt: skip
        if cid is not None:
            s.add(AgentCampaign(agent_id=agent_id, campaign_id=cid))
    return agent_id


@pytest.fixture
async def stack(
    sandbox: SandboxInfo, tmp_path: Path, pg_url: str, redis_url: str
) -> AsyncIterator[dict[str, Any]]:
    """A running push preview campaign with two records (people who talk long), agents B
    and C in it, a supervisor, a Bridge with the campaign engine on, the page served."""
    engine = make_engine(pg_url)
    upgrade(engine)
    f = session_factory(engine)
    name = f"two-{uuid.uuid4().hex[:6]}"
    numbers = [f"+4930{random.randrange(10**6, 10**7)}8" for _ in range(2)]  # human_long
    contacts = [
        add_contact(f, n, campaign=name, mode=DialMode.PUSH_PREVIEW, push_timeout_s=120)
        for n in numbers
    ]
    with f() as s:
        cid = s.scalars(select(Campaign.id).where(Campaign.name == name)).one()
    server = f"two-{uuid.uuid4().hex[:6]}"
    cfg = load_config(
        env={},
        cwd=tmp_path,
        overrides={
            "database.url": pg_url,
            "redis.url": redis_url,
            "ami.port": str(sandbox.ami_port),
            "ami.username": sandbox.ami_user,
            "ami.secret": sandbox.ami_secret,
            "ami.ping_interval": "1",
            "dialer.server": server,
            "dialer.engine": "on",
            "dialer.trunk": "Local/${NUMBER}@sim-contacts",
            "dialer.ring_timeout": "15",
        },
    )
    r = redis.Redis.from_url(redis_url)
    bridge = Bridge(cfg, f, aredis.Redis.from_url(redis_url))
    task = asyncio.ensure_future(bridge.run())
    web: Web | None = None
    try:
        await async_until(lambda: r.get(health_key(server)) is not None, 15)
        web = start_web(
            tmp_path, pg_url, redis_url, **{"dialer.server": server, "web.command_timeout": "20"}
        )
        yield {
            "f": f,
            "r": r,
            "web": web,
            "campaign_id": cid,
            "numbers": dict(zip(contacts, numbers, strict=True)),
            "b": _person(f, "Bea Agent", AgentRole.AGENT, cid),
            "c": _person(f, "Cem Agent", AgentRole.AGENT, cid),
            "boss": _person(f, "Sue Supervisor", AgentRole.SUPERVISOR, None),
        }
    finally:
        if web is not None:
            stop_web(web)
        bridge.stop()
        await asyncio.wait_for(task, 15)
        r.close()
        engine.dispose()


async def _log_in(page: Page, url: str, agent: str) -> None:
    """The log-in form (the agent page's, also where /supervisor sends the anonymous)."""
    await page.goto(url)
    await page.get_by_label("Agent ID").fill(agent)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()


async def _agent_page(browser: Browser, web: Web, agent: str, shots: Shots, who: str) -> Page:
    """Agent `who` logged in on the agent page, phone session up (Not ready)."""
    page = await (await browser.new_context(viewport=PHONE)).new_page()
    await _log_in(page, f"{web.url}/", agent)
    await expect(page.locator("#agent-id")).to_have_text(agent)
    await expect(page.locator("body")).to_have_attribute("data-events", "open")
    await shots(page, f"{who}-logged-in")
    await page.get_by_role("button", name="Start phone session").click()
    await expect(page.locator("#session-state")).to_have_text("Up", timeout=SESSION_MS)
    await expect(page.locator("#voice-state")).to_have_text("Not ready")
    await shots(page, f"{who}-session-up")
    return page


async def _go_ready(page: Page) -> None:
    """Ready on voice; the bridge sets the outbound preview channel Ready with it."""
    await page.get_by_role("button", name="Ready", exact=True).click()
    await expect(page.locator("#voice-state")).to_have_text("Ready")
    await expect(page.locator("#preview-state")).to_have_text("Ready")


async def _members(admin: AmiClient, agent: str) -> list[str]:
    try:
        _, ev = await admin.collect("ConfbridgeList", Conference=names.agent_bridge(agent))
    except Exception:  # no conference (yet)
        return []
    return [e["Channel"] for e in ev]


def _offers(f: sessionmaker[Session]) -> list[Offer]:
    with f() as s:
        return list(s.scalars(select(Offer).order_by(Offer.id)))


def _attempt(f: sessionmaker[Session], contact: int) -> CallAttempt | None:
    with f() as s:
        return s.scalar(select(CallAttempt).where(CallAttempt.contact_id == contact))


def _pushed_to(f: sessionmaker[Session], agent: str) -> Offer | None:
    """The open offer the bridge made to `agent`, if any."""
    got = [o for o in _offers(f) if o.agent_id == agent and o.state is OfferState.OPEN]
    return got[0] if got else None


@pytest.mark.asterisk
async def test_given_two_agents_when_one_rejects_a_pushed_record_then_the_other_gets_it(
    stack: dict[str, Any], browser: Browser, admin_ami: AmiClient, shots: Shots
) -> None:
    f, web, b, c = stack["f"], stack["web"], stack["b"], stack["c"]
    queue = DialQueue(stack["r"], stack["campaign_id"])

    # The supervisor logs in from /supervisor (sent to the log-in form and back).
    sup = await (await browser.new_context(viewport=DESKTOP)).new_page()
    sup_console = record_console(sup)
    await _log_in(sup, f"{web.url}/supervisor", stack["boss"])
    await expect(sup).to_have_url(f"{web.url}/supervisor")
    row = {a: sup.locator(f'#agents tr[data-id="{a}"]') for a in (b, c)}
    status = {a: row[a].locator(".agent-status") for a in (b, c)}
    for a in (b, c):
        await expect(status[a]).to_have_text("Logged out", timeout=LIVE_MS)
    await shots(sup, "supervisor-logged-out")

    # B and C log in and start their phone sessions (side by side): both Not ready.
    page_b, page_c = await asyncio.gather(
        _agent_page(browser, web, b, shots, "b"), _agent_page(browser, web, c, shots, "c")
    )
    console = {b: record_console(page_b), c: record_console(page_c)}
    assert len(await _members(admin_ami, b)) == 1 and len(await _members(admin_ami, c)) == 1
    for a in (b, c):
        await expect(status[a]).to_have_text("Not ready", timeout=LIVE_MS)
    await shots(sup, "supervisor-both-not-ready")

    # B goes Ready: the bridge pushes B a record; Accept / Reject show, no Dial.
    await _go_ready(page_b)
    offer = await async_until(lambda: _pushed_to(f, b), 10, message="nothing pushed to B")
    contact = offer.contact_id
    number = stack["numbers"][contact]
    await expect(page_b.locator("#ix-number")).to_have_text(number, timeout=LIVE_MS)
    await expect(page_b.get_by_role("button", name="Accept")).to_be_visible(timeout=LIVE_MS)
    await expect(page_b.get_by_role("button", name="Reject")).to_be_visible()
    await expect(page_b.get_by_role("button", name="Dial", exact=True)).to_be_hidden()
    await shots(page_b, "b-pushed")
    await expect(status[b]).to_have_text("Ready", timeout=LIVE_MS)
    await expect(status[c]).to_have_text("Not ready")
    await shots(sup, "supervisor-b-ready")

    # B leaves the outbound preview channel (else the record comes straight back) and
    # rejects: the offer is rejected, the record first in line again; B stays Ready.
    await page_b.get_by_role("button", name="Outbound preview: Not ready").click()
    await expect(page_b.locator("#preview-state")).to_have_text("Not ready")
    await page_b.get_by_role("button", name="Reject").click()
    await expect(page_b.locator("#no-interaction")).to_be_visible(timeout=LIVE_MS)
    await expect(page_b.locator("#info")).to_contain_text("back to the top of the list")
    await shots(page_b, "b-rejected")
    assert [(o.agent_id, o.state) for o in _offers(f)] == [(b, OfferState.REJECTED)]
    assert queue.position(contact) == 0
    assert _attempt(f, contact) is None
    assert await admin_ami.db_get("simcount", number) is None

    # C goes Ready: the bridge pushes C the same record; C accepts, which dials it.
    await _go_ready(page_c)
    pushed = await async_until(lambda: _pushed_to(f, c), 10, message="nothing pushed to C")
    assert pushed.contact_id == contact
    await expect(page_c.get_by_role("button", name="Accept")).to_be_visible(timeout=LIVE_MS)
    await expect(page_c.locator("#ix-number")).to_have_text(number)
    await shots(page_c, "c-pushed")
    await expect(status[c]).to_have_text("Ready", timeout=LIVE_MS)
    await expect(status[b]).to_have_text("Ready")
    await shots(sup, "supervisor-both-ready")
    await page_c.get_by_role("button", name="Accept").click()
    attempt = await async_until(lambda: _attempt(f, contact), 10, message="no attempt")
    conf = names.agent_bridge(c)
    await admin_ami.wait_event("ConfbridgeJoin", 20, Conference=conf, Uniqueid=attempt.id)
    await expect(page_c.locator("#ix-state")).to_have_text("Connected", timeout=15_000)
    await shots(page_c, "c-connected")
    assert attempt.agent_id == c
    assert len(await _members(admin_ami, c)) == 2 and len(await _members(admin_ami, b)) == 1
    assert await admin_ami.db_get("simcount", number) == "1"
    assert await admin_ami.db_get("simdup", number) is None
    other = next(n for k, n in stack["numbers"].items() if k != contact)
    assert await admin_ami.db_get("simcount", other) is None  # nobody else was dialed

    # The supervisor sees C in the call; B is Ready and idle.
    activity = {a: row[a].locator('td[data-label="Activity"]') for a in (b, c)}
    await expect(activity[c]).to_have_text("In call", timeout=LIVE_MS)
    await expect(activity[b]).to_have_text("Idle")
    await expect(status[b]).to_have_text("Ready")
    await expect(row[b].locator('td[data-label="Preview"]')).to_have_text("Not ready")
    call_row = sup.locator(f'#calls tr[data-id="{attempt.id}"]')
    await expect(call_row.locator('td[data-label="State"]')).to_have_text("connected")
    await shots(sup, "supervisor-c-in-call")

    # C ends the call: it leaves the conference (the sandbox is left as it was found).
    await page_c.get_by_role("button", name="End call").click()
    await admin_ami.wait_event("ConfbridgeLeave", 10, Conference=conf, Uniqueid=attempt.id)
    await expect(page_c.locator("#ix-state")).to_have_text("Wrap-up", timeout=LIVE_MS)
    await shots(page_c, "c-wrap-up")
    for seen in (*console.values(), sup_console):
        assert [m for m in seen if "Failed to load resource" not in m] == []
