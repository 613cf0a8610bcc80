"""Predictive dialing end to end on the sandbox Asterisk: the bridge's pacer dials ahead of
its agents from estimates and the abandon budget it rebuilds from the attempts, the
classify route picks the agent when a person answers (or abandons the person when none is
free), and Asterisk keeps the evidence: its own channel events show more contact calls at
once than agents, AstDB's simcount / simdup each number dialed once and never twice at
once, the agents' conferences one contact at a time. With the day's abandon budget spent
(in the attempts, nowhere else), the same campaign dials progressively and abandons
nobody."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from sqlalchemy import select

from agi_scripts.routes import register
from agi_scripts.server import AgiServer
from ami_bridge.service import Bridge, health_key
from outbound import live, names, pacing
from outbound.campaigns.interaction import mark_done
from outbound.commands import send_command
from outbound.dial_queue import DialQueue
from outbound.model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    CallResult,
    Campaign,
    CampaignState,
    CaseEvent,
    Contact,
    ContactList,
    ContactState,
    DialMode,
    transaction,
)
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact, migrated_factory
from tests.helpers.redis_url import redis_url
from tests.helpers.stack import bridge_config
from tests.helpers.until import async_until

REDIS_URL = redis_url(7)
# Mostly calls nobody answers live (busy, congestion, machine), some persons: the pacer
# expects about one live answer in four and dials ahead of three agents.
DIGITS = [5, 7, 0, 5, 4, 7, 5, 1, 7, 5, 4, 2, 5, 7, 5, 3]


def _number(last_digit: int) -> str:
    return f"+4940{random.randrange(10**6, 10**7)}{last_digit}"


def _history(f: Any, cid: int, *, lives: int, abandoned: int, dials: int) -> None:
    """What the campaign did earlier today, as ended attempts of one old contact (the
    only memory the pacer has): `dials` dials, `lives` of them answered by a person and
    connected (talk 20 s, marked done 1 s later), `abandoned` of those abandoned."""
    hist = add_contact(f, _number(5), campaign=f"pred-{cid}")
    t = datetime.now(UTC) - timedelta(hours=1)
    with transaction(f) as s:
        s.get(Contact, hist).state = ContactState.DONE  # type: ignore[union-attr]
        for i in range(dials):
            t0 = t + timedelta(seconds=30 * i)
            is_live = i < lives
            ab = i < abandoned
            s.add(
                CallAttempt(
                    id=(aid := str(uuid.uuid4())),
                    campaign_id=cid,
                    contact_id=hist,
                    attempt_no=i + 1,
                    e164="+494000000005",
                    state=AttemptState.ENDED,
                    result=CallResult.ABANDONED
                    if ab
                    else (CallResult.ANSWERED if is_live else CallResult.BUSY),
                    created_at=t0,
                    originated_at=t0,
                    answered_at=t0 + timedelta(seconds=2) if is_live else None,
                    connected_at=t0 + timedelta(seconds=2) if is_live and not ab else None,
                    ended_at=t0 + timedelta(seconds=22 if is_live else 1),
                    disposition="ok" if is_live and not ab else None,
                )
            )
            if is_live and not ab:  # marked done (the wrap-up's end)
                s.flush()
                s.add(
                    CaseEvent(
                        contact_id=hist,
                        attempt_id=aid,
                        kind="disposition",
                        created_at=t0 + timedelta(seconds=23),
                    )
                )


@pytest.fixture
async def world(sandbox: SandboxInfo, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Builds a running predictive campaign with its history, contacts and three member
    agents, every FastAGI route and a Bridge with the dialer on."""
    stops: list[Callable[[], Any]] = []

    async def build(*, lives: int, abandoned: int, dials: int) -> dict[str, Any]:
        factory = migrated_factory(tmp_path / f"{uuid.uuid4().hex[:6]}.db")
        cid = random.randrange(10**6, 10**9)
        with transaction(factory) as s:
            s.add(
                Campaign(
                    id=cid,
                    name=f"pred-{cid}",
                    mode=DialMode.PREDICTIVE,
                    state=CampaignState.RUNNING,
                    max_attempts=1,
                    abandon_target=0.1,
                )
            )
            s.flush()
            s.add(ContactList(campaign_id=cid, name="l"))
        _history(factory, cid, lives=lives, abandoned=abandoned, dials=dials)
        base = random.randrange(10000, 60000)
        agents = [
            add_agent(factory, str(base + i), f"Local/{random.randrange(10**5, 10**6)}@sim-phones")
            for i in range(3)
        ]
        with transaction(factory) as s:
            s.add_all(AgentCampaign(agent_id=a, campaign_id=cid) for a in agents)
        numbers = [_number(d) for d in DIGITS]
        contacts = {n: add_contact(factory, n, campaign=f"pred-{cid}") for n in numbers}
        server = f"pred-{uuid.uuid4().hex[:6]}"
        cfg = bridge_config(
            sandbox,
            tmp_path,
            redis_url=REDIS_URL,
            server=server,
            ring_timeout=10,
        )
        agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
        ar = aredis.Redis.from_url(REDIS_URL)
        register(agi, factory, ar)
        await agi.start()
        r = redis.Redis.from_url(REDIS_URL)
        bridge = Bridge(cfg, factory, aredis.Redis.from_url(REDIS_URL))
        assert bridge.dialer is not None
        p = bridge.dialer.predictive
        p.min_dials, p.min_calls = 20, 5
        p.priors = pacing.Priors(
            answer_rate=0.25, ring_s=(2.0, 1.0), talk_s=(20.0, 5.0), wrap_s=(1.0, 0.5)
        )
        p.tuning = pacing.Tuning(safety=1.0)
        task = asyncio.ensure_future(bridge.run())

        async def stop() -> None:
            bridge.stop()
            await asyncio.wait_for(task, 15)
            await agi.close()
            await ar.aclose()
            r.delete(
                *DialQueue(r, cid).all_keys(),
                *(names.key_agent_reservation(a) for a in agents),
                *(live.agent_key(a) for a in agents),
                names.key_commands(server),
            )

        stops.append(stop)
        await async_until(lambda: r.get(health_key(server)) is not None, 15)
        return {
            "factory": factory,
            "campaign": cid,
            "agents": agents,
            "contacts": contacts,
            "server": server,
            "redis": r,
        }

    yield build
    for stop in stops:
        await stop()


def _attempts(factory: Any, campaign_id: int) -> list[CallAttempt]:
    with factory() as s:
        q = select(CallAttempt).where(
            CallAttempt.campaign_id == campaign_id, CallAttempt.e164 != "+494000000005"
        )
        return list(s.scalars(q.order_by(CallAttempt.created_at)))


async def _run(w: dict[str, Any]) -> list[CallAttempt]:
    """Log the three agents in, Ready; mark every finished call done at once (the
    agents' wrap-up); wait until every record was dialed and every call ended."""
    f, r, server = w["factory"], w["redis"], w["server"]
    for a in w["agents"]:
        await asyncio.to_thread(send_command, r, server, "login", {"agent_id": a}, 20)
        await asyncio.to_thread(send_command, r, server, "ready", {"agent_id": a}, 20)

    def wrap_up() -> bool:
        mine = _attempts(f, w["campaign"])
        for a in mine:
            if a.state is AttemptState.ENDED and a.connected_at and a.disposition is None:
                mark_done(f, a.id, a.agent_id or "", "", auto_next=False)
        return len(mine) == len(w["contacts"]) and all(a.state is AttemptState.ENDED for a in mine)

    await async_until(lambda: wrap_up(), 150, interval=0.5, message="not every record dialed")
    return _attempts(f, w["campaign"])


def _max_concurrent_contacts(admin: AmiClient, numbers: set[str]) -> int:
    """The most contact calls Asterisk had up at once (its Newchannel / Hangup events of
    the contacts' far end, Local/<number>@sim-contacts)."""
    up: set[str] = set()
    most = 0
    for e in admin.events:
        ch = e.get("Channel") or ""
        if not ch.startswith("Local/") or "@sim-contacts-" not in ch or not ch.endswith(";1"):
            continue
        if ch[len("Local/") : ch.index("@")] not in numbers:
            continue
        if e.get("Event") == "Newchannel":
            up.add(ch)
            most = max(most, len(up))
        elif e.get("Event") == "Hangup":
            up.discard(ch)
    return most


async def _asterisk_checks(admin: AmiClient, w: dict[str, Any], attempts: list[CallAttempt]):
    """Each number dialed once, never twice at once; one contact at a time per agent."""
    for n in w["contacts"]:
        assert await admin.db_get("simcount", n) == "1", n
        assert await admin.db_get("simdup", n) is None, n
    ids = {a.id for a in attempts}
    for agent in w["agents"]:
        inside: set[str] = set()
        for e in admin.events:
            if e.get("Conference") != names.agent_bridge(agent) or e.get("Uniqueid") not in ids:
                continue
            if e.get("Event") == "ConfbridgeJoin":
                inside.add(e["Uniqueid"])
            elif e.get("Event") == "ConfbridgeLeave":
                inside.discard(e["Uniqueid"])
            assert len(inside) <= 1, f"two contacts in {agent}'s conference at once"
    # Every connected person joined the conference of the agent written on the attempt.
    for a in attempts:
        if a.result is CallResult.ANSWERED:
            assert a.agent_id in w["agents"] and a.audit.get("agent_picked") == a.agent_id
            await admin.wait_event(
                "ConfbridgeJoin",
                timeout=1,
                Conference=names.agent_bridge(a.agent_id or ""),
                Uniqueid=a.id,
            )


@pytest.mark.slow  # the API's predictive test (tests/integration/api) shows this in CI
@pytest.mark.asterisk
async def test_given_warm_estimates_then_predictive_dials_ahead_and_every_person_is_served_or_abandoned(
    world: Callable[..., Any], admin_ami: AmiClient
) -> None:
    # Given a history of 100 dials today, 20 live, none abandoned: warm, budget left.
    w = await world(lives=20, abandoned=0, dials=100)
    attempts = await _run(w)

    # Asterisk had more contact calls up at once than there are agents: dialed ahead.
    assert _max_concurrent_contacts(admin_ami, set(w["contacts"])) > len(w["agents"])
    plans = [a.audit["pacing"] for a in attempts]
    assert any(p["mode"] == "predictive" and p["calls"] + p["ringing"] > p["ready"] for p in plans)
    # Nobody reserved before the dial; every person got an agent or was abandoned.
    persons = [a for a in attempts if a.amd_status == "HUMAN"]
    assert len(persons) == 4
    for a in persons:
        assert a.result in (CallResult.ANSWERED, CallResult.ABANDONED), a.result
        if a.result is CallResult.ABANDONED:
            assert a.audit.get("abandon_reason") and a.connected_at is None
    assert any(a.result is CallResult.ANSWERED for a in persons)
    await _asterisk_checks(admin_ami, w, attempts)


@pytest.mark.asterisk
async def test_given_the_days_abandon_budget_spent_then_predictive_dials_no_more_than_agents_and_abandons_nobody(
    world: Callable[..., Any], admin_ami: AmiClient
) -> None:
    # Given today's history at the target already: 20 live answers, 2 abandoned (10%).
    w = await world(lives=20, abandoned=2, dials=100)
    attempts = await _run(w)

    plans = [a.audit["pacing"] for a in attempts]
    assert all(p["mode"] == "progressive" and "budget spent" in p["reason"] for p in plans)
    assert _max_concurrent_contacts(admin_ami, set(w["contacts"])) <= len(w["agents"])
    assert [a for a in attempts if a.result is CallResult.ABANDONED] == []
    # Every person AMD heard was connected (AMD on real audio may take one for a machine:
    # that call is then not a person's, and not an abandon either).
    persons = [a for a in attempts if a.amd_status == "HUMAN"]
    assert persons and all(a.result is CallResult.ANSWERED for a in persons)
    await _asterisk_checks(admin_ami, w, attempts)
