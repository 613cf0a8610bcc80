"""The supervisor dashboard in a real browser (headless Chromium) on the app served over
real HTTP (uvicorn), a real SQLite database and Redis (db 2, this file's own): the page
sends the anonymous to log in, refuses an agent, and shows a supervisor an agent going
from Not ready to Ready and a call appearing, live, as the live state and the rows change
(the bridge writes exactly these in production). An agent's name holding HTML shows as
text. Screenshots go to $OUTBOUND_SCREENSHOTS or the test's tmp_path."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound import live
from outbound.config import load_config
from outbound.model import (
    Agent,
    AgentRole,
    AttemptState,
    CallAttempt,
    Campaign,
    DialMode,
    transaction,
    utcnow,
)
from outbound.security import hash_secret
from status_page.app import create_app
from status_page.dashboard import LOGIN_URL
from tests.helpers.redis_url import redis_url
from tests.helpers.until import until

from .dash_support import chromium, screenshot_dir, served

REDIS_URL = redis_url(2)
PASSWORD = "correct horse 2"
LIVE_S = 10_000  # ms the page has to show a change (it polls every 2 s)
EVIL = '<img src=x onerror="window.pwned=1">Ada'


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.flushdb()
    client.close()


def _person(factory: sessionmaker[Session], role: AgentRole, name: str) -> str:
    agent_id = str(random.randrange(10**9, 10**10))
    with transaction(factory) as s:
        s.add(Agent(id=agent_id, name=name, extension=f"Local/{agent_id}@sim-phones", role=role,
                    password_hash=hash_secret(PASSWORD)))  # fmt: skip
    return agent_id


def _login(context: Any, base: str, agent_id: str) -> None:
    """Log in through the API from the browser context (the cookie lands in its jar)."""
    resp = context.request.post(
        f"{base}/api/login", data={"agent_id": agent_id, "password": PASSWORD}
    )
    assert resp.status == 200, resp.text()


def test_given_a_supervisor_then_the_dashboard_shows_state_changes_live(
    tmp_path: Path, r: redis.Redis
) -> None:
    from playwright.sync_api import expect

    from tests.helpers.db import add_contact, migrated_factory

    factory = migrated_factory(tmp_path / "dash.db")
    contact = add_contact(factory, "+4930111222333", campaign="Spring sale",
                          mode=DialMode.PREDICTIVE)  # fmt: skip
    with factory() as s:
        campaign_id = s.scalars(select(Campaign.id).where(Campaign.name == "Spring sale")).one()
    boss = _person(factory, AgentRole.SUPERVISOR, "Sam Supervisor")
    ada = _person(factory, AgentRole.AGENT, EVIL)
    clerk = _person(factory, AgentRole.AGENT, "Carl Clerk")
    r.hset(live.agent_key(ada), mapping=live.agent_fields("up", ready=False, reason="test"))
    cfg = load_config(env={}, cwd=tmp_path, overrides={
        "database.url": f"sqlite:///{tmp_path / 'dash.db'}", "redis.url": REDIS_URL,
        "dialer.server": "dash-browser"})  # fmt: skip
    shots = screenshot_dir(tmp_path)
    print(f"dashboard screenshots in {shots}")

    with served(create_app(cfg, factory, r)) as base, chromium() as browser:
        # Nobody logged in: sent to log in. An agent: refused with a 403 page.
        anon = browser.new_context()
        page = anon.new_page()
        page.goto(f"{base}/supervisor")
        assert page.url == f"{base}{LOGIN_URL}"
        _login(anon, base, clerk)
        resp = page.goto(f"{base}/supervisor")
        assert resp is not None and resp.status == 403
        expect(page.get_by_role("alert")).to_contain_text("Supervisors only")
        page.screenshot(path=str(shots / "dashboard-0-agent-refused.png"))
        anon.close()

        ctx = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        page = ctx.new_page()
        _login(ctx, base, boss)
        page.goto(f"{base}/supervisor")
        row = page.locator(f'#agents tr[data-id="{ada}"]')
        status = row.locator(".agent-status")
        expect(status).to_have_text("Not ready", timeout=LIVE_S)
        expect(row.locator('td[data-label="Agent"]')).to_have_text(f"{EVIL} ({ada})")
        assert page.evaluate("window.pwned") is None  # the name was text, not markup
        expect(page.locator(f'#campaigns tr[data-id="{campaign_id}"]')).to_contain_text(
            "Spring sale"
        )
        expect(page.locator("#calls tbody tr")).to_have_count(0)
        page.screenshot(path=str(shots / "dashboard-1-not-ready.png"), full_page=True)

        # The bridge marks the agent Ready (live state in Redis): the page follows.
        r.hset(live.agent_key(ada), mapping=live.agent_fields("up", ready=True, reason="dtmf"))
        expect(status).to_have_text("Ready", timeout=LIVE_S)
        page.screenshot(path=str(shots / "dashboard-2-ready.png"), full_page=True)

        # A call connects to the agent (the attempt row as the bridge writes it).
        now = utcnow()
        with transaction(factory) as s:
            call = CallAttempt(
                campaign_id=campaign_id, contact_id=contact, attempt_no=1,
                e164="+4930111222333", agent_id=ada, state=AttemptState.CONNECTED,
                originated_at=now - timedelta(seconds=20), answered_at=now - timedelta(seconds=5),
                connected_at=now - timedelta(seconds=5),
            )  # fmt: skip
            s.add(call)
            s.flush()
            attempt_id = call.id
        call_row = page.locator(f'#calls tr[data-id="{attempt_id}"]')
        expect(call_row.locator('td[data-label="Number"]')).to_have_text(
            "+•••••••••2333", timeout=LIVE_S
        )
        expect(call_row.locator('td[data-label="Campaign"]')).to_have_text("Spring sale")
        expect(call_row.locator('td[data-label="State"]')).to_have_text("connected")
        expect(row.locator('td[data-label="Activity"]')).to_have_text("In call")
        expect(page.locator("#calls-total")).to_have_text("(1)")
        assert "111222" not in page.content()
        page.screenshot(path=str(shots / "dashboard-3-call.png"), full_page=True)

        # Durations go on counting between changes (the page keeps polling).
        duration = call_row.locator('td[data-label="Duration"]')
        first = duration.text_content()
        until(lambda: duration.text_content() != first, timeout=LIVE_S / 1000, interval=0.2,
              message=f"the call's duration moves on from {first}")  # fmt: skip
        page.set_viewport_size({"width": 1280, "height": 800})
        page.screenshot(path=str(shots / "dashboard-4-desktop.png"), full_page=True)
        ctx.close()
