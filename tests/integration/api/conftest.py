"""Fixtures of the API tests: the real app (status_page.app.create_app) driven over
httpx's ASGI transport, on SQLite or PostgreSQL (`db_url`) with Redis db 9 (sessions,
log-in counters, the dial queue, live state, notifications), flushed after each test.
No bridge runs here: bridge commands time out (1 s), which some tests rely on."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette

from outbound.config import Config, load_config
from outbound.model import Agent, AgentRole, DialMode, transaction
from outbound.security import hash_secret
from status_page.app import create_app
from tests.helpers.redis_url import redis_url
from tests.helpers.world import World, make_world

REDIS_URL = redis_url(9)
PASSWORD = "correct horse 1"


@dataclass
class Person:
    """A logged-in browser: its cookie jar and the CSRF token its log-in answered."""

    agent_id: str
    client: httpx.AsyncClient
    csrf: str

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, **kw)

    async def post(
        self, path: str, body: Any = None, csrf: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf if csrf is None else csrf}
        if body is None:
            return await self.client.post(path, headers=headers, **kw)
        return await self.client.post(path, json=body, headers=headers, **kw)

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(path, headers={"X-CSRF-Token": self.csrf})


def web_config(tmp_path: Path, db_url: str, **web: str) -> Config:
    return load_config(
        env={},
        cwd=tmp_path,
        overrides={
            "database.url": db_url,
            "redis.url": REDIS_URL,
            "dialer.server": f"api-{uuid.uuid4().hex[:8]}",  # no bridge reads it
            "web.command_timeout": "1",
            "web.sse_max": "1",
            "web.sse_heartbeat": "0.3",
            **{f"web.{k}": v for k, v in web.items()},
        },
    )


class Site:
    """The app under test and a way to open browsers on it."""

    def __init__(self, app: Starlette, w: World) -> None:
        self.app, self.w = app, w
        self._clients: list[httpx.AsyncClient] = []

    def browser(self, ip: str = "127.0.0.1") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 40000))
        c = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self._clients.append(c)
        return c

    async def login(self, agent_id: str, password: str = PASSWORD) -> Person:
        c = self.browser()
        resp = await c.post("/api/login", json={"agent_id": agent_id, "password": password})
        assert resp.status_code == 200, resp.text
        return Person(agent_id, c, resp.json()["csrf_token"])

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()
        await self.app.state.ctx.aredis.aclose()


def agent_with_password(w: World, role: AgentRole = AgentRole.AGENT, member: bool = True) -> str:
    """A campaign member (logged in on the phone, Ready) with the web password PASSWORD."""
    agent_id = w.agent(member=member)
    with transaction(w.factory) as s:
        a = s.get(Agent, agent_id)
        assert a is not None
        a.password_hash, a.role = hash_secret(PASSWORD), role
    return agent_id


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def w(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    """A running preview campaign with two records in queue order (Anna, then Bert)."""
    number = f"+4930{random.randrange(10**6, 10**7)}1"
    for wd in make_world(World, factory, r, number, "Anna", mode=DialMode.PREVIEW):
        wd.contact(f"+4930{random.randrange(10**6, 10**7)}2", "Bert")
        wd.fill()
        yield wd


@pytest.fixture
async def site(w: World, tmp_path: Path, db_url: str) -> AsyncIterator[Site]:
    s = Site(create_app(web_config(tmp_path, db_url), w.factory), w)
    yield s
    await s.close()
