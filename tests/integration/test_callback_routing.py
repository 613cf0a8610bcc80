"""Routing fired callbacks to agents (outbound.campaigns.callback_offers) on SQLite and the
real PostgreSQL, live agent state in the real Redis: a personal callback reaches only its
agent, then the pool once the grace period is over (or keeps waiting); a pooled one the
longest-Ready free agent; a reject or "call later" sends it to another agent, an offer
left too long is routed again; accepting and dialing writes a callback attempt and closes
the callback; a contact who may not be called any more sends it back to pending. Times
are passed as `now` instead of sleeping."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound import live
from outbound.campaigns import callback_offers, push
from outbound.campaigns.preview import decline, dial
from outbound.model import (
    CallAttempt,
    Callback,
    CallbackState,
    Contact,
    ContactState,
    DialMode,
    transaction,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from tests.helpers.redis_url import redis_url
from tests.helpers.world import World, make_world

REDIS_URL = redis_url(10)
GRACE_S = 300
NOW = utcnow()


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _world(factory: sessionmaker[Session], r: redis.Redis, **campaign: Any) -> Iterator[World]:
    yield from make_world(
        World,
        factory,
        r,
        "+4930300001",
        "Ada Example",
        mode=campaign.pop("mode", DialMode.PROGRESSIVE),
        callback_grace_s=GRACE_S,
        push_timeout_s=30,
        **campaign,
    )


@pytest.fixture
def w(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    yield from _world(factory, r)


def fired(w: World, *, personal_for: str | None = None, ago: float = 1.0) -> int:
    """A callback the scheduler fired `ago` seconds ago (state queued), on the record."""
    contact = w.contacts[0]
    with transaction(w.factory) as s:
        c = s.get(Contact, contact)
        assert c is not None
        c.state = ContactState.CALLBACK
        cb = Callback(
            campaign_id=w.campaign_id,
            contact_id=contact,
            due_at=NOW - timedelta(seconds=ago + 1),
            personal=personal_for is not None,
            agent_id=personal_for,
            state=CallbackState.QUEUED,
            fired_at=NOW - timedelta(seconds=ago),
        )
        s.add(cb)
        s.flush()
        return cb.id


def route(w: World, after_s: float = 0.0) -> list[tuple[str, int]]:
    got = callback_offers.route(w.factory, w.r, w.campaign_id, NOW + timedelta(seconds=after_s))
    return [(g["agent_id"], g["callback_id"]) for g in got]


def offers(w: World) -> list[tuple[str | None, OfferState]]:
    with w.factory() as s:
        return [(o.agent_id, o.state) for o in s.scalars(select(Offer).order_by(Offer.id))]


def test_given_a_personal_callback_then_only_its_agent_gets_it(w: World) -> None:
    other = w.agent()  # Ready first: longest Ready, yet not the callback's agent
    mine = w.agent()
    cb = fired(w, personal_for=mine)
    assert route(w) == [(mine, cb)]
    assert route(w) == []  # shown: not offered twice
    with w.factory() as s:
        o = s.scalar(select(Offer).where(Offer.callback_id == cb))
        assert o is not None and o.agent_id == mine and o.e164 == "+4930300001"
    assert other not in {a for a, _ in offers(w)}


def test_given_its_agent_away_then_the_pool_gets_it_after_the_grace_period(w: World) -> None:
    away = w.agent(ready=False)
    pool = w.agent()
    cb = fired(w, personal_for=away)
    assert route(w) == []  # within the grace period: it waits for its agent
    assert route(w, after_s=GRACE_S + 1) == [(pool, cb)]


def test_given_fallback_wait_then_a_personal_callback_waits_for_its_agent(
    factory: sessionmaker[Session], r: redis.Redis
) -> None:
    for w in _world(factory, r, callback_fallback="wait"):
        away = w.agent(ready=False)
        w.agent()
        cb = fired(w, personal_for=away)
        assert route(w, after_s=GRACE_S * 10) == []
        r.hset(live.agent_key(away), mapping=live.agent_fields("up", ready=True))
        assert route(w, after_s=GRACE_S * 10) == [(away, cb)]


def test_given_a_pooled_callback_when_rejected_or_declined_then_another_agent_gets_it(
    w: World,
) -> None:
    a, b, c = w.agent(), w.agent(), w.agent()
    cb = fired(w)
    assert route(w) == [(a, cb)]
    first = _open(w, a)
    push.reject(w.factory, w.queue, first, a)
    assert w.queue.peek(5) == []  # not into the campaign's list: back to routing
    assert route(w) == [(b, cb)]
    decline(w.factory, w.queue, _open(w, b), b, "later")
    assert route(w) == [(c, cb)]
    assert offers(w) == [
        (a, OfferState.REJECTED),
        (b, OfferState.CALL_LATER),
        (c, OfferState.OPEN),
    ]


def test_given_an_offer_not_taken_in_time_then_it_is_routed_again(w: World) -> None:
    a = w.agent()
    cb = fired(w)
    assert route(w) == [(a, cb)]
    assert route(w, after_s=10) == []
    assert route(w, after_s=31) == [(a, cb)]  # expired, and A is free again
    assert [s for _, s in offers(w)] == [OfferState.EXPIRED, OfferState.OPEN]


def test_given_busy_agents_then_nobody_is_offered_the_callback(w: World) -> None:
    a = w.agent()  # looking at another record: not free
    with transaction(w.factory) as s:
        s.add(Offer(campaign_id=w.campaign_id, contact_id=w.contact("+4930300002"), agent_id=a))
    fired(w)
    assert route(w) == []


def test_given_an_accepted_callback_when_dialed_then_a_callback_attempt_closes_it(
    w: World,
) -> None:
    a = w.agent()
    cb = fired(w, personal_for=a)
    route(w)
    oid = _open(w, a)
    got = push.accept(w.factory, oid, a, queue=w.queue, now=NOW)
    assert got["dial_now"] is True  # progressive: the call is placed at once
    assert got["case"]["origin"] == "Personal callback"
    out = dial(w.factory, w.queue, oid, a, now=NOW)
    with w.factory() as s:
        att = s.get(CallAttempt, out["attempt_id"])
        assert att is not None and att.is_callback and att.agent_id == a
        row = s.get(Callback, cb)
        assert row is not None and row.state is CallbackState.DONE
    assert route(w) == []


def test_given_a_contact_who_may_not_be_called_now_then_the_callback_waits_pending(
    w: World,
) -> None:
    w.agent()
    cb = fired(w)
    with transaction(w.factory) as s:
        c = s.get(Contact, w.contacts[0])
        assert c is not None
        c.timezone = _night_zone()
    assert route(w) == []
    with w.factory() as s:
        row = s.get(Callback, cb)
        assert row is not None and row.state is CallbackState.PENDING
        assert row.due_at > NOW  # the contact's next calling hours


def _open(w: World, agent: str) -> int:
    with w.factory() as s:
        oid = s.scalar(
            select(Offer.id).where(Offer.agent_id == agent, Offer.state == OfferState.OPEN)
        )
        assert oid is not None
        return oid


def _night_zone() -> str:
    hour = NOW.hour
    offset = (2 - hour + 12) % 24 - 12
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"
