"""What the status page says while a fault lasts: the real app (status_page.app, in this
process over ASGI, as tests/integration/api does) on the live campaign's database and
Redis, its /healthz asked every few tenths of a second in a task, every answer kept. A
test then asks whether it answered 503 naming the failing component while the fault
lasted, and 200 again after recovery."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis as redis_lib

from outbound.config import load_config
from status_page.app import create_app
from tests.faults.live import LiveCampaign
from tests.helpers.until import async_until


@dataclass
class Answer:
    at: float  # time.monotonic()
    status: int
    body: dict[str, Any]

    def names(self, component: str) -> bool:
        """A 503 whose `problems` name `component` (e.g. "redis", "ami <server>")."""
        return self.status == 503 and any(
            str(p).startswith(component) for p in self.body.get("problems", [])
        )


@dataclass
class HealthWatch:
    client: httpx.AsyncClient
    interval: float = 0.3
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            try:
                r = await self.client.get("/healthz", timeout=10)
                self.answers.append(Answer(time.monotonic(), r.status_code, r.json()))
            except Exception as exc:  # kept: a page that cannot answer at all is a finding
                self.errors.append(repr(exc))
            await asyncio.sleep(self.interval)

    def since(self, t: float) -> list[Answer]:
        return [a for a in self.answers if a.at >= t]

    def named(self, component: str, since: float = 0.0) -> bool:
        return any(a.names(component) for a in self.since(since))

    def healthy_now(self) -> bool:
        """The latest answer is 200 with every component ok."""
        return bool(self.answers) and self.answers[-1].status == 200

    def last(self) -> str:
        return repr(self.answers[-1]) if self.answers else f"no answer ({self.errors[-1:]})"

    async def wait_named(self, component: str, since: float, timeout: float) -> None:
        """Until an answer since `since` was a 503 naming `component`."""
        try:
            await async_until(lambda: self.named(component, since), timeout, 0.1)
        except AssertionError:
            raise AssertionError(
                f"/healthz never named {component!r} within {timeout:g}s: {self.last()}"
            ) from None

    async def wait_healthy(self, timeout: float) -> None:
        """Until the latest answer is a 200."""
        try:
            await async_until(self.healthy_now, timeout, 0.1)
        except AssertionError:
            raise AssertionError(f"/healthz not 200 within {timeout:g}s: {self.last()}") from None


@contextlib.asynccontextmanager
async def watch_health(lv: LiveCampaign, interval: float = 0.3) -> AsyncIterator[HealthWatch]:
    """The status page on the campaign's database and Redis, /healthz polled meanwhile."""
    cfg = load_config(
        env={},
        cwd=lv.workdir,
        overrides={
            "database.url": lv.database_url,
            "redis.url": lv.redis_url,
            "dialer.server": lv.server,
        },
    )
    r = redis_lib.Redis.from_url(lv.redis_url)
    app = create_app(cfg, lv.factory, r)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        w = HealthWatch(client, interval)
        task = asyncio.ensure_future(w.run())
        try:
            yield w
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await app.state.ctx.aredis.aclose()
            r.close()
