"""Unclaimed preview attempts expire (ami_bridge/originator.py expire_created), on SQLite
and PostgreSQL with the sandbox Asterisk: an agent's preview dial commits its attempt
`created` and the bridge's `dial` command claims it for its one Originate. An attempt no
command claimed within the deadline is ended (CANCELLED, the audit says why), so its
contact is dialable again and its agent free; a fresh one is left alone; a claim that
comes after the expiry is refused and Asterisk never sees a call for it; a claim and an
expiry racing each other end in exactly one of the two outcomes. Asterisk's evidence: the
calls that reached a number (DB(simcount/<number>)) and CDR rows (userfield = attempt)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ami_bridge.connection import AmiConnection
from ami_bridge.originator import Originator
from outbound.campaigns.attempts import create_attempt
from outbound.campaigns.interaction import agent_is_free
from outbound.compliance import why
from outbound.errors import Conflict
from outbound.model import (
    AttemptState,
    CallAttempt,
    CallResult,
    Contact,
    ContactState,
    transaction,
    utcnow,
)
from outbound.sandbox import SandboxInfo
from tests.helpers.ami import AmiClient
from tests.helpers.db import add_agent, add_contact
from tests.helpers.until import async_until

TTL_S = 60.0


@pytest.fixture
async def originator(
    sandbox: SandboxInfo, factory: sessionmaker[Session]
) -> AsyncIterator[tuple[Originator, list[dict[str, Any]]]]:
    """An Originator of a server of its own on the sandbox, and the call events it told."""
    events: list[dict[str, Any]] = []
    ami = AmiConnection(sandbox.ami_host, sandbox.ami_port, sandbox.ami_user, sandbox.ami_secret)
    o = Originator(
        ami,
        factory,
        server=f"exp-{uuid.uuid4().hex[:6]}",
        trunk="Local/${NUMBER}@sim-contacts",
        ring_timeout=15,
        answered_context="sim-hold",
        on_call_event=events.append,
    )
    o.start()
    await ami.start(wait=15)
    try:
        yield o, events
    finally:
        await o.stop()
        await ami.close()


def _number(last_digit: int) -> str:
    return f"+4930{random.randrange(10**7, 10**8)}{last_digit}"


def _created(
    factory: sessionmaker[Session], agent: str, number: str, age_s: float = 0
) -> tuple[int, str]:
    """A contact and its attempt in state `created` (as an agent's preview dial writes
    it), written `age_s` seconds ago."""
    cid = add_contact(factory, number)
    with transaction(factory) as s:
        a = create_attempt(s, cid, agent_id=agent, state=AttemptState.CREATED)
        a.created_at = utcnow() - timedelta(seconds=age_s)
        return cid, a.id


def _row(factory: sessionmaker[Session], cls: Any, key: Any) -> Any:
    with factory() as s:
        got = s.get(cls, key)
        assert got is not None
        return got


async def _never_reached(
    admin: AmiClient, cdr_rows: Callable[[], list[dict[str, str]]], aid: str, number: str
) -> None:
    """Asterisk has no channel, no CDR row and no arrival for this attempt's call."""
    _, channels = await admin.collect("CoreShowChannels")
    assert aid not in {c.get("Uniqueid") for c in channels}
    assert [r for r in cdr_rows() if r["userfield"] == aid] == []
    assert await admin.db_get("simcount", number) is None


@pytest.mark.asterisk
async def test_given_an_unclaimed_attempt_past_its_deadline_then_cancelled_and_a_late_claim_refused(
    factory: sessionmaker[Session],
    originator: tuple[Originator, list[dict[str, Any]]],
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
) -> None:
    o, events = originator
    old_agent, fresh_agent = add_agent(factory, "71"), add_agent(factory, "72")
    old_number, fresh_number = _number(0), _number(5)
    old_contact, old = _created(factory, old_agent, old_number, age_s=TTL_S + 30)
    fresh_contact, fresh = _created(factory, fresh_agent, fresh_number, age_s=TTL_S - 30)

    assert await o.expire_created(TTL_S) == [old]
    assert await o.expire_created(TTL_S) == []  # ended once

    # The old one: ended, cancelled, the audit says why; the event told the outside.
    a = _row(factory, CallAttempt, old)
    assert (a.state, a.result) == (AttemptState.ENDED, CallResult.CANCELLED)
    assert a.audit["settled"].startswith("expired: not claimed for its Originate within 60 s")
    assert a.audit["expired"]["after_s"] >= TTL_S + 30
    assert a.originated_at is None
    assert {"event": "call_ended", "attempt_id": old, "result": "cancelled"} in events
    # Its contact: the treatment of a cancelled attempt (retry after a minute), no live
    # attempt any more, so dialable again then; its agent is free.
    c = _row(factory, Contact, old_contact)
    assert c.state is ContactState.READY and c.last_result is CallResult.CANCELLED
    assert a.ended_at is not None and c.next_at == a.ended_at + timedelta(minutes=1)
    with factory() as s:
        assert why(s, old_contact, c.next_at + timedelta(seconds=1), agent_reserved=True).allowed
        assert agent_is_free(s, old_agent)
    # The fresh one is left alone.
    assert _row(factory, CallAttempt, fresh).state is AttemptState.CREATED

    # A claim of the expired attempt is refused; Asterisk never sees a call for it.
    with pytest.raises(Conflict, match="expired unclaimed and was cancelled"):
        await o.dial(old_contact, attempt_id=old)
    # A claim of the fresh one is sent (a busy number): what "seen by Asterisk" looks like.
    assert await o.dial(fresh_contact, attempt_id=fresh) == fresh
    await async_until(lambda: [r for r in cdr_rows() if r["userfield"] == fresh], 20)
    assert await admin_ami.db_get("simcount", fresh_number) == "1"
    await async_until(lambda: _row(factory, CallAttempt, fresh).result is CallResult.BUSY, 20)
    await _never_reached(admin_ami, cdr_rows, old, old_number)
    assert _row(factory, CallAttempt, old).state is AttemptState.ENDED


RACES = 8


@pytest.mark.asterisk
async def test_given_a_claim_racing_the_expiry_then_exactly_one_of_them_wins(
    factory: sessionmaker[Session],
    originator: tuple[Originator, list[dict[str, Any]]],
    admin_ami: AmiClient,
    cdr_rows: Callable[[], list[dict[str, str]]],
) -> None:
    o, _events = originator
    numbers: dict[str, tuple[int, str]] = {}
    for i in range(RACES):
        agent = add_agent(factory, str(80 + i))
        number = _number(5)  # busy: a claimed call ends by itself
        cid, aid = _created(factory, agent, number, age_s=TTL_S + 1)
        numbers[aid] = (cid, number)

    async def claim(aid: str) -> str | Exception:
        await asyncio.sleep(random.uniform(0, 0.03))  # some before the expiry, some after
        try:
            return await o.dial(numbers[aid][0], attempt_id=aid)
        except Conflict as exc:
            return exc

    # Every claim and one expiry round start together.
    ended, *outcomes = await asyncio.gather(
        o.expire_created(TTL_S), *(claim(aid) for aid in numbers)
    )
    assert isinstance(ended, list)
    expired, claims = set(ended), dict(zip(numbers, outcomes, strict=True))

    for aid, outcome in claims.items():
        cid, number = numbers[aid]
        if aid in expired:  # the expiry won: the claim was refused, nothing sent
            assert isinstance(outcome, Conflict), outcome
            a = _row(factory, CallAttempt, aid)
            assert (a.state, a.result, a.originated_at) == (
                AttemptState.ENDED,
                CallResult.CANCELLED,
                None,
            )
            await _never_reached(admin_ami, cdr_rows, aid, number)
        else:  # the claim won: sent once, never cancelled by the expiry
            assert outcome == aid

            def settled(aid: str = aid) -> bool:
                return _row(factory, CallAttempt, aid).result is not None

            await async_until(settled, 20)
            a = _row(factory, CallAttempt, aid)
            assert a.result is CallResult.BUSY and "expired" not in a.audit
            assert await admin_ami.db_get("simcount", number) == "1"
            assert [r for r in cdr_rows() if r["userfield"] == aid]
    # Nothing is left unclaimed and live.
    assert await o.expire_created(TTL_S) == []
