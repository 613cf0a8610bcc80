"""The classic web attacks against the status page API, on the real app (httpx ASGI
transport), the real PostgreSQL and Redis db 3: SQL injection strings in every path,
query and body parameter of every route, a script tag in a contact's name, requests
without the CSRF token on every state-changing route, an agent using another agent's
offer, and 50 wrong passwords. Each answer is a clear 4xx and the database is unchanged.

tests/integration/api/test_api_auth.py covers the single cases (5 failures lock an id,
a wrong CSRF token on two routes, another agent's offer on dial); here every route and
the end of a lock-out. The fixtures are shared with test_bad_input_schema.py."""

from __future__ import annotations

import hashlib
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from outbound.config import Config, load_config
from outbound.model import (
    Agent,
    AgentRole,
    DialMode,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.model.tables import Base
from status_page.app import ROUTES, create_app
from status_page.auth import failures_key
from status_page.schema import Api
from tests.conftest import scratch_pg_database
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until
from tests.helpers.world import World, make_world
from tests.integration.api.conftest import PASSWORD, Person, Site, agent_with_password

REDIS_URL = redis_url(3)
INJECTIONS = [
    "1' OR '1'='1",
    "1; DROP TABLE contacts;--",
    "0 UNION SELECT password_hash FROM agents--",
    "1) OR 1=1--",
    '"; DELETE FROM call_attempts; --',
    "\\'; TRUNCATE agents; --",
]
EVIL_NAME = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def bad_config(tmp_path: Path, db_url: str, **web: str) -> Config:
    return load_config(
        env={},
        cwd=tmp_path,
        overrides={
            "database.url": db_url,
            "redis.url": REDIS_URL,
            "dialer.server": f"badin-{uuid.uuid4().hex[:8]}",  # no bridge reads it
            "web.command_timeout": "1",
            "web.sse_max": "1",
            **{f"web.{k}": v for k, v in web.items()},
        },
    )


@pytest.fixture(scope="module")
def pg() -> Iterator[tuple[str, Engine]]:
    with scratch_pg_database() as url:
        eng = make_engine(url)
        upgrade(eng)
        yield url, eng
        eng.dispose()


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def w(pg: tuple[str, Engine], r: redis.Redis) -> Iterator[World]:
    """A running preview campaign: a contact with a script tag for a name, then Bert."""
    factory = session_factory(pg[1])
    number = f"+4930{random.randrange(10**6, 10**7)}1"
    for wd in make_world(World, factory, r, number, EVIL_NAME, mode=DialMode.PREVIEW):
        wd.contact(f"+4930{random.randrange(10**6, 10**7)}2", "Bert")
        wd.fill()
        yield wd


@pytest.fixture
async def site(w: World, tmp_path: Path, pg: tuple[str, Engine]) -> AsyncIterator[Site]:
    s = Site(create_app(bad_config(tmp_path, pg[0]), w.factory), w)
    yield s
    await s.close()


def snapshot(factory: sessionmaker[Session]) -> dict[str, str]:
    """Every table's rows, hashed: any insert, update or delete shows."""
    out = {}
    with factory() as s:
        for table in Base.metadata.sorted_tables:
            rows = s.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    return out


def concrete(api: Api, value: str) -> str:
    return re.sub(r"{[a-z_]+}", lambda _m: value, api.path)


# Routes with nothing to inject (no parameter, no body) or a stream that stays open.
INJECTABLE = [a for a in ROUTES if (a.params or a.query or a.body) and not a.stream]


async def test_given_sql_injection_in_every_parameter_then_no_5xx_and_no_table_changed(
    site: Site,
) -> None:
    w = site.w
    sup = await site.login(agent_with_password(w, role=AgentRole.SUPERVISOR))
    before = snapshot(w.factory)
    with w.factory() as s:
        contacts = s.execute(text("SELECT count(*) FROM contacts")).scalar()
    for api in INJECTABLE:
        for evil in INJECTIONS:
            resp = await sup.client.request(
                api.method,
                concrete(api, evil),
                params={q: evil for q in api.query},
                json={k: evil for k in (api.body or {})},
                headers={"X-CSRF-Token": sup.csrf},
            )
            where = (api.method, api.path, evil, resp.text)
            assert resp.status_code < 500, where
            assert resp.status_code != 200 or not api.params, where
            assert "$argon2" not in resp.text, where
    assert snapshot(w.factory) == before
    with w.factory() as s:  # the tables are still there and still hold the rows
        assert s.execute(text("SELECT count(*) FROM contacts")).scalar() == contacts


async def test_given_a_script_tag_in_a_contact_name_then_json_carries_it_as_text_never_markup(
    site: Site,
) -> None:
    w = site.w
    agent = agent_with_password(w)
    with transaction(w.factory) as s:  # the agent's own name is rendered by the server
        a = s.get(Agent, agent)
        assert a is not None
        a.name = EVIL_NAME
    p = await site.login(agent)
    got = await p.post(f"/api/campaigns/{w.campaign_id}/record")
    assert got.status_code == 200, got.text

    shown = await p.get("/api/interaction")
    page = await p.get("/")

    assert shown.headers["content-type"].startswith("application/json")
    assert shown.headers["x-content-type-options"] == "nosniff"  # never sniffed as HTML
    assert EVIL_NAME in repr(shown.json())  # exactly the text, as a JSON string
    assert "<script>" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x" in page.text
    # The page's own script inserts contact fields as text only (tests/browser).


MUTATING = [a for a in ROUTES if a.mutating and a.auth != "none"]


async def test_given_no_csrf_token_on_any_state_changing_route_then_403_and_nothing_changed(
    site: Site,
) -> None:
    w = site.w
    sup = await site.login(agent_with_password(w, role=AgentRole.SUPERVISOR))
    offer = await sup.post(f"/api/campaigns/{w.campaign_id}/record")
    oid = offer.json().get("offer_id", 1)
    values = {"offer_id": str(oid), "campaign_id": str(w.campaign_id), "name": f"c{w.campaign_id}"}
    before = snapshot(w.factory)

    for api in MUTATING:
        path = re.sub(r"{([a-z_]+)}", lambda m: values.get(m.group(1), "1"), api.path)
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": sup.csrf + "x"}):
            resp = await sup.client.request(api.method, path, json={}, headers=headers)
            assert resp.status_code == 403, (api.method, path, headers, resp.text)
            assert "X-CSRF-Token" in resp.json()["error"]

    assert snapshot(w.factory) == before
    assert (await sup.get("/api/me")).status_code == 200  # not even logged out


async def test_given_another_agents_offer_then_every_offer_route_refuses_and_nothing_changed(
    site: Site,
) -> None:
    w = site.w
    owner = await site.login(agent_with_password(w))
    thief: Person = await site.login(agent_with_password(w))
    oid = (await owner.post(f"/api/campaigns/{w.campaign_id}/record")).json()["offer_id"]
    before = snapshot(w.factory)

    for action, body in (
        ("dial", {}),
        ("decline", {"choice": "dnc"}),
        ("accept", {"dial": True}),
        ("reject", None),
    ):
        resp = await thief.post(f"/api/offers/{oid}/{action}", body)
        assert resp.status_code in (403, 404), (action, resp.text)
    uncheck = await thief.client.delete(
        "/api/callbacks", params={"offer_id": str(oid)}, headers={"X-CSRF-Token": thief.csrf}
    )
    assert uncheck.status_code in (403, 404), uncheck.text

    assert snapshot(w.factory) == before
    mine = (await owner.get("/api/interaction")).json()["interaction"]
    assert mine["kind"] == "offer"
    assert (await thief.get("/api/interaction")).json()["interaction"] is None


async def test_given_50_wrong_passwords_then_locked_the_right_one_refused_until_the_lock_ends(
    site: Site, r: redis.Redis
) -> None:
    agent = agent_with_password(site.w)
    c = site.browser()
    codes = []
    for i in range(50):
        resp = await c.post("/api/login", json={"agent_id": agent, "password": f"guess {i}"})
        codes.append(resp.status_code)
        assert "set-cookie" not in resp.headers
    assert codes == [401] * 5 + [429] * 45
    locked = await c.post("/api/login", json={"agent_id": agent, "password": PASSWORD})
    assert locked.status_code == 429 and "set-cookie" not in locked.headers
    assert 0 < int(locked.headers["retry-after"]) <= 300
    assert (await c.get("/api/me")).status_code == 401

    # The window passing, without waiting 300 s: the lock is the counter's TTL.
    assert r.ttl(failures_key("agent", agent)) > 0
    r.expire(failures_key("agent", agent), 1)

    async def right_password_accepted() -> Any:
        resp = await c.post("/api/login", json={"agent_id": agent, "password": PASSWORD})
        assert resp.status_code in (200, 429), resp.text
        return resp.status_code == 200

    await async_until(right_password_accepted, timeout=15, interval=0.25)
    assert (await c.get("/api/me")).status_code == 200
