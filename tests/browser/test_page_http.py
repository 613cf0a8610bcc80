"""The agent page over HTTP, without a browser: the log-in form without a session, the
page with one, the security headers on both, values escaped by the templates, the
static files, and two checks of the page's script: it never inserts markup (no
innerHTML & co.), and every element it looks up by id exists in the page."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette

from outbound.config import load_config
from outbound.model import Agent, transaction
from outbound.security import hash_secret
from status_page.app import create_app
from status_page.pages import CSP, STATIC, TEMPLATES
from tests.helpers.db import add_agent, migrated_factory

PASSWORD = "page password 1"
NAME = '<i>Ann</i> & "Bo" <script>alert(1)</script>'


@pytest.fixture
async def app(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Starlette, str]]:
    factory = migrated_factory(tmp_path / "page.db")
    agent = add_agent(factory, "4711")
    with transaction(factory) as s:
        a = s.get(Agent, agent)
        assert a is not None
        a.password_hash, a.name = hash_secret(PASSWORD), NAME
    cfg = load_config(
        env={},
        cwd=tmp_path,
        overrides={
            "database.url": f"sqlite:///{tmp_path / 'page.db'}",
            "redis.url": redis_url,
            "dialer.server": "page-test",
        },
    )
    r = redis.Redis.from_url(redis_url)
    application = create_app(cfg, factory, r)
    yield application, agent
    await application.state.ctx.aredis.aclose()
    r.close()


def _client(application: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


def _secure(resp: httpx.Response) -> None:
    assert resp.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["content-type"].startswith("text/html")


async def test_given_no_session_then_the_login_form_with_the_security_headers(
    app: tuple[Starlette, str],
) -> None:
    async with _client(app[0]) as c:
        resp = await c.get("/")
        assert resp.status_code == 200
        _secure(resp)
        assert 'id="login-form"' in resp.text and "csrf-token" not in resp.text
        # A cookie of no session (expired, forged) gets the form too.
        c.cookies.set("ob_session", "x" * 43)
        again = await c.get("/")
        assert 'id="login-form"' in again.text and "Agent desktop" in again.text


async def test_given_a_session_then_the_page_with_its_csrf_token_and_the_name_escaped(
    app: tuple[Starlette, str],
) -> None:
    application, agent = app
    async with _client(application) as c:
        login = await c.post("/api/login", json={"agent_id": agent, "password": PASSWORD})
        assert login.status_code == 200, login.text
        resp = await c.get("/")
        _secure(resp)
        page = resp.text
        assert f'<meta name="csrf-token" content="{login.json()["csrf_token"]}">' in page
        assert "&lt;i&gt;Ann&lt;/i&gt; &amp; &#34;Bo&#34; &lt;script&gt;alert(1)" in page
        assert "<i>Ann</i>" not in page and "<script>alert" not in page
        assert 'id="login-form"' not in page
        # Logged out: the form again.
        out = await c.post("/api/logout", headers={"X-CSRF-Token": login.json()["csrf_token"]})
        assert out.status_code == 200
        assert 'id="login-form"' in (await c.get("/")).text


async def test_the_static_files_are_served_and_nothing_outside_them(
    app: tuple[Starlette, str],
) -> None:
    async with _client(app[0]) as c:
        for name in ("agent.js", "api.js", "interaction.js", "callback.js", "login.js"):
            resp = await c.get(f"/static/{name}")
            assert resp.status_code == 200 and "javascript" in resp.headers["content-type"]
        css = await c.get("/static/agent.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        for bad in ("/static/../pages.py", "/static/%2e%2e/pages.py", "/static/nope.js"):
            assert (await c.get(bad)).status_code == 404, bad
        # The API is still there, and unknown routes still answer JSON.
        assert (await c.get("/openapi.json")).status_code == 200
        assert (await c.get("/nope")).json() == {"error": "no such route"}


def test_the_page_script_never_inserts_markup() -> None:
    """Values reach the page only as text: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write, eval or string timers anywhere in the page's scripts."""
    banned = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
        r"setTimeout\(\s*['\"`]|setInterval\(\s*['\"`]"
    )
    scripts = sorted(STATIC.glob("*.js"))
    assert len(scripts) >= 5
    for js in scripts:
        found = banned.findall(js.read_text())
        assert not found, f"{js.name}: {found}"
    for html in TEMPLATES.glob("*.html"):
        text = html.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text
        assert re.search(r"<script(?![^>]*\bsrc=)", text) is None, f"inline script in {html}"
        assert re.search(r"<[^>]+\son[a-z]+=", text) is None, f"inline handler in {html}"
        assert 'style="' not in text, f"inline style in {html} (CSP style-src 'self')"


def test_every_element_the_script_looks_up_is_in_the_page() -> None:
    ids = set(
        re.findall(r'\bid="([^"]+)"', "".join(p.read_text() for p in TEMPLATES.glob("*.html")))
    )
    used: set[str] = set()
    for js in STATIC.glob("*.js"):
        text = js.read_text()
        used |= set(re.findall(r"\b(?:byId|show|setText|getElementById)\('([^']+)'\)", text))
        used |= set(re.findall(r"\b(?:show|setText)\('([^']+)',", text))
        used |= set(re.findall(r"const AREA = '([^']+)'", text))
    assert used, "no lookups found: the pattern is wrong"
    assert used - ids == set()
