"""Push preview's core on SQLite and the real local PostgreSQL, with the dial queue on the
real local Redis (db 10): a record pushed to an agent Ready on the outbound preview
channel, accepted then dialed (compliance at dial time), rejected (back to the top),
left past the campaign's push timeout (back to the top), acted on only by its own agent,
one pushed record per agent at a time.

Each test uses its own random campaign id and agent ids, so its Redis keys are its own;
they are deleted after. Times are passed as `now` instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound import live, names
from outbound.campaigns import push
from outbound.campaigns.feedback import NotAllowed
from outbound.campaigns.preview import dial, get_record, lease_owner
from outbound.commands import CommandFailed, send_command
from outbound.compliance import NotDialable
from outbound.dial_queue import DialQueue
from outbound.errors import Conflict
from outbound.model import (
    AttemptState,
    CallAttempt,
    Campaign,
    CaseEvent,
    DialMode,
    DncEntry,
    transaction,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from tests.helpers.ami import AmiClient
from tests.helpers.redis_url import redis_url
from tests.helpers.until import async_until
from tests.helpers.world import World as BaseWorld
from tests.helpers.world import make_world
from tests.integration.test_dialer_progressive import world  # noqa: F401 (fixture)

REDIS_URL = redis_url(10)
TIMEOUT_S = 5  # the test campaign's push timeout


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


class World(BaseWorld):
    """A running push preview campaign, its queue, records in queue order and agents."""

    def offer(self, offer_id: int) -> Offer:
        with self.factory() as s:
            o = s.get(Offer, offer_id)
            assert o is not None
            return o

    def first(self) -> int:
        return self.queue.peek(1)[0].contact_id

    def events(self, kind: str) -> list[CaseEvent]:
        with self.factory() as s:
            return list(s.scalars(select(CaseEvent).where(CaseEvent.kind == kind)))


@pytest.fixture
def w(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    for wd in make_world(
        World, factory, r, "+4930200001", mode=DialMode.PUSH_PREVIEW, push_timeout_s=TIMEOUT_S
    ):
        wd.contact("+4930200002")
        wd.fill()
        yield wd


def test_given_a_ready_agent_when_pushed_accepted_and_dialed_then_the_attempt_is_placed(
    w: World,
) -> None:
    agent = w.agent()
    t0 = utcnow()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id, t0)
    assert got["status"] == "record" and got["contact_id"] == w.contacts[0]
    assert got["deadline"] == (t0 + timedelta(seconds=TIMEOUT_S)).isoformat()
    assert got["case"]["contact"]["id"] == w.contacts[0]
    lease = w.queue.lease_of(w.contacts[0])
    assert lease is not None and lease.owner == lease_owner(agent)
    assert abs((lease.expires_at - t0).total_seconds() - TIMEOUT_S) <= 1

    acc = push.accept(w.factory, got["offer_id"], agent, queue=w.queue, now=t0)
    assert acc["state"] == "accepted"
    lease = w.queue.lease_of(w.contacts[0])
    assert lease is not None and (lease.expires_at - t0).total_seconds() > 60
    # accepted: the push timeout no longer applies
    assert push.expire_offers(w.factory, w.queue, t0 + timedelta(seconds=60)) == []
    assert w.offer(got["offer_id"]).state is OfferState.OPEN

    out = dial(w.factory, w.queue, got["offer_id"], agent, now=t0 + timedelta(seconds=61))
    with w.factory() as s:
        a = s.get(CallAttempt, out["attempt_id"])
        assert a is not None and a.agent_id == agent and a.contact_id == w.contacts[0]
    assert w.offer(got["offer_id"]).state is OfferState.DIALED
    assert w.queue.locate(w.contacts[0]).section == "absent"  # settled: out of the queue


def test_given_an_accepted_record_on_dnc_when_dialed_then_compliance_refuses_it(
    w: World,
) -> None:
    agent = w.agent()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    push.accept(w.factory, got["offer_id"], agent, queue=w.queue)
    with transaction(w.factory) as s:
        s.add(DncEntry(e164="+4930200001", source="test", reason="asked"))
    with pytest.raises(NotDialable):
        dial(w.factory, w.queue, got["offer_id"], agent)
    with w.factory() as s:
        assert s.scalar(select(CallAttempt.id)) is None
    assert w.offer(got["offer_id"]).state is OfferState.OPEN


def test_given_a_pushed_record_when_rejected_then_it_is_first_in_the_queue(w: World) -> None:
    agent, other = w.agent(), w.agent()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    # The other agent is pushed the next record meanwhile.
    assert (
        push.push_offer(w.factory, w.queue, other, w.campaign_id)["contact_id"] == (w.contacts[1])
    )
    out = push.reject(w.factory, w.queue, got["offer_id"], agent)
    assert out["state"] == "rejected"
    assert w.offer(got["offer_id"]).state is OfferState.REJECTED
    entry = w.queue.peek(1)[0]
    assert (entry.contact_id, entry.section) == (w.contacts[0], "top")
    assert [e.data["offer_id"] for e in w.events(push.REJECTED)] == [got["offer_id"]]
    with pytest.raises(Conflict):  # closed: neither accepted nor rejected again
        push.accept(w.factory, got["offer_id"], agent)
    with pytest.raises(Conflict):
        dial(w.factory, w.queue, got["offer_id"], agent)


def test_given_a_rejected_record_then_the_next_push_to_that_agent_is_another_record(
    w: World,
) -> None:
    a, b = w.agent(), w.agent()
    got = push.push_offer(w.factory, w.queue, a, w.campaign_id)
    push.reject(w.factory, w.queue, got["offer_id"], a)
    # A is offered the next record; the rejected one waits on top for someone else.
    again = push.push_offer(w.factory, w.queue, a, w.campaign_id)
    assert again["contact_id"] == w.contacts[1]
    assert w.first() == w.contacts[0]
    other = push.push_offer(w.factory, w.queue, b, w.campaign_id)
    assert other["contact_id"] == w.contacts[0]


def test_given_no_action_when_the_push_timeout_passes_then_the_record_is_back_on_top(
    w: World,
) -> None:
    agent = w.agent()
    t0 = utcnow()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id, t0)
    assert push.expire_offers(w.factory, w.queue, t0 + timedelta(seconds=TIMEOUT_S - 1)) == []
    assert w.offer(got["offer_id"]).state is OfferState.OPEN

    gone = push.expire_offers(w.factory, w.queue, t0 + timedelta(seconds=TIMEOUT_S))
    assert gone == [{"offer_id": got["offer_id"], "agent_id": agent, "contact_id": w.contacts[0]}]
    assert w.offer(got["offer_id"]).state is OfferState.EXPIRED
    assert w.first() == w.contacts[0] and w.queue.peek(1)[0].section == "top"
    with pytest.raises(Conflict):  # too late to accept
        push.accept(w.factory, got["offer_id"], agent)
    # the agent is free again and is pushed the same record first
    again = push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    assert again["contact_id"] == w.contacts[0] and again["offer_id"] != got["offer_id"]


def test_given_an_open_offer_when_accepting_after_the_deadline_then_refused(w: World) -> None:
    agent = w.agent()
    t0 = utcnow()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id, t0)
    with pytest.raises(Conflict, match="timed out"):
        push.accept(w.factory, got["offer_id"], agent, now=t0 + timedelta(seconds=TIMEOUT_S))
    assert w.events(push.ACCEPTED) == []


def test_given_another_agents_offer_when_accepting_or_rejecting_then_not_allowed(
    w: World,
) -> None:
    agent, other = w.agent(), w.agent()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    with pytest.raises(NotAllowed):
        push.accept(w.factory, got["offer_id"], other, queue=w.queue)
    with pytest.raises(NotAllowed):
        push.reject(w.factory, w.queue, got["offer_id"], other)
    assert w.offer(got["offer_id"]).state is OfferState.OPEN
    assert w.events(push.ACCEPTED) == [] and w.events(push.REJECTED) == []
    lease = w.queue.lease_of(w.contacts[0])
    assert lease is not None and lease.owner == lease_owner(agent)
    assert w.first() == w.contacts[1]


def test_given_an_agent_with_an_open_offer_then_no_second_record_is_pushed(w: World) -> None:
    agent = w.agent()
    got = push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    with pytest.raises(Conflict, match="already has an open record"):
        push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    with w.factory() as s:
        assert push.pushable(s, [agent]) == []
        assert s.scalar(select(Offer.id).where(Offer.id != got["offer_id"])) is None
    assert w.first() == w.contacts[1]  # the second record still waits


def test_given_an_agent_not_ready_on_the_preview_channel_then_nothing_is_pushed(
    w: World,
) -> None:
    voice_only = w.agent(ready=True, preview=False)
    with pytest.raises(Conflict, match="outbound preview channel"):
        push.push_offer(w.factory, w.queue, voice_only, w.campaign_id)
    stopped = w.agent()
    live.set_preview_stopped(w.r, stopped, True)
    with pytest.raises(Conflict, match="done and stop"):
        push.push_offer(w.factory, w.queue, stopped, w.campaign_id)
    assert w.first() == w.contacts[0]
    with w.factory() as s:
        assert s.scalar(select(Offer.id)) is None


def test_given_done_and_stop_when_the_agent_gets_a_record_then_pushing_resumes_at_once(
    w: World,
) -> None:
    agent = w.agent()
    live.set_preview_stopped(w.r, agent, True)  # as done_and_stop leaves it
    with pytest.raises(Conflict, match="done and stop"):
        push.push_offer(w.factory, w.queue, agent, w.campaign_id)
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    assert got["status"] == "record" and got["contact_id"] == w.contacts[0]
    assert not live.preview_stopped(w.r, agent)
    # Asking again shows the same pushed record, not a second one.
    again = get_record(w.factory, w.queue, agent, w.campaign_id)
    assert again["offer_id"] == got["offer_id"]
    assert w.first() == w.contacts[1]


# ---------------------------------------------------------------- on the sandbox Asterisk


@pytest.mark.asterisk
async def test_given_a_ready_agent_then_the_bridge_pushes_a_record_and_never_dials_it(
    world: dict[str, Any],  # noqa: F811 (the progressive test's bridge, campaign switched)
    admin_ami: AmiClient,
) -> None:
    f, r, server, cid = world["factory"], world["redis"], world["server"], world["campaign"]
    ready, lazy, _ = world["agents"]
    with transaction(f) as s:  # no agent is Ready yet: nothing was dialed as progressive
        c = s.get(Campaign, cid)
        assert c is not None
        c.mode, c.push_timeout_s = DialMode.PUSH_PREVIEW, 2
    start = r.xadd(names.KEY_EVENTS, {"event": "test-mark"})

    def cmd(kind: str, **args: object) -> dict[str, Any]:
        return send_command(r, server, kind, dict(args), 20)

    for a in (ready, lazy):
        await asyncio.to_thread(cmd, "login", agent_id=a)
    await asyncio.to_thread(cmd, "ready", agent_id=ready)

    def open_offers() -> list[Offer]:
        with f() as s:
            return list(s.scalars(select(Offer).where(Offer.state == OfferState.OPEN)))

    # Then the Ready agent is pushed the first dialable record (the night one is refused).
    first = (await async_until(lambda: open_offers(), 15))[0]
    assert first.agent_id == ready and first.contact_id == world["contacts"]["human0"]

    def pushed_event() -> bool:
        return any(
            fields.get(b"event") == b"offer_pushed"
            and fields.get(b"agent_id") == ready.encode()
            and fields.get(b"offer_id") == str(first.id).encode()
            for _, fields in r.xrange(names.KEY_EVENTS, min=start)
        )

    # The page hears of it on the events stream.
    await async_until(pushed_event, 5, message="no offer_pushed event")
    # When nobody acts within the push timeout: expired, back on top, pushed again.
    again = await async_until(
        lambda: [o for o in open_offers() if o.id != first.id], 10, message="not pushed again"
    )
    assert again[0].contact_id == first.contact_id and again[0].agent_id == ready
    with f() as s:
        expired = s.get(Offer, first.id)
        assert expired is not None and expired.state is OfferState.EXPIRED
    # When the agent accepts and dials: the attempt is written (compliance inside).
    q = DialQueue(r, cid)
    push.accept(f, again[0].id, ready, queue=q)
    out = dial(f, q, again[0].id, ready)
    assert out["contact_id"] == first.contact_id
    # The bridge itself dialed nothing: no call in Asterisk for any number, nothing for
    # the Not-Ready agent.
    await asyncio.sleep(1.5)
    for n in world["numbers"].values():
        assert await admin_ami.db_get("simcount", n) is None
    with f() as s:
        assert s.scalar(select(Offer.id).where(Offer.agent_id == lazy)) is None
        assert [a.id for a in s.scalars(select(CallAttempt))] == [out["attempt_id"]]
        assert s.get(CallAttempt, out["attempt_id"]).state is AttemptState.CREATED  # type: ignore[union-attr]
    # The agent's dial reaches the bridge: it claims that attempt and originates it once;
    # Asterisk sees one call to the number, under the attempt's id.
    sent = await asyncio.to_thread(
        cmd, "dial", contact_id=out["contact_id"], agent_id=ready, attempt_id=out["attempt_id"]
    )
    assert sent["attempt_id"] == out["attempt_id"]
    number = out["number"]
    await async_until(lambda: admin_ami.db_get("simcount", number), 15, message="not dialed")
    await admin_ami.wait_event("Newchannel", 15, Uniqueid=out["attempt_id"])
    # A second dial command for the same attempt is refused: nothing twice.
    with pytest.raises(CommandFailed, match="already dialed"):
        await asyncio.to_thread(
            cmd, "dial", contact_id=out["contact_id"], agent_id=ready, attempt_id=out["attempt_id"]
        )
    await asyncio.sleep(1)
    assert await admin_ami.db_get("simcount", number) == "1"
    with f() as s:
        assert len(list(s.scalars(select(CallAttempt)))) == 1
