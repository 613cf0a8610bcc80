"""Log-in, sessions, CSRF and the log-in rate limit of the API, on the real app with the
real database (SQLite and PostgreSQL) and Redis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

from outbound.model import CallAttempt
from outbound.model.tables import Offer, OfferState
from status_page.app import ROUTES, create_app
from status_page.auth import session_key
from tests.helpers.world import World

from .conftest import PASSWORD, Site, agent_with_password, web_config

LOGIN = "/api/login"


def _path(template: str) -> str:
    """A concrete path for a route template (ids that may or may not exist)."""
    return re.sub(r"{[a-z_]+}", lambda m: "1-1" if "notification" in m.group() else "1", template)


async def test_given_a_right_password_then_a_session_cookie_and_a_csrf_token(
    site: Site, r: redis.Redis
) -> None:
    agent = agent_with_password(site.w)
    c = site.browser()
    resp = await c.post(LOGIN, json={"agent_id": agent, "password": PASSWORD})
    assert resp.status_code == 200
    body = resp.json()
    assert body["agent_id"] == agent and body["role"] == "agent" and len(body["csrf_token"]) >= 40
    cookie = resp.headers["set-cookie"]
    token = re.match(r"ob_session=([^;]+);", cookie)
    assert token is not None and len(token.group(1)) >= 43  # 256 bits, url-safe base64
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "path=/", "samesite=strict"} <= flags
    assert "secure" not in flags  # loopback http by default
    # Redis holds the token's hash, never the token itself.
    assert r.exists(session_key(token.group(1)))
    assert not any(token.group(1).encode() in k for k in r.keys("*"))
    me = await c.get("/api/me")
    assert me.status_code == 200 and me.json()["agent"]["id"] == agent


async def test_given_cookie_secure_on_then_the_cookie_is_secure(
    w: World, tmp_path: Path, db_url: str
) -> None:
    agent = agent_with_password(w)
    site = Site(create_app(web_config(tmp_path, db_url, cookie_secure="on"), w.factory), w)
    try:
        resp = await site.browser().post(LOGIN, json={"agent_id": agent, "password": PASSWORD})
        assert "secure" in {f.strip().lower() for f in resp.headers["set-cookie"].split(";")}
    finally:
        await site.close()


async def test_given_a_wrong_password_or_an_unknown_agent_then_the_same_refusal(
    site: Site,
) -> None:
    agent = agent_with_password(site.w)
    c = site.browser()
    wrong = await c.post(LOGIN, json={"agent_id": agent, "password": "not the password"})
    unknown = await c.post(LOGIN, json={"agent_id": "4242424242", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": "wrong agent id or password"}
    assert "set-cookie" not in wrong.headers and "set-cookie" not in unknown.headers
    assert (await c.get("/api/me")).status_code == 401
    for bad in (
        {"agent_id": "abc", "password": PASSWORD},
        {"agent_id": agent},
        {"agent_id": agent, "password": "x" * 2000},
        {"agent_id": agent, "password": PASSWORD, "admin": True},
    ):
        resp = await c.post(LOGIN, json=bad)
        assert resp.status_code == 422, bad
        assert "error" in resp.json()


async def test_given_five_failures_then_the_agent_id_is_refused_even_with_the_password(
    site: Site,
) -> None:
    agent, other = agent_with_password(site.w), agent_with_password(site.w)
    c = site.browser()
    for _ in range(5):
        resp = await c.post(LOGIN, json={"agent_id": agent, "password": "wrong password"})
        assert resp.status_code == 401
    locked = await c.post(LOGIN, json={"agent_id": agent, "password": PASSWORD})
    assert locked.status_code == 429
    assert 0 < int(locked.headers["retry-after"]) <= 300
    assert "set-cookie" not in locked.headers
    # Another agent from the same address still logs in (the address's limit is 20).
    assert (await site.login(other)).csrf


async def test_given_many_failures_from_one_address_then_that_address_is_refused(
    w: World, tmp_path: Path, db_url: str
) -> None:
    agent = agent_with_password(w)
    cfg = web_config(tmp_path, db_url, login_attempts_ip="3")
    site = Site(create_app(cfg, w.factory), w)
    try:
        c = site.browser("10.0.0.7")
        for i in range(3):
            resp = await c.post(LOGIN, json={"agent_id": f"5000{i}", "password": "guess 1234"})
            assert resp.status_code == 401
        assert (
            await c.post(LOGIN, json={"agent_id": agent, "password": PASSWORD})
        ).status_code == 429
        # From another address the agent logs in.
        ok = await site.browser("10.0.0.8").post(
            LOGIN, json={"agent_id": agent, "password": PASSWORD}
        )
        assert ok.status_code == 200
    finally:
        await site.close()


async def test_given_a_logout_then_the_session_is_gone(site: Site, r: redis.Redis) -> None:
    p = await site.login(agent_with_password(site.w))
    token = p.client.cookies["ob_session"]
    assert (await p.post("/api/logout", csrf="wrong")).status_code == 403
    assert (await p.post("/api/logout")).status_code == 200
    assert not r.exists(session_key(token))
    p.client.cookies.set("ob_session", token)  # a copied cookie is no good either
    assert (await p.get("/api/me")).status_code == 401


@pytest.mark.parametrize("api", [a for a in ROUTES if a.auth != "none"], ids=lambda a: a.path)
async def test_given_no_session_then_every_protected_route_answers_401(
    site: Site, api: object
) -> None:
    method, path = api.method, _path(api.path)  # type: ignore[attr-defined]
    resp = await site.browser().request(method, path, json={})
    assert resp.status_code == 401, (method, path, resp.text)
    assert resp.json() == {"error": "log in first"}


async def test_given_no_or_a_wrong_csrf_token_then_403_and_nothing_changed(site: Site) -> None:
    w = site.w
    p = await site.login(agent_with_password(w))
    got = await p.post(f"/api/campaigns/{w.campaign_id}/record")
    assert got.status_code == 200 and got.json()["status"] == "record"
    oid = got.json()["offer_id"]
    queue_before = [(e.contact_id, e.section) for e in w.queue.peek(10)]
    for csrf in ("", "wrong", p.csrf[:-1]):
        for path, body in (
            (f"/api/offers/{oid}/decline", {"choice": "dnc"}),
            (f"/api/offers/{oid}/dial", {}),
        ):
            resp = await p.post(path, body, csrf=csrf)
            assert resp.status_code == 403, (path, csrf)
            assert "X-CSRF-Token" in resp.json()["error"]
    no_header = await p.client.post(f"/api/offers/{oid}/decline", json={"choice": "dnc"})
    assert no_header.status_code == 403
    assert w.row(Offer, oid).state is OfferState.OPEN
    with w.factory() as s:
        assert s.query(CallAttempt).count() == 0
    assert [(e.contact_id, e.section) for e in w.queue.peek(10)] == queue_before
    # A GET needs no token.
    assert (await p.get("/api/interaction")).json()["interaction"]["kind"] == "offer"


async def test_given_an_agent_then_supervisor_routes_are_forbidden(site: Site) -> None:
    p = await site.login(agent_with_password(site.w))
    name = f"c{site.w.campaign_id}"
    assert (await p.post(f"/api/admin/campaigns/{name}/stop")).status_code == 403
    assert (await p.get(f"/api/admin/contacts/{site.w.contacts[0]}/why")).status_code == 403
