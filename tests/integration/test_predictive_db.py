"""Predictive dialing's database side (outbound.campaigns.predictive) on SQLite and
PostgreSQL, with the real Redis: the campaign's floor, the estimates and the abandon ledger
are read from the attempts alone, and the agent picked for an answered person is Ready,
free, not reserved, and written on the attempt exactly once when two answers race."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aredis
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import live, names
from outbound.campaigns import predictive
from outbound.model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    CallResult,
    CaseEvent,
    Contact,
    DialMode,
    session_factory,
    transaction,
)
from tests.helpers.db import add_agent, add_contact
from tests.helpers.redis_url import redis_url

REDIS_URL = redis_url(7)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def f(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def _campaign_of(f: sessionmaker[Session], contact_id: int) -> int:
    with f() as s:
        c = s.get(Contact, contact_id)
        assert c is not None
        return c.campaign_id


def _attempt(f: sessionmaker[Session], contact_id: int, **kw: Any) -> str:
    """An attempt row as the originator leaves it (no compliance: history)."""
    with transaction(f) as s:
        n = s.scalar(select(func.count()).where(CallAttempt.contact_id == contact_id)) or 0
        a = CallAttempt(
            campaign_id=_campaign_of(f, contact_id),
            contact_id=contact_id,
            attempt_no=n + 1,
            e164="+493012345670",
            **kw,
        )
        s.add(a)
        s.flush()
        return a.id


def _ended(
    f: sessionmaker[Session],
    contact_id: int,
    *,
    ago: float,
    result: CallResult,
    ring: float = 5,
    talk: float | None = None,
    wrap: float | None = None,
    agent: str | None = None,
) -> str:
    """An ended attempt: originated `ago` seconds ago, answered after `ring` s; with `talk`,
    connected that long; with `wrap`, marked done that long after its end."""
    t0 = NOW - timedelta(seconds=ago)
    answered = t0 + timedelta(seconds=ring)
    ended = answered + timedelta(seconds=talk or 1)
    aid = _attempt(
        f,
        contact_id,
        state=AttemptState.ENDED,
        result=result,
        agent_id=agent,
        created_at=t0,
        originated_at=t0,
        answered_at=answered if result not in (CallResult.BUSY, CallResult.NO_ANSWER) else None,
        connected_at=answered if talk is not None else None,
        ended_at=ended,
        disposition="ok" if wrap is not None else None,
    )
    if wrap is not None:
        with transaction(f) as s:
            s.add(
                CaseEvent(
                    contact_id=contact_id,
                    attempt_id=aid,
                    agent_id=agent,
                    kind="disposition",
                    created_at=ended + timedelta(seconds=wrap),
                )
            )
    return aid


def test_given_live_attempts_then_the_floor_counts_calls_wrap_ups_ringing_and_waiting(
    f: sessionmaker[Session],
) -> None:
    c, c2, c3, c4 = (add_contact(f, f"+49301234567{i}", mode=DialMode.PREDICTIVE) for i in range(4))
    cid = _campaign_of(f, c)
    a1, a2, a3 = (add_agent(f, f"fl{i}") for i in range(3))
    t = NOW - timedelta(seconds=30)
    _attempt(
        f, c, state=AttemptState.CONNECTED, agent_id=a1, created_at=t, answered_at=t, connected_at=t
    )
    _attempt(
        f, c2, state=AttemptState.RINGING, created_at=t, originated_at=t + timedelta(seconds=20)
    )
    _attempt(f, c3, state=AttemptState.ORIGINATING, created_at=t)
    _attempt(f, c4, state=AttemptState.ANSWERED, created_at=t, answered_at=t)  # in AMD
    _ended(f, c, ago=60, result=CallResult.ANSWERED, talk=20, agent=a2)  # wrap-up
    _ended(f, c, ago=90, result=CallResult.ANSWERED, talk=20, wrap=3, agent=a3)  # done
    with f() as s:
        fl = predictive.floor(s, cid, NOW)
    assert [round(x) for x in fl.in_call] == [30]
    assert sorted(round(x) for x in fl.ringing) == [10, 30]
    assert fl.waiting == 1
    assert [round(x) for x in fl.wrap_up] == [35]  # ended 60 - 5 - 20 = 35 s ago
    assert fl.busy_agents == {a1, a2}


def test_given_history_then_estimates_follow_it_and_warm_up(f: sessionmaker[Session]) -> None:
    c = add_contact(f, "+493012345670", mode=DialMode.PREDICTIVE)
    cid = _campaign_of(f, c)
    agent = add_agent(f, "est")
    with f() as s:
        cold = predictive.estimators(s, cid, min_dials=20, min_calls=5).snapshot()
    assert not cold.warm
    for i in range(30):  # 1 in 3 live: talk 40 s, wrap 6 s, ring 8 s
        if i % 3 == 0:
            _ended(
                f,
                c,
                ago=3000 - i * 60,
                result=CallResult.ANSWERED,
                ring=8,
                talk=40,
                wrap=6,
                agent=agent,
            )
        else:
            _ended(f, c, ago=3000 - i * 60, result=CallResult.BUSY)
    with f() as s:
        est = predictive.estimators(s, cid, min_dials=20, min_calls=5).snapshot()
    assert est.warm
    assert 0.28 < est.answer_rate < 0.34
    assert 8 <= est.ring_mean < 11
    assert 40 <= est.talk_mean < 70 and 6 <= est.wrap_mean < 11


def test_given_abandons_then_the_ledger_counts_live_answers_per_day_over_30_days(
    f: sessionmaker[Session],
) -> None:
    c = add_contact(f, "+493012345670", mode=DialMode.PREDICTIVE)
    cid = _campaign_of(f, c)
    day = 86400
    for ago, result, talk in [
        (60, CallResult.ANSWERED, 10.0),
        (120, CallResult.ABANDONED, None),
        (180, CallResult.ANSWERING_MACHINE, None),  # not a live answer
        (2 * day, CallResult.ANSWERED, 10.0),
        (2 * day + 60, CallResult.ABANDONED, None),
        (40 * day, CallResult.ABANDONED, None),  # outside the 30 days
    ]:
        _ended(f, c, ago=ago, result=result, talk=talk)
    with f() as s:
        b = predictive.ledger(s, cid, (NOW - timedelta(seconds=200)).date(), 0.03).budget(
            (NOW - timedelta(seconds=200)).date()
        )
    assert (b.answered_30d, b.abandoned_30d) == (4, 2)
    assert (b.answered_today, b.abandoned_today) in ((2, 1), (0, 0))  # near midnight: (0, 0)
    assert not b.within_target and b.allowed() == 0


@pytest.fixture
def ar() -> Iterator[aredis.Redis]:
    yield aredis.Redis.from_url(REDIS_URL)


async def test_given_ready_agents_then_two_answers_never_get_the_same_agent(
    f: sessionmaker[Session], ar: aredis.Redis
) -> None:
    tag = uuid.uuid4().hex[:6]
    c1 = add_contact(f, "+493012345670", campaign=f"pk-{tag}", mode=DialMode.PREDICTIVE)
    c2 = add_contact(f, "+493012345671", campaign=f"pk-{tag}")
    cid = _campaign_of(f, c1)
    ready, not_ready, busy, other = (add_agent(f, f"{tag}{i}") for i in range(4))
    with transaction(f) as s:
        s.add_all(AgentCampaign(agent_id=a, campaign_id=cid) for a in (ready, not_ready, busy))
    try:
        for a, up in ((ready, True), (not_ready, False), (busy, True), (other, True)):
            await ar.hset(live.agent_key(a), mapping=live.agent_fields("up", ready=up))
        _ended(f, c2, ago=30, result=CallResult.ANSWERED, talk=5, agent=busy)  # in wrap-up
        x1 = _attempt(f, c1, state=AttemptState.ANSWERED, answered_at=NOW)
        x2 = _attempt(f, c2, state=AttemptState.ANSWERED, answered_at=NOW)

        async def run(fn: Any) -> Any:
            return await asyncio.to_thread(fn)

        got = await asyncio.gather(
            predictive.pick_agent(ar, f, cid, x1, run=run),
            predictive.pick_agent(ar, f, cid, x2, run=run),
        )
        # Only `ready` qualifies (the other is Not Ready, one in wrap-up, one no member):
        # one answer gets them, the other none.
        assert sorted(got, key=str) == sorted([ready, None], key=str)
        with f() as s:
            rows = {x: s.get(CallAttempt, x) for x in (x1, x2)}
            assert sorted((r.agent_id for r in rows.values() if r), key=str) == sorted(
                [ready, None], key=str
            )
        # The reservation was dropped once the attempt said it (the row is the truth).
        assert await ar.get(names.key_agent_reservation(ready)) is None
        # Picking again for the attempt that has its agent: no second agent.
        winner = x1 if got[0] else x2
        assert await predictive.pick_agent(ar, f, cid, winner, run=run) is None
        # Undone (Asterisk says the agent left their conference): free again.
        predictive.unassign(f, winner, ready)
        loser = x2 if winner == x1 else x1
        assert await predictive.pick_agent(ar, f, cid, loser, run=run) == ready
        # A reservation held by a progressive tick keeps the agent out.
        predictive.unassign(f, loser, ready)
        await ar.set(names.key_agent_reservation(ready), "dialer:x", ex=30)
        assert await predictive.pick_agent(ar, f, cid, loser, run=run) is None
    finally:
        await ar.delete(
            *(live.agent_key(a) for a in (ready, not_ready, busy, other)),
            names.key_agent_reservation(ready),
        )
        await ar.aclose()
