"""The agent page in a real browser (headless Chromium, 360 px wide) against the page
served by `outbound run web` over HTTP.

1. Escaping: a contact whose name and fields hold markup and script shows them as text;
   nothing runs; the page carries its Content-Security-Policy.
2. A preview campaign on the sandbox Asterisk, every part real: the agent logs in,
   starts the phone session, goes Ready, gets the campaign pop-up (campaign started
   through the core's notify), gets a record, dials, holds, resumes, sends DTMF from the
   keypad, schedules a callback (a time in the past first: the error shows), to a new
   mobile number with a From / To window, ends the call, is refused Mark done without a
   disposition and marks it done with one. Checked on the page (texts), on Asterisk
   (conference join, MusicOnHoldStart, simdtmf/<number>, dialed once) and in the
   database (callback row, disposition). A screenshot per step."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ami_bridge.service import Bridge, health_key
from outbound import live, names
from outbound.campaigns import push
from outbound.campaigns.notify import transition_and_notify
from outbound.config import load_config
from outbound.dial_queue import DialQueue
from outbound.model import (
    Agent,
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    Campaign,
    CampaignState,
    Contact,
    ContactState,
    DialMode,
    PhoneType,
    make_engine,
    session_factory,
    transaction,
    upgrade,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from outbound.sandbox import SandboxInfo
from outbound.security import hash_secret
from status_page.pages import CSP
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact, migrated_factory
from tests.helpers.until import async_until

from .conftest import SMALL_SCREEN, Shots, Web, record_console, start_web, stop_web

PASSWORD = "page horse 1"
EVIL = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'


def _member(f: sessionmaker[Session], campaign: str) -> tuple[str, int]:
    """An agent (with the web password and a sim desk phone) in the campaign."""
    agent = add_agent(
        f,
        str(random.randrange(10**7, 10**8)),
        f"Local/{random.randrange(10**5, 10**6)}@sim-phones",
    )
    with transaction(f) as s:
        a = s.get(Agent, agent)
        assert a is not None
        a.password_hash = hash_secret(PASSWORD)
        cid = s.scalars(select(Campaign.id).where(Campaign.name == campaign)).one()
        s.add(AgentCampaign(agent_id=agent, campaign_id=cid))
    return agent, cid


def _rename(f: sessionmaker[Session], contact: int, name: str, fields: dict[str, str]) -> None:
    with transaction(f) as s:
        c = s.get(Contact, contact)
        assert c is not None
        c.name, c.fields = name, fields


async def _login(page: Page, web: Web, agent: str) -> None:
    resp = await page.goto(f"{web.url}/")
    assert resp is not None and resp.headers["content-security-policy"] == CSP
    assert resp.headers["x-frame-options"] == "DENY"
    await page.get_by_label("Agent ID").fill(agent)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#agent-id")).to_have_text(agent)
    await expect(page.locator("body")).to_have_attribute("data-loaded", "yes")


def _real_errors(console: list[str]) -> list[str]:
    """Console errors other than the API's refusals the test provokes on purpose."""
    return [m for m in console if "Failed to load resource" not in m]


@pytest.fixture
async def local(browser: Browser, tmp_path: Path, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """Without Asterisk: a SQLite database, the page served, a 360 px browser page. The
    test adds its campaign (`campaign(...)`: one contact, an agent logged in on the
    phone and Ready, the queue built) and then logs in."""
    f = migrated_factory(tmp_path / "page.db")
    r = redis.Redis.from_url(redis_url)
    web = start_web(tmp_path, f"sqlite:///{tmp_path / 'page.db'}", redis_url)
    context = await browser.new_context(viewport=SMALL_SCREEN)
    page = await context.new_page()

    def campaign(mode: DialMode, **fields: Any) -> dict[str, Any]:
        name = f"pg-{uuid.uuid4().hex[:6]}"
        number = f"+4930{random.randrange(10**6, 10**7)}1"
        contact = add_contact(f, number, campaign=name, mode=mode, **fields)
        agent, cid = _member(f, name)
        r.hset(live.agent_key(agent), mapping=live.agent_fields("up", ready=True))
        DialQueue(r, cid).rebuild(f, utcnow())
        return {"name": name, "contact": contact, "agent": agent, "campaign_id": cid}

    try:
        yield {"f": f, "r": r, "web": web, "page": page, "campaign": campaign}
    finally:
        await context.close()  # its event stream too: the server then stops at once
        stop_web(web)
        r.close()


async def test_given_markup_in_a_contact_then_the_page_shows_it_as_text_and_runs_nothing(
    local: dict[str, Any], shots: Shots
) -> None:
    page, f = local["page"], local["f"]
    got = local["campaign"](DialMode.PREVIEW)
    _rename(f, got["contact"], EVIL, {"note": "<b>bold</b> & <i>x</i>"})
    with transaction(f) as s:
        a = s.get(Agent, got["agent"])
        assert a is not None
        a.name = "<u>Ann</u>"
    console = record_console(page)
    await _login(page, local["web"], got["agent"])
    await expect(page.locator("#agent-name")).to_have_text("<u>Ann</u>")
    card = page.locator(f'#campaign-list li[data-campaign-id="{got["campaign_id"]}"]')
    await expect(card).to_contain_text(got["name"])
    await card.get_by_role("button", name="Get record").click()
    await expect(page.locator("#origin")).to_have_text(EVIL)
    await expect(page.locator("#case-fields")).to_contain_text(EVIL)
    await expect(page.locator("#case-fields")).to_contain_text("<b>bold</b> & <i>x</i>")
    await shots(page, "escaped")
    # Shown as text: no element was made from it, and nothing ran.
    assert await page.locator("#ix script, #ix img, #ix b, #ix u, header u").count() == 0
    assert await page.evaluate("window.__xss") is None
    assert _real_errors(console) == []


async def test_given_a_previewed_record_when_declined_do_not_call_then_it_is_off_the_list(
    local: dict[str, Any], shots: Shots
) -> None:
    page, f = local["page"], local["f"]
    got = local["campaign"](DialMode.PREVIEW)
    await _login(page, local["web"], got["agent"])
    card = page.locator(f'#campaign-list li[data-campaign-id="{got["campaign_id"]}"]')
    await card.get_by_role("button", name="Get record").click()
    await expect(page.locator("#ix-state")).to_have_text("Previewing")
    await expect(page.get_by_role("button", name="Accept")).to_be_hidden()
    await page.get_by_role("button", name="Decline").click()
    await expect(page.locator("#decline-dialog")).to_be_visible()
    await shots(page, "decline")
    await page.get_by_role("button", name="Do not call this contact").click()
    await expect(page.locator("#no-interaction")).to_be_visible()
    await expect(page.locator("#info")).to_contain_text("will not be called")
    with f() as s:
        contact = s.get(Contact, got["contact"])
        assert contact is not None and contact.state is ContactState.DNC
        offer = s.scalars(select(Offer)).one()
        assert offer.state is OfferState.DO_NOT_CALL
    # Nothing left to get: the API's answer shows.
    await card.get_by_role("button", name="Get record").click()
    info = page.locator("#info")
    await expect(info).not_to_have_text("Declined: this contact will not be called.")
    assert (await info.text_content() or "").strip() not in ("", "Record received.")
    await expect(page.locator("#no-interaction")).to_be_visible()
    await shots(page, "nothing-left")


async def test_given_a_pushed_record_then_accept_reject_and_the_caller_id_choice_show(
    local: dict[str, Any], shots: Shots
) -> None:
    page, f, r = local["page"], local["f"], local["r"]
    got = local["campaign"](
        DialMode.PUSH_PREVIEW,
        caller_ids=["+4930111111", "+4930222222"],
        ask_caller_id=True,
        push_timeout_s=120,
    )
    await _login(page, local["web"], got["agent"])
    await expect(page.locator("#preview-state")).to_have_text("Ready")
    pushed = push.push_offer(f, DialQueue(r, got["campaign_id"]), got["agent"], got["campaign_id"])
    assert pushed["status"] == "record"
    # The poll picks it up (push_offer publishes no event of its own).
    await expect(page.get_by_role("button", name="Accept")).to_be_visible(timeout=10_000)
    await expect(page.get_by_role("button", name="Reject")).to_be_visible()
    await expect(page.get_by_role("button", name="Dial", exact=True)).to_be_hidden()
    await expect(page.get_by_label("Caller ID")).to_be_visible()
    await expect(page.locator("#caller-id option")).to_have_text(
        ["Choose a caller ID", "+4930111111", "+4930222222"]
    )
    await shots(page, "pushed")
    await page.get_by_role("button", name="Reject").click()
    await expect(page.locator("#no-interaction")).to_be_visible()
    with f() as s:
        offer = s.get(Offer, pushed["offer_id"])
        assert offer is not None and offer.state is OfferState.REJECTED
    # The outbound preview channel: Not ready, on the page and in the live state.
    await page.get_by_role("button", name="Outbound preview: Not ready").click()
    await expect(page.locator("#preview-state")).to_have_text("Not ready")
    assert r.hget(live.agent_key(got["agent"]), "ready_preview") == b"0"
    await shots(page, "preview-not-ready")


# ---------------------------------------------------------------- on the sandbox
@pytest.fixture
async def stack(
    sandbox: SandboxInfo, tmp_path: Path, pg_url: str, redis_url: str
) -> AsyncIterator[dict[str, Any]]:
    """A loaded (not yet started) preview campaign with one record (a person who talks
    long) and disposition codes, a member agent, a Bridge, and the page served."""
    engine = make_engine(pg_url)
    upgrade(engine)
    f = session_factory(engine)
    name = f"page-{uuid.uuid4().hex[:6]}"
    number = f"+4930{random.randrange(10**6, 10**7)}8"  # sim scenario human_long
    contact = add_contact(
        f,
        number,
        campaign=name,
        mode=DialMode.PREVIEW,
        state=CampaignState.LOADED,
        description="Spring offer to existing customers",
        disposition_codes=["sale", "no_interest"],
        disposition_required=True,
    )
    _rename(f, contact, "Erika Mustermann", {"customer_no": "K-1001"})
    agent, cid = _member(f, name)
    server = f"page-{uuid.uuid4().hex[:6]}"
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
            "agent": agent,
            "campaign": name,
            "campaign_id": cid,
            "contact": contact,
            "number": number,
        }
    finally:
        if web is not None:
            stop_web(web)
        bridge.stop()
        await asyncio.wait_for(task, 15)
        r.close()
        engine.dispose()


async def _members(admin: AmiClient, agent: str) -> list[str]:
    try:
        _, ev = await admin.collect("ConfbridgeList", Conference=names.agent_bridge(agent))
    except Exception:  # no conference (yet)
        return []
    return [e["Channel"] for e in ev]


async def _listening(admin: AmiClient, number: str) -> bool:
    """The simulated contact said hello and now hears (and records) digits."""
    _, chans = await admin.collect("CoreShowChannels")
    return any(
        number in c.get("Channel", "") and c.get("Application", "").lower() == "background"
        for c in chans
    )


def _attempt(f: sessionmaker[Session], contact: int) -> CallAttempt | None:
    with f() as s:
        return s.scalar(select(CallAttempt).where(CallAttempt.contact_id == contact))


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def _count_is(value: Any, expected: int) -> bool:
    return len(await value) == expected


@pytest.mark.asterisk
async def test_given_a_preview_campaign_then_an_agent_works_a_record_from_the_page(
    stack: dict[str, Any], browser: Browser, admin_ami: AmiClient, shots: Shots
) -> None:
    f, r, web, agent = stack["f"], stack["r"], stack["web"], stack["agent"]
    number, contact = stack["number"], stack["contact"]
    conf = names.agent_bridge(agent)
    page = await (await browser.new_context(viewport=SMALL_SCREEN)).new_page()
    console = record_console(page)

    # Log in; the desk phone is called into the agent's conference; Ready.
    await _login(page, web, agent)
    await expect(page.locator("body")).to_have_attribute("data-events", "open")
    await shots(page, "logged-in")
    await page.get_by_role("button", name="Start phone session").click()
    await expect(page.locator("#session-state")).to_have_text("Up", timeout=40_000)
    assert len(await _members(admin_ami, agent)) == 1
    await page.get_by_role("button", name="Ready", exact=True).click()
    await expect(page.locator("#voice-state")).to_have_text("Ready")

    # The campaign starts: the pop-up, with Get record.
    _, delivery = await asyncio.to_thread(transition_and_notify, f, r, stack["campaign"], "start")
    assert delivery is not None and delivery.delivered == (agent,)
    DialQueue(r, stack["campaign_id"]).rebuild(f, utcnow())
    notice = page.locator("#notice")
    await expect(notice).to_be_visible(timeout=10_000)
    await expect(page.locator("#notice-title")).to_have_text("Campaign started")
    await expect(page.locator("#notice-name")).to_have_text(stack["campaign"])
    await expect(page.locator("#notice-mode")).to_have_text("Manual")
    await shots(page, "campaign-popup")
    await notice.get_by_role("button", name="Get record").click()
    await expect(page.locator("#origin")).to_have_text("Erika Mustermann")
    await expect(page.locator("#ix-state")).to_have_text("Previewing")
    await expect(page.locator("#case-fields")).to_contain_text("K-1001")
    await expect(notice).to_be_hidden()
    await shots(page, "record")

    # Dial: Asterisk calls the number and the person joins the agent's conference.
    await page.get_by_role("button", name="Dial", exact=True).click()
    attempt = await async_until(lambda: _attempt(f, contact), 10, message="no attempt")
    aid = attempt.id
    await admin_ami.wait_event("ConfbridgeJoin", 20, Conference=conf, Uniqueid=aid)
    await expect(page.locator("#ix-state")).to_have_text("Connected", timeout=15_000)
    await expect(page.locator("#origin")).to_have_text("Erika Mustermann")
    await shots(page, "connected")

    # Hold: the contact hears music; Resume: back in the conference.
    await page.get_by_role("button", name="Hold", exact=True).click()
    await admin_ami.wait_event("MusicOnHoldStart", 10, Uniqueid=aid)
    await expect(page.locator("#hold-state")).to_be_visible()
    await shots(page, "on-hold")
    await page.get_by_role("button", name="Resume").click()
    await admin_ami.wait_event("MusicOnHoldStop", 10, Uniqueid=aid)
    await expect(page.locator("#hold-state")).to_be_hidden()
    await async_until(lambda: _count_is(_members(admin_ami, agent), 2), 10, message="back")

    # DTMF from the keypad: the contact hears the digits; the case history has them.
    await async_until(lambda: _listening(admin_ami, number), 15, message="not listening")
    for key in "12#":
        await page.locator(f'#keypad button[data-key="{key}"]').click()
    await expect(page.get_by_label("DTMF digits")).to_have_value("12#")
    await page.get_by_role("button", name="Send DTMF").click()
    await async_until(lambda: _is(admin_ami.db_get("simdtmf", number), "12#"), 10)
    await expect(page.locator("#dtmf-sent")).to_contain_text("12#")
    await shots(page, "dtmf")

    # Schedule callback: a time in the past is refused with the API's message.
    await page.get_by_role("button", name="Schedule callback").click()
    dialog = page.locator("#callback-dialog")
    await expect(dialog).to_be_visible()
    past = datetime.now(UTC) - timedelta(minutes=10)  # the agent's zone is UTC
    await page.get_by_label("Date").fill(f"{past:%Y-%m-%d}")
    await page.get_by_label("Time", exact=True).fill(f"{past:%H:%M}")
    await dialog.get_by_role("button", name="Save callback").click()
    error = page.locator("#callback-error")
    await expect(error).to_contain_text("a callback in the past")
    await expect(error).to_have_attribute("role", "alert")
    await shots(page, "callback-in-the-past")
    with f() as s:
        assert s.scalars(select(Callback)).all() == []
    # Then tomorrow noon, personal, to a new mobile number reachable 09:00-20:00.
    mobile = f"+49151{random.randrange(10**6, 10**7)}0"
    due = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=0)
    await page.get_by_label("Date").fill(f"{due:%Y-%m-%d}")
    await page.get_by_label("Time", exact=True).fill("12:00")
    await page.get_by_label("Personal callback").check()
    await page.get_by_label("Number", exact=True).select_option(label="New number...")
    await page.get_by_label("New number").fill(mobile)
    await page.get_by_label("Number type").select_option("mobile")
    await page.get_by_label("From").fill("00:00")
    await page.get_by_label("To", exact=True).fill("23:59")
    await shots(page, "callback-new-number")
    await dialog.get_by_role("button", name="Save callback").click()
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#schedule")).to_have_text("Callback scheduled")
    await expect(page.locator("#callback-summary")).to_contain_text(mobile)
    with f() as s:
        cb = s.scalars(select(Callback)).one()
        assert cb.state is CallbackState.PENDING and cb.personal and cb.agent_id == agent
        assert cb.new_number == mobile and cb.new_number_type is PhoneType.MOBILE
        assert cb.due_at.astimezone(UTC).replace(second=0, microsecond=0) == due.replace(
            second=0, microsecond=0
        )
        assert (f"{cb.window_start:%H:%M}", f"{cb.window_end:%H:%M}") == ("00:00", "23:59")
        assert cb.attempt_id == aid
    await shots(page, "callback-scheduled")

    # End the call: wrap-up; Mark done needs a disposition; then done with one.
    await page.get_by_role("button", name="End call").click()
    await admin_ami.wait_event("ConfbridgeLeave", 10, Conference=conf, Uniqueid=aid)
    await expect(page.locator("#ix-state")).to_have_text("Wrap-up", timeout=10_000)
    await page.get_by_role("button", name="Mark done").click()
    await expect(page.locator("#error")).to_contain_text("a disposition code is required")
    await shots(page, "disposition-required")
    await page.get_by_label("Disposition").select_option("sale")
    await page.get_by_role("button", name="Mark done").click()
    await expect(page.locator("#no-interaction")).to_be_visible(timeout=10_000)
    await expect(page.locator("#error")).to_be_hidden()
    await shots(page, "done")
    with f() as s:
        done = s.get(CallAttempt, aid)
        assert done is not None and done.state is AttemptState.ENDED
        assert done.disposition == "sale"
        assert s.scalars(select(Callback)).one().state is CallbackState.PENDING
    # Asterisk dialed the number exactly once.
    assert await admin_ami.db_get("simcount", number) == "1"
    assert await admin_ami.db_get("simdup", number) is None
    assert _real_errors(console) == []
