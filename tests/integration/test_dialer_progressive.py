"""Progressive dialing end to end on the sandbox Asterisk: the bridge's dialing loop
(ami_bridge/dialer.py) places one call per Ready, free agent, the agent reserved before
the dial. Asterisk keeps the evidence (DB(simcount/<number>), DB(simdup/<number>), the
ConfbridgeJoin / ConfbridgeLeave events of the agents' conferences), the database the
results, treatments and wrap-up: each number dialed once (a busy one again only after the
retry time its treatment set), a person joins the agent reserved for the call and never
an agent who already has one, an agent in wrap-up or not Ready gets no call, and a
contact where it is night is never dialed but told when it may be."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import redis.asyncio as aredis
from sqlalchemy import Engine, select

from agi_scripts.routes import register
from agi_scripts.server import AgiServer
from ami_bridge.dialer import AgentReservations, agent_is_free
from ami_bridge.service import Bridge, health_key
from outbound import live, names
from outbound.campaigns.attempts import advance, create_attempt, settle
from outbound.commands import send_command
from outbound.dial_queue import DialQueue
from outbound.model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    CallResult,
    Campaign,
    CampaignState,
    Contact,
    ContactList,
    ContactState,
    DialMode,
    session_factory,
    transaction,
)
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.db import DAYTIME, add_agent, add_contact, migrated_factory
from tests.helpers.redis_url import redis_url
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

REDIS_URL = redis_url(7)
BUSY_RETRY_S = 12  # the test campaign's busy treatment: retry after 12 s


def night_zone(now: datetime | None = None) -> str:
    """An Etc/GMT±N zone where it is about 02:00 now: outside the default calling hours
    (08:00-21:00) for the next 6 hours."""
    hour = (now or datetime.now(UTC)).hour
    offset = (2 - hour + 12) % 24 - 12  # -12 .. +11
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _number(last_digit: int) -> str:
    return f"+4930{random.randrange(10**6, 10**7)}{last_digit}"


@pytest.fixture
async def world(
    sandbox: SandboxInfo, tmp_path: Path, admin_ami: AmiClient
) -> AsyncIterator[dict[str, Any]]:
    """A running progressive campaign (its own id: its Redis keys are its own), its
    contacts and three member agents; every FastAGI route; a Bridge with the dialer on."""
    factory = migrated_factory(tmp_path / "p.db")
    cid = random.randrange(10**6, 10**9)
    with transaction(factory) as s:
        s.add(
            Campaign(
                id=cid,
                name=f"prog-{cid}",
                mode=DialMode.PROGRESSIVE,
                state=CampaignState.RUNNING,
                max_attempts=2,
                treatments={"busy": {"action": "retry", "delay_min": BUSY_RETRY_S / 60}},
            )
        )
        s.flush()
        s.add(ContactList(campaign_id=cid, name="l"))
    base = random.randrange(10000, 60000)
    agents = [
        add_agent(factory, str(base + i), f"Local/{random.randrange(10**5, 10**6)}@sim-phones")
        for i in range(3)
    ]
    with transaction(factory) as s:
        s.add_all(AgentCampaign(agent_id=a, campaign_id=cid) for a in agents)
    # In creation order (the queue's order within one priority): the night contact first.
    scenarios = {"night": 2, "human0": 0, "busy": 5, "human1": 1, "machine": 4, "cong": 7}
    numbers = {k: _number(d) for k, d in scenarios.items()}
    zone = {"night": night_zone()}
    contacts = {
        k: add_contact(factory, n, campaign=f"prog-{cid}", timezone=zone.get(k, DAYTIME))
        for k, n in numbers.items()
    }
    server = f"prog-{uuid.uuid4().hex[:6]}"
    cfg = bridge_config(
        sandbox,
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        redis_url=REDIS_URL,
        server=server,
    )
    agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
    register(agi, factory)
    await agi.start()
    r = redis.Redis.from_url(REDIS_URL)
    bridge = Bridge(cfg, factory, aredis.Redis.from_url(REDIS_URL))
    assert bridge.dialer is not None
    bridge.dialer.sweep_s = 1.0  # enqueue_due every second: retries come back quickly
    task = asyncio.ensure_future(bridge.run())
    try:
        await async_until(lambda: r.get(health_key(server)) is not None, 15)
        yield {
            "factory": factory,
            "campaign": cid,
            "agents": agents,
            "numbers": numbers,
            "contacts": contacts,
            "server": server,
            "redis": r,
            "bridge": bridge,
        }
    finally:
        bridge.stop()
        await asyncio.wait_for(task, 15)
        await agi.close()
        r.delete(
            *DialQueue(r, cid).all_keys(),
            *(names.key_agent_reservation(a) for a in agents),
            *(live.agent_key(a) for a in agents),
            names.key_commands(server),
        )


def _attempts(factory: Any, **where: Any) -> list[CallAttempt]:
    with factory() as s:
        q = select(CallAttempt).filter_by(**where).order_by(CallAttempt.created_at)
        return list(s.scalars(q))


def _contact(factory: Any, contact_id: int) -> Contact:
    with factory() as s:
        c = s.get(Contact, contact_id)
        assert c is not None
        return c


def _contact_joins(admin: AmiClient, agent: str, attempt_ids: set[str]) -> list[tuple[str, str]]:
    """(join / leave, attempt id) of contacts in the agent's conference, in order."""
    conf = names.agent_bridge(agent)
    return [
        ("join" if e["Event"] == "ConfbridgeJoin" else "leave", e["Uniqueid"])
        for e in admin.events
        if e.get("Event") in ("ConfbridgeJoin", "ConfbridgeLeave")
        and e.get("Conference") == conf
        and e.get("Uniqueid") in attempt_ids
    ]


@pytest.mark.asterisk
async def test_given_two_ready_agents_then_progressive_dials_each_contact_once_for_a_free_agent(
    world: dict[str, Any], admin_ami: AmiClient
) -> None:
    f, r, server = world["factory"], world["redis"], world["server"]
    numbers, contacts = world["numbers"], world["contacts"]
    a1, a2, lazy = world["agents"]

    def cmd(kind: str, **args: object) -> dict[str, Any]:
        return send_command(r, server, kind, dict(args), 20)

    # Given three logged-in member agents, two of them Ready (the third stays Not Ready).
    for a in (a1, a2, lazy):
        await asyncio.to_thread(cmd, "login", agent_id=a)
    for a in (a1, a2):
        await asyncio.to_thread(cmd, "ready", agent_id=a)

    # Then both persons are connected, each to the agent reserved for their call.
    def connected() -> list[CallAttempt]:
        return [a for a in _attempts(f) if a.state is AttemptState.CONNECTED]

    got = await async_until(lambda: len(connected()) == 2 and connected(), 30)
    assert {a.contact_id for a in got} == {contacts["human0"], contacts["human1"]}
    assert {a.agent_id for a in got} == {a1, a2}
    for a in got:
        await admin_ami.wait_event(
            "ConfbridgeJoin", timeout=5, Conference=names.agent_bridge(a.agent_id), Uniqueid=a.id
        )

    # When the first agent's call ends: that agent is in wrap-up (no disposition yet).
    first = got[0]
    wrapping = first.agent_id
    assert wrapping is not None
    await asyncio.to_thread(cmd, "end", attempt_id=first.id)
    await async_until(lambda: _attempts(f, id=first.id)[0].state is AttemptState.ENDED, 10)
    ended_at = datetime.now(UTC)
    await asyncio.sleep(3)  # six ticks, and records are waiting (machine, congestion)
    # Then no call for the agent in wrap-up.
    assert [a.id for a in _attempts(f, agent_id=wrapping)] == [first.id]
    # When the disposition is written ("mark done"), the agent gets the next call.
    with transaction(f) as s:
        att = s.get(CallAttempt, first.id)
        assert att is not None
        att.disposition = "sale"
    done_at = datetime.now(UTC)
    await async_until(lambda: len(_attempts(f, agent_id=wrapping)) > 1, 10)
    later = _attempts(f, agent_id=wrapping)[1]
    assert later.created_at >= done_at - timedelta(seconds=0.1) > ended_at
    # The other person's call ends too, marked done at once.
    other = got[1]
    await asyncio.to_thread(cmd, "end", attempt_id=other.id)
    await async_until(lambda: _attempts(f, id=other.id)[0].state is AttemptState.ENDED, 10)
    with transaction(f) as s:
        att = s.get(CallAttempt, other.id)
        assert att is not None
        att.disposition = "no sale"

    # Then every dialable record is dialed and ended: the busy one twice (max_attempts 2).
    def finished() -> bool:
        mine = _attempts(f)
        busy = [a for a in mine if a.contact_id == contacts["busy"]]
        return (
            len(mine) == 6 and len(busy) == 2 and all(a.state is AttemptState.ENDED for a in mine)
        )

    await async_until(finished, 40, interval=0.3, message="not every record was dialed")
    attempts = _attempts(f)

    # Asterisk saw each number dialed exactly once (busy: twice), never twice at once,
    # and the night contact never.
    for key, n in numbers.items():
        count = await admin_ami.db_get("simcount", n)
        want = {"night": None, "busy": "2"}.get(key, "1")
        assert count == want, f"{key} {n} dialed {count} times"
        assert await admin_ami.db_get("simdup", n) is None
    # Every call had an agent, and never the Not-Ready one.
    assert all(a.agent_id in (a1, a2) for a in attempts)
    # The persons joined their own agent's conference, one contact at a time per agent.
    ids = {a.id for a in attempts}
    for agent in (a1, a2, lazy):
        inside: set[str] = set()
        for what, uid in _contact_joins(admin_ami, agent, ids):
            inside = inside | {uid} if what == "join" else inside - {uid}
            assert len(inside) <= 1, f"two contacts in {agent}'s conference at once"
    for a in got:
        assert _contact_joins(admin_ami, a.agent_id or "", ids)[0] == ("join", a.id)
    assert _contact_joins(admin_ami, lazy, ids) == []

    # The database has the results and treatments.
    result = {c: [a.result for a in attempts if a.contact_id == cid] for c, cid in contacts.items()}
    assert result == {
        "night": [],
        "human0": [CallResult.ANSWERED],
        "human1": [CallResult.ANSWERED],
        "busy": [CallResult.BUSY, CallResult.BUSY],
        "machine": [CallResult.ANSWERING_MACHINE],
        "cong": [CallResult.CONGESTION],
    }
    # The busy contact was dialed again only once the retry time of its treatment came.
    b1, b2 = (a for a in attempts if a.contact_id == contacts["busy"])
    assert b1.ended_at is not None
    assert b2.created_at >= b1.ended_at + timedelta(seconds=BUSY_RETRY_S)
    assert _contact(f, contacts["busy"]).state is ContactState.DONE
    # The night contact: never dialed, told when it may be (08:00 where it lives).
    night = _contact(f, contacts["night"])
    assert night.state is ContactState.READY and night.next_at is not None
    local = night.next_at.astimezone(ZoneInfo(night.timezone or "UTC"))
    assert (local.hour, local.minute) == (8, 0)
    assert night.next_at > datetime.now(UTC)
    # A retried congestion waits for its treatment's time (5 min): queued later, not now.
    cong = _contact(f, contacts["cong"])
    assert cong.state is ContactState.READY and cong.next_at is not None
    assert cong.next_at > datetime.now(UTC) + timedelta(minutes=4)


async def test_given_two_workers_when_both_reserve_an_agent_then_one_holds_it_until_released() -> (
    None
):
    agent = f"res-{uuid.uuid4().hex[:8]}"
    r1, r2 = aredis.Redis.from_url(REDIS_URL), aredis.Redis.from_url(REDIS_URL)
    w1, w2 = AgentReservations(r1, "w1", ttl_s=30), AgentReservations(r2, "w2", ttl_s=30)
    try:
        got = await asyncio.gather(w1.take(agent), w2.take(agent), w1.take(agent))
        assert sum(t is not None for t in got) == 1
        holder, other = (w1, w2) if got[0] or got[2] else (w2, w1)
        token = next(t for t in got if t)
        assert 0 < await r1.ttl(names.key_agent_reservation(agent)) <= 30
        await other.give_back(agent, "not-the-token")  # not theirs: nothing happens
        assert await other.take(agent) is None
        await holder.give_back(agent, token)
        assert await other.take(agent) is not None
    finally:
        await r1.delete(names.key_agent_reservation(agent))
        await r1.aclose()
        await r2.aclose()


def test_given_an_agents_attempts_then_free_only_without_live_call_or_pending_wrap_up(
    engine: Engine,
) -> None:
    f = session_factory(engine)
    agent = add_agent(f, "42")
    c1, c2 = (add_contact(f, _number(0)) for _ in range(2))

    def free() -> bool:
        with f() as s:
            return agent_is_free(s, agent)

    assert free()
    with transaction(f) as s:
        aid = create_attempt(s, c1, agent_id=agent).id
    assert not free()  # ringing for the agent
    with transaction(f) as s:
        settle(s, aid, CallResult.BUSY)
    assert free()  # never reached the agent: no wrap-up
    with transaction(f) as s:
        a = create_attempt(s, c2, agent_id=agent)
        advance(a, "answer")
        advance(a, "connect")
        aid = a.id
    assert not free()  # talking
    with transaction(f) as s:
        settle(s, aid, CallResult.ANSWERED)
    assert not free()  # in wrap-up until the disposition is written
    with transaction(f) as s:
        got = s.get(CallAttempt, aid)
        assert got is not None
        got.disposition = "sale"
    assert free()
