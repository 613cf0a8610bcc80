"""The supervisor dashboard on the real app, database (SQLite and PostgreSQL) and Redis
(db 5, this file's own): every number computed from crafted rows (abandon rate today and
over 30 days against the target, answer rate, durations, queue depth, callbacks due in the
next hour but not later), who may see it (agent 403, no session 401 / log-in redirect),
and that its query count does not grow with the floor (no N+1)."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import live
from outbound.config import load_config
from outbound.dial_queue import DialQueue
from outbound.model import (
    Agent,
    AgentRole,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Campaign,
    CampaignState,
    DialMode,
    transaction,
)
from outbound.model.tables import Offer
from outbound.security import hash_secret
from status_page import dashboard
from status_page.app import create_app
from tests.helpers.db import add_agent, add_contact
from tests.helpers.redis_url import redis_url
from tests.helpers.until import until
from tests.helpers.world import World

from .conftest import PASSWORD, Site

REDIS_URL = redis_url(5)


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.flushdb()
    client.close()


def _not_near_midnight() -> datetime:
    """Now, 10 minutes after UTC midnight at least (the rows of the last minutes are
    today's) and a minute before the next (today must not change mid-test)."""

    def ok() -> datetime | None:
        now = datetime.now(UTC)
        start = dashboard.day_start(now)
        fits = start + timedelta(minutes=10) < now < start + timedelta(days=1, minutes=-1)
        return now if fits else None

    return until(ok, timeout=90, interval=1, message="a UTC time a minute away from midnight")


@dataclass
class Floor:
    """Crafted rows of two campaigns: A (predictive, target 3 %) and B (progressive,
    target 5 %), plus a created and an unloaded one."""

    factory: sessionmaker[Session]
    r: redis.Redis
    now: datetime
    ids: dict[str, int] = field(default_factory=dict)
    agents: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, str] = field(default_factory=dict)
    _n: int = 0

    def campaign(self, key: str, mode: DialMode, target: float, **kw: Any) -> int:
        name = f"{key}-{uuid.uuid4().hex[:6]}"
        contact = add_contact(self.factory, "+4930100000", campaign=name, mode=mode,
                              abandon_target=target, **kw)  # fmt: skip
        with self.factory() as s:
            self.ids[key] = s.scalars(select(Campaign.id).where(Campaign.name == name)).one()
        self.ids[f"{key}_contact"] = contact
        return self.ids[key]

    def contact(self, key: str, number: str) -> int:
        camp = self.row(Campaign, self.ids[key])
        return add_contact(self.factory, number, campaign=camp.name)

    def agent(self, key: str, state: dict[str, str] | None) -> str:
        agent_id = str(random.randrange(10**9, 10**10))
        add_agent(self.factory, agent_id)
        if state is not None:
            self.r.hset(live.agent_key(agent_id), mapping=state)
        self.agents[key] = agent_id
        return agent_id

    def attempt(self, key: str, contact: int | None = None, **kw: Any) -> str:
        """An attempt of campaign `key` (on its first contact unless `contact` is given)."""
        self._n += 1
        a = CallAttempt(
            campaign_id=self.ids[key],
            contact_id=contact or self.ids[f"{key}_contact"],
            attempt_no=self._n,
            e164=kw.pop("e164", "+4930100000"),
            **kw,
        )
        with transaction(self.factory) as s:
            s.add(a)
            s.flush()
            return a.id

    def ended(self, key: str, at: datetime, result: CallResult, n: int = 1) -> None:
        """`n` finished dials answered (or not) at `at`."""
        is_live = result in (CallResult.ANSWERED, CallResult.ABANDONED)
        for _ in range(n):
            self.attempt(
                key,
                state=AttemptState.ENDED,
                result=result,
                created_at=at - timedelta(seconds=30),
                originated_at=at - timedelta(seconds=29),
                answered_at=at if is_live else None,
                connected_at=at if result is CallResult.ANSWERED else None,
                ended_at=at + timedelta(seconds=20),
                disposition="ok" if result is CallResult.ANSWERED else None,
            )

    def callback(self, key: str, due: timedelta, state: CallbackState, agent: str | None) -> int:
        cb = Callback(
            campaign_id=self.ids[key],
            contact_id=self.ids[f"{key}_contact"],
            due_at=self.now + due,
            personal=agent is not None,
            agent_id=agent,
            state=state,
        )
        with transaction(self.factory) as s:
            s.add(cb)
            s.flush()
            return cb.id

    def row(self, cls: Any, key: Any) -> Any:
        with self.factory() as s:
            return s.get(cls, key)


def build(factory: sessionmaker[Session], r: redis.Redis) -> Floor:
    now = _not_near_midnight()
    f = Floor(factory, r, now)
    start = dashboard.day_start(now)
    today = start + (now - start) / 2  # earlier today, whatever the time
    a = f.campaign("A", DialMode.PREDICTIVE, 0.03)
    b = f.campaign("B", DialMode.PROGRESSIVE, 0.05)
    f.campaign("C", DialMode.PREVIEW, 0.03, state=CampaignState.CREATED)
    f.campaign("U", DialMode.PREVIEW, 0.03, state=CampaignState.UNLOADED)

    # A today: 3 connected + 1 abandoned live answers, 2 unanswered, 1 cancelled (no dial).
    f.ended("A", today, CallResult.ANSWERED, 3)
    f.ended("A", today, CallResult.ABANDONED)
    f.ended("A", today, CallResult.NO_ANSWER, 2)
    f.ended("A", today, CallResult.CANCELLED)
    f.ended("A", now - timedelta(days=10), CallResult.ANSWERED, 16)
    f.ended("A", now - timedelta(days=40), CallResult.ABANDONED, 5)  # out of the 30 days
    # B: within its 5 %: one abandon in 50 live answers ten days ago (+ the wrap-up call).
    f.ended("B", now - timedelta(days=10), CallResult.ANSWERED, 49)
    f.ended("B", now - timedelta(days=10), CallResult.ABANDONED)

    up = {"session": "up", "reason": "test", "ts": f"{now.timestamp() - 120:.3f}"}
    talking = f.agent("talking", {**up, "ready_voice": "1", "ready_preview": "0"})
    wrapping = f.agent("wrapping", {**up, "ready_voice": "1", "ready_preview": "1"})
    offered = f.agent("offered", {**up, "ready_voice": "0", "ready_preview": "1"})
    f.agent("idle", {**up, "ready_voice": "0", "ready_preview": "0"})
    f.agent("out", None)

    # Calls in progress: A connected to `talking`; B ringing with no agent yet.
    f.attempts["talk"] = f.attempt(
        "A", f.contact("A", "+4930111222333"), e164="+4930111222333", agent_id=talking,
        state=AttemptState.CONNECTED, created_at=now - timedelta(seconds=100),
        originated_at=now - timedelta(seconds=95), answered_at=now - timedelta(seconds=70),
        connected_at=now - timedelta(seconds=60),
    )  # fmt: skip
    f.attempts["ring"] = f.attempt(
        "B", f.contact("B", "+4930999888777"), e164="+4930999888777",
        state=AttemptState.RINGING, created_at=now - timedelta(seconds=12),
        originated_at=now - timedelta(seconds=10),
    )  # fmt: skip
    f.attempts["wrap"] = f.attempt(
        "B", state=AttemptState.ENDED, result=CallResult.ANSWERED, agent_id=wrapping,
        created_at=now - timedelta(seconds=300), originated_at=now - timedelta(seconds=299),
        answered_at=now - timedelta(seconds=280), connected_at=now - timedelta(seconds=280),
        ended_at=now - timedelta(seconds=30),
    )  # fmt: skip
    with transaction(factory) as s:
        s.add(Offer(campaign_id=b, contact_id=f.contact("B", "+4930555444333"), agent_id=offered,
                    created_at=now - timedelta(seconds=45)))  # fmt: skip

    qa, qb = DialQueue(r, a), DialQueue(r, b)
    qa.push_many([(9001, 0, now - timedelta(minutes=1)), (9002, 0, now), (9003, 1, now)], now)
    qa.push(9004, 0, now + timedelta(hours=2), now)  # later
    qb.push_top(9005)

    f.ids["cb_personal"] = f.callback("A", timedelta(minutes=30), CallbackState.PENDING, talking)
    f.ids["cb_queued"] = f.callback("A", -timedelta(minutes=5), CallbackState.QUEUED, None)
    f.ids["cb_overdue"] = f.callback("A", -timedelta(minutes=2), CallbackState.PENDING, None)
    f.ids["cb_b"] = f.callback("B", timedelta(minutes=59), CallbackState.PENDING, None)
    f.callback("A", timedelta(minutes=61), CallbackState.PENDING, None)  # not in the hour
    f.callback("A", timedelta(hours=3), CallbackState.PENDING, talking)
    f.callback("A", timedelta(minutes=10), CallbackState.DONE, None)  # already dialed
    f.callback("B", timedelta(minutes=10), CallbackState.CANCELLED, None)
    return f


def supervisor(factory: sessionmaker[Session], role: AgentRole = AgentRole.SUPERVISOR) -> str:
    agent_id = str(random.randrange(10**9, 10**10))
    add_agent(factory, agent_id)
    with transaction(factory) as s:
        a = s.get(Agent, agent_id)
        assert a is not None
        a.password_hash, a.role = hash_secret(PASSWORD), role
    return agent_id


@pytest.fixture
async def site(
    factory: sessionmaker[Session], r: redis.Redis, tmp_path: Path, db_url: str
) -> AsyncIterator[Site]:
    cfg = load_config(env={}, cwd=tmp_path, overrides={
        "database.url": db_url, "redis.url": REDIS_URL, "dialer.server": "dash-test"})  # fmt: skip
    s = Site(create_app(cfg, factory, r), World(factory, r, 0, DialQueue(r, 0)))
    yield s
    await s.close()


def _by(rows: list[dict[str, Any]], key: str = "id") -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


async def test_given_a_floor_then_the_dashboard_counts_it_right(
    site: Site, factory: sessionmaker[Session], r: redis.Redis
) -> None:
    f = build(factory, r)
    boss = await site.login(supervisor(factory))
    resp = await boss.get("/api/admin/dashboard")
    assert resp.status_code == 200, resp.text
    d = resp.json()
    server_now = datetime.fromisoformat(d["now"])
    assert f.now <= server_now < f.now + timedelta(minutes=5)

    camps = _by(d["campaigns"])
    assert f.ids["U"] not in camps and f.ids["C"] in camps
    a, b, c = camps[f.ids["A"]], camps[f.ids["B"]], camps[f.ids["C"]]
    assert (a["state"], a["mode"], b["mode"]) == ("running", "predictive", "progressive")
    # Answer rate today: 4 live answers (3 connected, 1 abandoned) of 6 dials.
    assert (a["dials_today"], a["live_answers_today"]) == (6, 4)
    assert a["answer_rate_today"] == pytest.approx(4 / 6, abs=1e-4)
    # B's one dial today is the call in wrap-up (answered, connected); none in C.
    assert (b["dials_today"], b["live_answers_today"], b["answer_rate_today"]) == (1, 1, 1.0)
    assert (c["dials_today"], c["answer_rate_today"]) == (0, None)
    # A: live answers today are the 4 ended ones and the call in progress: 1 abandon of 5
    # = 20 %; 30 days 1 of 21; both over 3 %; the 5 abandons of 40 days ago are out.
    ab = a["abandon"]
    assert (ab["abandoned_today"], ab["answered_today"]) == (1, 5)
    assert (ab["abandoned_30d"], ab["answered_30d"]) == (1, 21)
    assert ab["rate_today"] == pytest.approx(0.2)
    assert ab["rate_30d"] == pytest.approx(1 / 21, abs=1e-4)
    assert ab["target"] == pytest.approx(0.03)
    assert (ab["within_target_today"], ab["within_target_30d"], ab["within_target"]) == (
        False, False, False)  # fmt: skip
    # B: 1 of 51 over 30 days, under its 5 %; 0 of 1 today. C: no answer is no rate.
    bb = b["abandon"]
    assert (bb["abandoned_30d"], bb["answered_30d"], bb["abandoned_today"]) == (1, 51, 0)
    assert bb["rate_30d"] == pytest.approx(1 / 51, abs=1e-4) and bb["rate_today"] == 0.0
    assert bb["within_target"] is True and bb["target"] == pytest.approx(0.05)
    assert c["abandon"]["rate_today"] is None and c["abandon"]["within_target"] is True
    # Queue depth: 3 due + 1 later in A, 1 on top in B; a created campaign has no queue.
    assert a["queue"] == {"waiting": 3, "top": 0, "queued": 3, "later": 1, "leased": 0}
    assert b["queue"]["waiting"] == 1 and b["queue"]["top"] == 1
    assert c["queue"] is None
    assert (a["calls"], b["calls"], d["calls_total"]) == (1, 1, 2)

    calls = _by(d["calls"], "attempt_id")
    talk, ring = calls[f.attempts["talk"]], calls[f.attempts["ring"]]
    assert f.attempts["wrap"] not in calls
    assert talk["number"] == "+•••••••••2333" and ring["number"] == "+•••••••••8777"
    assert "111222" not in resp.text and "999888" not in resp.text
    assert (talk["state"], talk["agent_id"], talk["campaign_id"]) == (
        "connected", f.agents["talking"], f.ids["A"])  # fmt: skip
    late = (server_now - f.now).total_seconds() + 1
    assert 95 <= talk["duration_s"] <= 95 + late and 60 <= talk["talk_s"] <= 60 + late
    assert 10 <= ring["duration_s"] <= 10 + late and ring["talk_s"] is None
    assert ring["agent_id"] is None and ring["state"] == "ringing"

    agents = _by(d["agents"])
    assert set(agents) == set(f.agents.values())  # the supervisor is not on the floor
    see = {k: agents[v] for k, v in f.agents.items()}
    assert [(see[k]["status"], see[k]["activity"]) for k in see] == [
        ("Ready", "in_call"), ("Ready", "wrap_up"), ("Not ready", "offer"),
        ("Not ready", "idle"), ("Logged out", "idle")]  # fmt: skip
    assert see["talking"]["attempt_id"] == f.attempts["talk"]
    assert 60 <= see["talking"]["activity_s"] <= 60 + late
    assert 30 <= see["wrapping"]["activity_s"] <= 30 + late
    assert 45 <= see["offered"]["activity_s"] <= 45 + late
    assert 120 <= see["idle"]["since_s"] <= 120 + late and see["out"]["since"] is None
    assert see["offered"]["ready_preview"] is True and see["offered"]["ready_voice"] is False

    cbs = d["callbacks"]
    assert cbs["total"] == 4 and cbs["per_campaign"] == {str(f.ids["A"]): 3, str(f.ids["B"]): 1}
    assert [x["id"] for x in cbs["due"]] == [
        f.ids[k] for k in ("cb_queued", "cb_overdue", "cb_personal", "cb_b")]  # fmt: skip
    first, _, personal, _ = cbs["due"]
    assert (first["state"], first["overdue"], first["personal"]) == ("queued", True, False)
    assert personal["agent_id"] == f.agents["talking"] and personal["overdue"] is False
    assert a["callbacks_next_hour"] == 3 and b["callbacks_next_hour"] == 1


async def test_given_an_agent_or_nobody_then_the_dashboard_is_refused(
    site: Site, factory: sessionmaker[Session]
) -> None:
    anon = site.browser()
    resp = await anon.get("/api/admin/dashboard")
    assert resp.status_code == 401 and resp.json() == {"error": "log in first"}
    page = await anon.get("/supervisor", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == dashboard.LOGIN_URL

    agent = await site.login(supervisor(factory, AgentRole.AGENT))
    resp = await agent.get("/api/admin/dashboard")
    assert resp.status_code == 403 and resp.json() == {"error": "supervisors only"}
    page = await agent.get("/supervisor")
    assert page.status_code == 403 and "Supervisors only" in page.text
    assert "/api/admin/dashboard" not in page.text and 'id="dashboard"' not in page.text

    boss = await site.login(supervisor(factory))
    page = await boss.get("/supervisor")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert 'src="/supervisor/dashboard.js"' in page.text and boss.csrf in page.text
    js = await anon.get("/supervisor/dashboard.js")
    assert js.status_code == 200 and "/api/admin/dashboard" in js.text
    assert "javascript" in js.headers["content-type"]
    assert re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write", js.text) is None
    css = await anon.get("/supervisor/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # Only those three answer there; anything else goes on to the API (JSON 404).
    for method, path in (("GET", "/supervisor/x.js"), ("POST", "/supervisor")):
        other = await boss.client.request(method, path, headers={"X-CSRF-Token": boss.csrf})
        assert other.status_code == 404 and other.json() == {"error": "no such route"}


def _statements(factory: sessionmaker[Session], r: redis.Redis) -> int:
    engine = factory.kw["bind"]
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        with factory() as s:
            dashboard.snapshot(s, r, lambda cid: DialQueue(r, cid).depth(), datetime.now(UTC))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


async def test_given_a_bigger_floor_then_the_dashboard_makes_no_more_queries(
    factory: sessionmaker[Session], r: redis.Redis
) -> None:
    f = build(factory, r)
    before = _statements(factory, r)
    now = datetime.now(UTC)
    for i in range(30):  # 30 more agents in calls, callbacks, contacts
        agent = f.agent(f"extra{i}", {"session": "up", "ready_voice": "1", "ts": "1"})
        number = f"+49301234{i:04d}"
        f.attempt("A", f.contact("A", number), e164=number, agent_id=agent,
                  state=AttemptState.CONNECTED, connected_at=now)  # fmt: skip
        f.callback("B", timedelta(minutes=i), CallbackState.PENDING, agent)
    assert _statements(factory, r) == before
    with factory() as s:
        snap = dashboard.snapshot(s, r, lambda cid: DialQueue(r, cid).depth(), now)
    assert snap["calls_total"] == 32 and snap["callbacks"]["total"] == 34
