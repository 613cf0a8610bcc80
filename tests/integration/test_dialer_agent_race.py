"""An agent's own dial (a callback offered to them, accepted and dialed: preview.dial)
against the bridge's progressive call for the same agent, on PostgreSQL. The progressive
path reads "is the agent free?" (ami_bridge.dialer.free_for_a_call) in one transaction
and writes its attempt (create_attempt) in a later one; the agent's dial closes the
offer and writes its attempt in one commit, which can land anywhere in between. The
interleavings are injected in order, not left to chance:

- the agent's dial commits between the check's two reads: the check must still say busy
  (it reads the open offer first);
- it commits after the check: the bridge's create_attempt, under the agent's row lock,
  finds the agent's live attempt and refuses (AgentBusy); the dialer puts the record
  back on top and Asterisk is never asked to dial it.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis as redis_lib
import redis.asyncio as aredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import ami_bridge.dialer as dialer_mod
from ami_bridge.connection import AmiConnection
from ami_bridge.dialer import CampaignInfo, Dialer, Placed, free_for_a_call
from ami_bridge.originator import Originator
from ami_bridge.sessions import AgentSessions
from outbound.campaigns import callback_offers, preview, push
from outbound.campaigns.attempts import AgentBusy, create_attempt, settle
from outbound.dial_queue import DialQueue
from outbound.model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Contact,
    ContactState,
    DialMode,
    make_engine,
    session_factory,
    transaction,
    upgrade,
    utcnow,
)
from outbound.sandbox import SandboxInfo, daytime_zone
from tests.helpers import callbacks as cbh
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact
from tests.helpers.stack import TRUNK

AGENT = "7701"


@pytest.fixture
def pg_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_url, pool_size=5)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    with cbh.private_redis() as url:
        yield url


def _number(last: int) -> str:
    return f"+4930{random.randrange(10**6, 10**7)}{last}"


def _world(f: sessionmaker[Session]) -> dict[str, Any]:
    """A running progressive campaign, one member agent with a callback offered to them
    (open offer), and one ordinary record waiting to be dialed."""
    cid = cbh.make_campaign(f)
    add_agent(f, AGENT)
    with transaction(f) as s:
        s.add(AgentCampaign(agent_id=AGENT, campaign_id=cid))
    cb_contact = cbh.add_contact(f, cid, daytime_zone(), _number(0))
    cb_id = cbh.add_callback(f, cid, cb_contact, utcnow() - timedelta(seconds=5))
    with transaction(f) as s:
        cb = s.get(Callback, cb_id)
        assert cb is not None
        cb.state, cb.fired_at = CallbackState.QUEUED, utcnow()
    got = callback_offers.offer(f, cb_id, AGENT, utcnow())
    assert got is not None, "the callback was not offered"
    record = cbh.add_contact(f, cid, daytime_zone(), _number(9))
    with transaction(f) as s:  # an ordinary record, not a callback's contact
        c = s.get(Contact, record)
        assert c is not None
        c.state, c.attempts = ContactState.READY, 0
        number = c.numbers[0].e164
    return {"campaign": cid, "offer": int(got["offer_id"]), "record": record, "number": number}


def _agent_dials(f: sessionmaker[Session], r: redis_lib.Redis, w: dict[str, Any]) -> str:
    """What the agent's page does on Accept then Dial (status_page/calls.py): one commit
    that closes the offer and writes the attempt `created`."""
    q = DialQueue(r, w["campaign"])
    push.accept(f, w["offer"], AGENT, queue=q)
    return str(preview.dial(f, q, w["offer"], AGENT)["attempt_id"])


def _live_attempts(f: sessionmaker[Session]) -> list[CallAttempt]:
    with f() as s:
        q = select(CallAttempt).where(
            CallAttempt.agent_id == AGENT, CallAttempt.state != AttemptState.ENDED
        )
        return list(s.scalars(q))


def test_given_the_agents_dial_commits_between_the_free_checks_reads_then_the_agent_is_busy(
    pg_factory: sessionmaker[Session], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = pg_factory
    w = _world(f)
    r = redis_lib.Redis.from_url(redis_url)
    dialed: list[str] = []

    def after_read(fn: Callable[[Session, str], bool]) -> Callable[[Session, str], bool]:
        """The check's first read runs, then the agent's dial commits (once)."""

        def read(s: Session, agent: str) -> bool:
            got = fn(s, agent)
            if not dialed:
                dialed.append(_agent_dials(f, r, w))
            return got

        return read

    monkeypatch.setattr(dialer_mod, "has_open_offer", after_read(dialer_mod.has_open_offer))
    monkeypatch.setattr(dialer_mod, "agent_is_free", after_read(dialer_mod.agent_is_free))
    try:
        with f() as s:
            free = free_for_a_call(s, AGENT)
    finally:
        r.close()
    assert dialed, "the agent's dial was not injected"
    assert not free, "the check let a progressive call through to an agent who just dialed"
    assert [a.id for a in _live_attempts(f)] == dialed


@pytest.mark.asterisk
async def test_given_the_agents_dial_commits_after_the_free_check_when_the_bridge_dials_then_it_is_refused_and_the_record_waits(
    pg_factory: sessionmaker[Session],
    redis_url: str,
    sandbox: SandboxInfo,
    admin_ami: AmiClient,
) -> None:
    f = pg_factory
    w = _world(f)
    r = redis_lib.Redis.from_url(redis_url)
    ar = aredis.Redis.from_url(redis_url)
    ami = AmiConnection(sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret)
    server = f"race-{random.randrange(10**6)}"
    originator = Originator(ami, f, server=server, trunk=TRUNK)
    d = Dialer(f, ar, originator, AgentSessions(ami), server=server)
    token: str | None = None
    try:
        await ami.start(wait=10)
        # The bridge's check ran before the callback was offered (here: the agent has no
        # live call), and it reserved the agent.
        with f() as s:
            assert dialer_mod.agent_is_free(s, AGENT)
        token = await d.reservations.take(AGENT)
        assert token is not None
        q = d._queue(w["campaign"])
        await q.rebuild(f, utcnow())
        # Now the agent's own dial commits, then the bridge places its call.
        mine = _agent_dials(f, r, w)
        info = CampaignInfo(w["campaign"], "race", DialMode.PROGRESSIVE, None)
        placed = await d._place(info, AGENT, token)

        assert placed is Placed.BUSY
        assert [a.id for a in _live_attempts(f)] == [mine]
        with f() as s:
            rows = s.scalars(select(CallAttempt).where(CallAttempt.contact_id == w["record"]))
            assert list(rows) == [], "an attempt was written for the busy agent"
        # The record was not dialed: it waits on top of the queue for the next agent, and
        # Asterisk never saw a call to its number.
        assert await q.position(w["record"]) == 0
        assert await admin_ami.db_get("simcount", w["number"]) is None
    finally:
        if token is not None:
            await d.reservations.give_back(AGENT, token)
        await originator.stop()
        await ami.close()
        await ar.aclose()
        r.close()


RACERS = 6


def _race(f: sessionmaker[Session], contacts: list[int]) -> list[Any]:
    """One thread per contact writes an attempt for AGENT at the same instant (each in
    its own transaction and connection); what each got: an attempt id or the exception."""
    barrier = threading.Barrier(len(contacts))
    got: list[Any] = [None] * len(contacts)

    def one(i: int) -> None:
        barrier.wait(10)
        try:
            with transaction(f) as s:
                got[i] = create_attempt(s, contacts[i], agent_id=AGENT).id
        except Exception as exc:  # kept and asserted on below
            got[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(contacts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return got


def test_given_writers_for_one_agent_at_the_same_instant_then_one_attempt_and_the_rest_agent_busy(
    pg_factory: sessionmaker[Session],
) -> None:
    """Without a queue or a check in front: threads write an attempt each for one agent
    (different contacts) at once; the agent's row lock makes them take turns, and every
    one after the first sees the first's attempt."""
    f = pg_factory
    add_agent(f, AGENT)
    for _round in range(4):  # a race is won by chance: run it a few times
        got = _race(f, [add_contact(f, _number(9)) for _ in range(RACERS)])
        won = [g for g in got if isinstance(g, str)]
        assert len(won) == 1, got
        assert all(isinstance(g, AgentBusy) for g in got if g not in won), got
        assert [a.id for a in _live_attempts(f)] == won
        with transaction(f) as s:
            settle(s, won[0], CallResult.BUSY)
