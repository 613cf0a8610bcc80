"""An agent driving the JSON API (status_page) from a test: web log-in plus desk-phone
session, and Ready / Not ready; asserts each step answered 200."""

from __future__ import annotations

import httpx


async def phone_login(c: httpx.AsyncClient, agent: str, password: str) -> dict[str, str]:
    """Web log-in, then the desk phone into the agent's conference; the CSRF header."""
    got = await c.post("/api/login", json={"agent_id": agent, "password": password})
    assert got.status_code == 200, got.text
    h = {"X-CSRF-Token": got.json()["csrf_token"]}
    started = await c.post("/api/agent/session", headers=h)
    assert started.status_code == 200, started.text
    return h


async def set_ready(
    c: httpx.AsyncClient, h: dict[str, str], ready: bool, channel: str = "voice"
) -> None:
    got = await c.post("/api/agent/ready", json={"channel": channel, "ready": ready}, headers=h)
    assert got.status_code == 200, got.text
