"""Several dialer workers on one campaign, on PostgreSQL (SPEC issue 5: "never dialed twice
at once"): three Bridges with the dialer on share a progressive campaign, its Redis dial
queue and its database, on the sandbox Asterisk. Each has its own server name (see
tests/helpers/hive.py for why); the third starts late and adopts every agent's session on
its first AMI resync, so all three compete for the same agents (HA workers), and the first
loses its AMI connection half-way (resync, queue rebuild) while the others dial on.

Asterisk keeps the evidence: DB(simcount/<number>) and DB(simdup/<number>) (calls that
reached a number, and calls that reached it while another was up), and the
ConfbridgeJoin / ConfbridgeLeave events of the agents' conferences. PostgreSQL must
explain every contact's state by its attempts and the campaign's treatments.

And the database's own guard, without any queue in front of it: threads that dial one
contact at the same instant get one attempt row; the others are refused, each told which
attempt holds the contact (the contact row lock serializes them)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from agi_scripts.routes import register
from agi_scripts.server import AgiServer
from ami_bridge.sessions import SessionState
from outbound import live, names
from outbound.campaigns.attempts import create_attempt, settle
from outbound.compliance import NotDialable
from outbound.errors import Conflict
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    Contact,
    ContactState,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from outbound.sandbox import SandboxInfo
from tests.faults.proxy import FaultProxy
from tests.helpers import hive
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until

REDIS_URL = redis_url(4)
BUSY_RETRY_S = 12  # busy: retried after 12 s, two attempts at most
AGENTS = 6
# Last digits (the sandbox's scenario): 0-3 person, 4 machine, 5 busy, 6 no answer,
# 7 congestion, 9 answers and hangs up at once. 30 contacts.
DIGITS = [0, 1, 2, 3] * 3 + [4] * 4 + [5] * 5 + [6] * 3 + [7] * 3 + [9] * 3


@pytest.fixture
def pg_factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated PostgreSQL database of its own (as tests/helpers/db.py migrates SQLite)."""
    engine = make_engine(pg_url, pool_size=20)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


def _conference_log(admin: AmiClient, agent: str, ids: set[str]) -> list[tuple[str, str]]:
    """(join / leave, attempt id) of contacts in the agent's conference, in order."""
    conf = names.agent_bridge(agent)
    return [
        ("join" if e["Event"] == "ConfbridgeJoin" else "leave", e["Uniqueid"])
        for e in admin.events
        if e.get("Event") in ("ConfbridgeJoin", "ConfbridgeLeave")
        and e.get("Conference") == conf
        and e.get("Uniqueid") in ids
    ]


async def _run_campaign(
    h: hive.Hive, proxy: FaultProxy, cid: int, agent_ids: list[str]
) -> tuple[list[str], list[str]]:
    """Three workers dial the campaign until every contact is final or rescheduled; the
    first one's AMI connection is cut once half-way. Returns the attempts marked done
    (wrap-up ended) and the refusals met doing so."""
    w1 = await h.start("w1", ami_port=proxy.port)
    w2 = await h.start("w2")
    await h.login_ready(w1, agent_ids[: AGENTS // 2])
    await h.login_ready(w2, agent_ids[AGENTS // 2 :])
    w3 = await h.start("w3")  # its first resync adopts every agent's session

    def adopted() -> bool:
        sessions = [w3.bridge.sessions.session(a) for a in agent_ids]
        return all(s is not None and s.state is SessionState.UP for s in sessions)

    await async_until(adopted, 15, message="the late worker adopted every session")
    # Adopting a session does not make its agent Not Ready.
    for a in agent_ids:
        assert h.r.hget(live.agent_key(a), "ready_voice") == b"1", a
    stop = asyncio.Event()
    marker = asyncio.ensure_future(hive.end_wrap_ups(h.factory, stop))
    try:
        await async_until(lambda: len(hive.attempts(h.factory, cid)) >= 10, 90, interval=0.3)
        connects = w1.bridge.ami.connects
        proxy.cut_all()  # the first worker reconnects: resync and queue rebuild
        await async_until(lambda: w1.bridge.ami.connects > connects, 30, message="w1 back")
        await async_until(
            lambda: hive.settled(h.factory, cid),
            300,
            interval=1.0,
            message="every contact final or rescheduled",
        )
    finally:
        stop.set()
        got = await asyncio.wait_for(marker, 30)
    return got


@pytest.mark.asterisk
@pytest.mark.timeout(600)
async def test_given_three_workers_on_one_campaign_then_no_contact_and_no_agent_in_two_calls(
    sandbox: SandboxInfo,
    pg_factory: sessionmaker[Session],
    tmp_path: Path,
    admin_ami: AmiClient,
) -> None:
    f = pg_factory
    cid = hive.campaign(f, BUSY_RETRY_S)
    digits = random.sample(DIGITS, len(DIGITS))
    numbers = hive.contacts(f, cid, digits)
    agent_ids = hive.agents(f, cid, AGENTS)
    agi = AgiServer("127.0.0.1", sandbox.agi_port, header_timeout=5, answer_timeout=30)
    register(agi, f)
    await agi.start()
    proxy = FaultProxy(sandbox.ami_port)
    await proxy.start()
    h = hive.Hive(f, sandbox, REDIS_URL, tmp_path)
    try:
        marked, refused = await _run_campaign(h, proxy, cid, agent_ids)
    finally:
        await h.stop(cid, agent_ids)
        await agi.close()
        await proxy.stop()

    assert refused == []
    rows = hive.attempts(f, cid)
    by_contact: dict[int, list[CallAttempt]] = {}
    for a in rows:
        by_contact.setdefault(a.contact_id, []).append(a)
    # Asterisk: each number reached exactly as often as its attempts were sent, never
    # while another call to it was up; a contact final after one call, reached once.
    contacts = hive.contact_rows(f, cid)
    for contact_id, number in numbers.items():
        sent = [a for a in by_contact[contact_id] if not _never_sent(a)]
        count = await admin_ami.db_get("simcount", number)
        assert int(count or 0) == len(sent), f"{number}: {count} calls, {len(sent)} attempts"
        assert await admin_ami.db_get("simdup", number) is None, f"{number} in two calls"
        if contacts[contact_id].state is ContactState.DONE and sent[0].result in (
            CallResult.ANSWERED,
        ):
            assert len(sent) == 1
    # Asterisk: one contact at a time in each agent's conference, and the contact in the
    # conference of the agent its attempt names.
    ids = {a.id for a in rows}
    for agent in agent_ids:
        inside: set[str] = set()
        for what, uid in _conference_log(admin_ami, agent, ids):
            inside = inside | {uid} if what == "join" else inside - {uid}
            assert len(inside) <= 1, f"two contacts in agent {agent}'s conference at once"
    connected = [a for a in rows if a.connected_at is not None]
    assert connected, "no call reached an agent"
    for a in connected:
        joins = admin_ami.find_events("ConfbridgeJoin", Uniqueid=a.id)
        assert [e["Conference"] for e in joins] == [names.agent_bridge(a.agent_id or "")]
    # The database: every contact's state explained by its attempts and treatments; no
    # contact and no agent with two attempts whose lives (created .. ended) overlap.
    assert hive.unexplained(f, cid, by_contact) == []
    assert hive.overlaps(rows, lambda a: str(a.contact_id)) == []
    assert hive.overlaps(rows, lambda a: a.agent_id) == []
    assert all(a.agent_id in agent_ids for a in rows)
    # The run really had the workers compete: every one dialed, and some agent was given
    # calls by two of them; every connected call's wrap-up was ended by the test.
    servers = {a.server for a in rows}
    assert len(servers) == 3, servers
    per_agent = {ag: {a.server for a in rows if a.agent_id == ag} for ag in agent_ids}
    assert any(len(s) > 1 for s in per_agent.values()), per_agent
    assert {a.id for a in connected} <= set(marked)


def _never_sent(a: CallAttempt) -> bool:
    """An attempt whose Originate never left the bridge (AMI down at that moment)."""
    return a.result is CallResult.CANCELLED and str(a.audit.get("settled", "")).startswith(
        "not sent"
    )


# ------------------------------------------------------------ the database alone

RACERS = 8


def _race(factory: sessionmaker[Session], contact_id: int, agents: list[str]) -> list[Any]:
    """RACERS threads call create_attempt for one contact at the same instant (each in its
    own transaction and connection); what each got: an attempt id or the exception."""
    barrier = threading.Barrier(RACERS)
    got: list[Any] = [None] * RACERS

    def one(i: int) -> None:
        barrier.wait(10)
        try:
            with transaction(factory) as s:
                got[i] = create_attempt(s, contact_id, agent_id=agents[i]).id
        except Exception as exc:  # kept and asserted on below
            got[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return got


def test_given_threads_dialing_one_contact_at_once_on_postgresql_then_one_attempt_the_rest_refused(
    pg_url: str,
) -> None:
    engine: Engine = make_engine(pg_url, pool_size=RACERS + 2)
    upgrade(engine)
    factory = session_factory(engine)
    try:
        for _round in range(5):  # a race is won by chance: run it a few times
            # Free agents each round: an agent already in a live attempt is refused too
            # (AgentBusy, tests/integration/test_dialer_agent_race.py).
            agents = [add_agent(factory, str(100 + _round * RACERS + i)) for i in range(RACERS)]
            cid = add_contact(factory, f"+4930555{random.randrange(10**5, 10**6)}")
            got = _race(factory, cid, agents)
            won = [g for g in got if isinstance(g, str)]
            lost = [g for g in got if not isinstance(g, str)]
            assert len(won) == 1, got
            with factory() as s:
                q = select(CallAttempt).where(CallAttempt.contact_id == cid)
                rows = list(s.scalars(q))
                contact = s.get(Contact, cid)
            assert [r.id for r in rows] == won
            assert rows[0].state is AttemptState.ORIGINATING and rows[0].attempt_no == 1
            assert contact is not None and contact.attempts == 1
            # Each loser waited for the winner's commit (the contact's row lock), then
            # was refused by compliance naming the attempt that holds the contact.
            for exc in lost:
                assert isinstance(exc, NotDialable), repr(exc)
                assert isinstance(exc, Conflict)
                assert f"already in call attempt {won[0]}" in str(exc)
    finally:
        engine.dispose()


def test_given_an_attempt_read_before_when_another_settles_it_first_then_settle_says_ended(
    engine: Engine,
) -> None:
    """Two settles of one attempt (a bridge's hangup handler read the row, unlocked, and
    another path settled it meanwhile): the second sees it ended under its lock, the
    first result and its treatment stand."""
    f = session_factory(engine)
    cid = add_contact(f, f"+4930555{random.randrange(10**5, 10**6)}")
    with transaction(f) as s:
        aid = create_attempt(s, cid).id
    with transaction(f) as first:
        seen = first.get(CallAttempt, aid)  # read, not locked (and kept, as the handler does)
        assert seen is not None and seen.state is AttemptState.ORIGINATING
        with transaction(f) as other:
            assert settle(other, aid, CallResult.BUSY)
        assert not settle(first, aid, CallResult.NO_ANSWER)
    with f() as s:
        a, c = s.get(CallAttempt, aid), s.get(Contact, cid)
        assert a is not None and c is not None
        assert (a.state, a.result, c.last_result) == (
            AttemptState.ENDED,
            CallResult.BUSY,
            CallResult.BUSY,
        )
