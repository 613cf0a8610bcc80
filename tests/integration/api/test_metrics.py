"""/metrics and /healthz of the real app served by uvicorn on a loopback port, on SQLite
and PostgreSQL, with a redis-server of the test's own (stopped half-way, to see /healthz
name it). The exposition text is parsed strictly (the format 0.0.4 rules a scraper
relies on) and every value checked against the rows written; the access setting
([web] metrics on / off / token) on the ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aredis
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ami_bridge.service import HEARTBEATS_KEY, Bridge
from outbound import live, names
from outbound.config import load_config
from outbound.dial_queue import DialQueue
from outbound.model import (
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Campaign,
    DialMode,
    transaction,
)
from status_page import metrics
from status_page.app import create_app
from tests.helpers.callbacks import free_port, private_redis
from tests.helpers.db import add_agent, add_contact
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until, until

from .conftest import web_config

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """The samples of a Prometheus text exposition (0.0.4), refusing what a scraper would:
    a sample of an undeclared family, a family declared twice, a malformed line or label,
    the same series twice."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    out: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types and kind in ("counter", "gauge"), line
            types[name] = kind
            continue
        m = SAMPLE.fullmatch(line)
        assert m, f"malformed sample line {line!r}"
        name, inner, value = m.groups()
        assert name in types, f"{name} has no TYPE"
        labels: list[tuple[str, str]] = []
        rest = inner or ""
        while rest:
            lm = LABEL.match(rest)
            assert lm, f"malformed labels in {line!r}"
            raw = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), lm.group(2))
            labels.append((lm.group(1), raw))
            rest = rest[lm.end() :]
        key = (name, frozenset(labels))
        assert key not in out, f"series twice: {line!r}"
        out[key] = float(value)
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@contextmanager
def served(app: Any) -> Iterator[str]:
    """The app on a free loopback port (uvicorn in a thread); its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        until(lambda: server.started, timeout=10, message="uvicorn started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _today() -> datetime:
    """Earlier today (UTC), after waiting out the last half minute before midnight so the
    rows and the scrape share a day."""
    until(lambda: datetime.now(UTC).time() < dtime(23, 59, 30), timeout=40, interval=0.5)
    now = datetime.now(UTC)
    return now - (now - datetime(now.year, now.month, now.day, tzinfo=UTC)) / 2


def _floor(factory: sessionmaker[Session], r: redis.Redis) -> dict[str, Any]:
    """A predictive campaign with dials of several results today and an older abandon, a
    dial queue with three due records, a leased one and one for later, agents in three
    states, two pending callbacks (one overdue)."""
    today = _today()
    now = datetime.now(UTC)
    name = 'Spring "sale"\\2026'  # label escaping on the way
    contact = add_contact(factory, "+4930100000", campaign=name, mode=DialMode.PREDICTIVE,
                          abandon_target=0.03)  # fmt: skip
    with factory() as s:
        cid = s.scalars(select(Campaign.id).where(Campaign.name == name)).one()
    results = [CallResult.ANSWERED] * 3 + [CallResult.ABANDONED] + [CallResult.BUSY] * 2
    results += [CallResult.NO_ANSWER]
    with transaction(factory) as s:
        for n, result in enumerate(results, 1):
            live_answer = result in (CallResult.ANSWERED, CallResult.ABANDONED)
            s.add(CallAttempt(
                campaign_id=cid, contact_id=contact, attempt_no=n, e164="+4930100000",
                state=AttemptState.ENDED, result=result, created_at=today,
                originated_at=today, answered_at=today if live_answer else None,
                connected_at=today if result is CallResult.ANSWERED else None,
                ended_at=today + timedelta(seconds=20)))  # fmt: skip
        old = now - timedelta(days=5)  # another abandon in the 30 days, not today
        s.add(CallAttempt(
            campaign_id=cid, contact_id=contact, attempt_no=99, e164="+4930100000",
            state=AttemptState.ENDED, result=CallResult.ABANDONED, created_at=old,
            originated_at=old, answered_at=old, ended_at=old))  # fmt: skip
        for due in (timedelta(minutes=-5), timedelta(hours=2)):
            s.add(Callback(campaign_id=cid, contact_id=contact, due_at=now + due,
                           personal=False, state=CallbackState.PENDING))  # fmt: skip
    q = DialQueue(r, cid)
    q.push_many([(9001, 0, now - timedelta(minutes=1)), (9002, 0, now), (9003, 1, now)], now)
    q.push(9004, 0, now + timedelta(hours=2), now)
    q.push(9005, 0, now, now)
    assert q.lease("test", 60, now) is not None
    agents = {"ready": "7001", "not_ready": "7002", "logged_out": "7003"}
    for state, agent in agents.items():
        add_agent(factory, agent)
        if state != "logged_out":
            r.hset(live.agent_key(agent), mapping=live.agent_fields("up", ready=state == "ready"))
    return {"campaign": name}


def _beat(r: redis.Redis, server: str, age_s: float, healthy: bool = True) -> None:
    """A heartbeat as the bridge writes it (ami_bridge.service.Bridge._health_loop)."""
    rec = {"server": server, "healthy": healthy, "last_error": "" if healthy else "refused",
           "connects": 1, "ts": time.time() - age_s, "pong_age": 0.4}  # fmt: skip
    r.hset(HEARTBEATS_KEY, server, json.dumps(rec))


def test_given_a_floor_when_scraped_over_http_then_metrics_match_and_healthz_names_problems(
    factory: sessionmaker[Session], tmp_path: Path, db_url: str
) -> None:
    assert metrics.HEARTBEATS_KEY == HEARTBEATS_KEY  # the two sides of one Redis key
    with private_redis() as url:
        r = redis.Redis.from_url(url)
        floor = _floor(factory, r)
        camp = floor["campaign"]
        cfg = web_config(tmp_path, db_url)
        with served(create_app(cfg, factory, r)) as base:
            health = httpx.get(f"{base}/healthz", timeout=10)
            assert (health.status_code, health.json()) == (
                200, {"ok": True, "database": "ok", "redis": "ok"})  # fmt: skip
            _beat(r, "pbx1", age_s=0.5)
            r.set(names.KEY_CALLBACKS_RECONCILED, repr(time.time() - 2))
            health = httpx.get(f"{base}/healthz", timeout=10)
            assert health.status_code == 200, health.text
            assert health.json()["ami"] == {"pbx1": "ok"}
            assert health.json()["scheduler"] == "ok"

            resp = httpx.get(f"{base}/metrics", timeout=10)
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
            m = parse(resp.text)
            calls = {k[1]: v for k, v in m.items() if k[0] == "outbound_calls_total"}
            assert calls == {
                frozenset({("campaign", camp), ("result", res)}): n
                for res, n in (("answered", 3), ("abandoned", 1), ("busy", 2), ("no_answer", 1))
            }
            assert value(m, "outbound_abandon_rate", campaign=camp, window="today") == 0.25
            assert value(m, "outbound_abandon_rate", campaign=camp, window="30d") == 2 / 5
            assert value(m, "outbound_abandon_target", campaign=camp) == 0.03
            assert value(m, "outbound_dial_queue_depth", campaign=camp) == 3  # 9002, 9003, 9005
            assert value(m, "outbound_dial_queue_leased", campaign=camp) == 1
            assert value(m, "outbound_dial_queue_later", campaign=camp) == 1
            for state, n in (("ready", 1), ("not_ready", 1), ("logged_out", 1),
                             ("logging_in", 0)):  # fmt: skip
                assert value(m, "outbound_agents", state=state) == n, state
            assert value(m, "outbound_callbacks_pending", campaign=camp) == 2
            assert value(m, "outbound_callbacks_overdue", campaign=camp) == 1
            assert value(m, "outbound_ami_up", server="pbx1") == 1
            assert value(m, "outbound_ami_pong_age_seconds", server="pbx1") == 0.4
            assert 0 <= (value(m, "outbound_ami_heartbeat_age_seconds", server="pbx1") or -1) < 5
            assert 0 < (value(m, "outbound_scheduler_last_sweep_age_seconds") or 0) < 60
            assert (value(m, "outbound_scrape_duration_seconds") or -1) >= 0

            # A bridge whose heartbeat stopped 30 s ago, one that cannot reach its AMI.
            _beat(r, "pbx1", age_s=30)
            _beat(r, "pbx2", age_s=0.5, healthy=False)
            health = httpx.get(f"{base}/healthz", timeout=10)
            assert health.status_code == 503
            body = health.json()
            assert body["ok"] is False and body["redis"] == "ok"
            assert body["ami"]["pbx1"].startswith("degraded: no heartbeat for 3")
            assert [p.split(":")[0] for p in body["problems"]] == ["ami pbx1", "ami pbx2"]
            assert "refused" in body["problems"][1]
            m = parse(httpx.get(f"{base}/metrics", timeout=10).text)
            assert value(m, "outbound_ami_up", server="pbx1") == 0
            assert value(m, "outbound_ami_up", server="pbx2") == 0
            r.hdel(HEARTBEATS_KEY, "pbx1", "pbx2")
            r.close()
            # Leaving the block stops this redis-server.
    with served(create_app(cfg, factory, redis.Redis.from_url(url, socket_timeout=2))) as base:
        health = httpx.get(f"{base}/healthz", timeout=15)
        assert health.status_code == 503
        assert health.json()["database"] == "ok"
        assert [p.split(":")[0] for p in health.json()["problems"]] == ["redis"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_given_the_metrics_setting_then_off_hides_and_a_token_guards_the_route(
    factory: sessionmaker[Session], tmp_path: Path, db_url: str
) -> None:
    token = "s3cret-metrics-token-1"
    for setting, headers, status in (
        ("off", {}, 404),
        (token, {}, 401),
        (token, {"Authorization": "Bearer wrong-token-of-some-length"}, 401),
        (token, {"Authorization": f"Bearer {token}"}, 200),
        ("on", {}, 200),
    ):
        app = create_app(web_config(tmp_path, db_url, metrics=setting), factory,
                         redis.Redis.from_url(redis_url(15)))  # fmt: skip
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            resp = await c.get("/metrics", headers=headers)
        await app.state.ctx.aredis.aclose()
        assert resp.status_code == status, (setting, headers, resp.text)
        if status == 200:
            assert "# TYPE outbound_calls_total counter" in resp.text


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_given_a_bridge_that_cannot_reach_asterisk_then_healthz_names_its_ami(
    factory: sessionmaker[Session], tmp_path: Path, db_url: str
) -> None:
    """A real Bridge pointed at a port nobody listens on: its heartbeat (written before AMI
    is up) says so, /healthz answers 503 naming that bridge's AMI and /metrics says 0."""
    with private_redis() as url:
        cfg = load_config(env={}, cwd=tmp_path, overrides={
            "database.url": db_url, "redis.url": url, "ami.port": str(free_port()),
            "dialer.server": "pbx-down", "dialer.engine": "off"})  # fmt: skip
        r = redis.Redis.from_url(url)
        bridge = Bridge(cfg, factory, aredis.Redis.from_url(url))
        task = asyncio.ensure_future(bridge.run(ready_timeout=30))
        app = create_app(cfg, factory, r)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await async_until(lambda: r.hget(HEARTBEATS_KEY, "pbx-down"), timeout=10)
                health = await c.get("/healthz")
                assert health.status_code == 503
                assert health.json()["ami"]["pbx-down"].startswith("degraded: AMI not connected")
                assert [p.split(":")[0] for p in health.json()["problems"]] == ["ami pbx-down"]
                m = parse((await c.get("/metrics")).text)
                assert value(m, "outbound_ami_up", server="pbx-down") == 0
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await bridge.originator.stop()
            await bridge.ami.close()
            await app.state.ctx.aredis.aclose()
            r.close()
