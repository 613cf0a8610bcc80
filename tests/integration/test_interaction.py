"""The interaction core on SQLite and the real local PostgreSQL, with the dial queue on the
real local Redis (db 6): preview (get record, caller ID, dial, decline later / do not
call), the Origin field through the states, case information, mark done, done and stop,
and the free / wrap-up contract with the dialing loop.

Each test uses its own random campaign id and agent ids, so its Redis keys are its own;
they are deleted after. The AMI bridge's part (answer, connect, hang-up) is played by
`outbound.campaigns.attempts.advance` / `settle`, which is what the bridge calls.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from outbound import live
from outbound.campaigns.attempts import advance, create_attempt, settle
from outbound.campaigns.interaction import (
    CALLBACK_ORIGIN,
    CONNECTING_ORIGIN,
    PERSONAL_CALLBACK_ORIGIN,
    IllegalInteraction,
    NotAllowed,
    agent_is_free,
    agents_in_wrapup,
    case_info,
    done_and_stop,
    mark_done,
    record_dtmf,
)
from outbound.campaigns.preview import choose_caller_id, decline, dial, get_record, lease_owner
from outbound.compliance import NotDialable, why
from outbound.dial_queue import DialQueue
from outbound.errors import Conflict, Invalid, NotFound
from outbound.model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Callback,
    CallResult,
    Campaign,
    CaseEvent,
    Contact,
    ContactState,
    DialMode,
    DncEntry,
    PhoneNumber,
    PhoneType,
    make_engine,
    session_factory,
    transaction,
    upgrade,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from tests.helpers.db import add_agent, add_contact

REDIS_URL = "redis://127.0.0.1:6379/6"
CALLER_IDS = ["+4930111111", "+4930222222"]


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    e = make_engine(db_url)
    upgrade(e)
    yield session_factory(e)
    e.dispose()


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@dataclass
class World:
    """One campaign with its queue, its records (in queue order) and Ready member agents."""

    factory: sessionmaker[Session]
    r: redis.Redis
    campaign_id: int
    queue: DialQueue
    contacts: list[int] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)

    def agent(self, ready: bool = True, member: bool = True) -> str:
        agent_id = str(random.randrange(10**9, 10**10))
        add_agent(self.factory, agent_id)
        if member:
            with transaction(self.factory) as s:
                s.add(AgentCampaign(agent_id=agent_id, campaign_id=self.campaign_id))
        self.r.hset(live.agent_key(agent_id), mapping=live.agent_fields("up", ready=ready))
        self.agents.append(agent_id)
        return agent_id

    def contact(self, number: str, name: str = "", **kw: Any) -> int:
        cid = add_contact(self.factory, number, campaign=f"c{self.campaign_id}", **kw)
        with transaction(self.factory) as s:
            c = s.get(Contact, cid)
            assert c is not None
            c.name = name
            c.created_at = utcnow() - timedelta(minutes=10 - len(self.contacts))
        self.contacts.append(cid)
        return cid

    def fill(self) -> None:
        self.queue.rebuild(self.factory, utcnow())

    def row(self, cls: Any, key: Any) -> Any:
        with self.factory() as s:
            return s.get(cls, key)

    def case(self, item_id: Any, cls: Any = CallAttempt) -> dict[str, Any]:
        with self.factory() as s:
            return case_info(s, s.get(cls, item_id))


def _world(
    factory: sessionmaker[Session], r: redis.Redis, mode: DialMode, **campaign: Any
) -> Iterator[World]:
    cid = random.randrange(10**6, 10**8)
    w = World(factory, r, cid, DialQueue(r, cid))
    w.contact("+4930100001", "Anna Alt", mode=mode, id=cid, **campaign)
    try:
        yield w
    finally:
        w.queue.drop()
        for a in w.agents:
            r.delete(live.agent_key(a))


@pytest.fixture
def w(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    """A preview campaign asking for a caller ID, with required disposition codes; a
    code "call_again" retries in 30 minutes."""
    yield from _world(
        factory,
        r,
        DialMode.PREVIEW,
        caller_ids=CALLER_IDS,
        ask_caller_id=True,
        disposition_codes=["sale", "no_interest", "call_again"],
        disposition_required=True,
        treatments={"call_again": {"action": "retry", "delay_min": 30}},
    )


@pytest.fixture
def prog(factory: sessionmaker[Session], r: redis.Redis) -> Iterator[World]:
    """A progressive campaign without disposition codes."""
    yield from _world(factory, r, DialMode.PROGRESSIVE)


def _connect(factory: sessionmaker[Session], attempt_id: str, end: bool = False) -> None:
    """What the bridge does when it sends the agent's dial (claims the `created` attempt),
    the contact answers and joins the agent (and hangs up)."""
    with transaction(factory) as s:
        a = s.get(CallAttempt, attempt_id)
        assert a is not None
        if a.state is AttemptState.CREATED:
            advance(a, "send")
        advance(a, "answer")
        advance(a, "connect")
    if end:
        with transaction(factory) as s:
            settle(s, attempt_id, CallResult.ANSWERED)


def _snapshot(w: World) -> dict[str, Any]:
    """Everything an action could change: rows and the queue."""
    with w.factory() as s:
        return {
            "offers": [
                (o.id, o.state, o.agent_id, o.caller_id, o.attempt_id)
                for o in s.scalars(select(Offer).order_by(Offer.id))
            ],
            "attempts": [
                (a.id, a.state, a.disposition, a.caller_id)
                for a in s.scalars(select(CallAttempt).order_by(CallAttempt.id))
            ],
            "contacts": [
                (c.id, c.state, c.next_at) for c in s.scalars(select(Contact).order_by(Contact.id))
            ],
            "events": s.scalar(select(func.count()).select_from(CaseEvent)),
            "dnc": s.scalar(select(func.count()).select_from(DncEntry)),
            "queue": [(e.contact_id, e.section) for e in w.queue.peek(50)],
            "leases": {c: w.queue.lease_of(c) for c in w.contacts},
        }


def _preview_and_dial(w: World, agent: str) -> tuple[int, str]:
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    attempt = dial(w.factory, w.queue, got["offer_id"], agent, CALLER_IDS[1])["attempt_id"]
    return got["contact_id"], attempt


# --- get record ---


def test_given_ready_member_when_get_record_then_first_record_leased_and_case_shown(
    w: World,
) -> None:
    second = w.contact("+4930100002", "Bernd Bauer")
    w.fill()
    agent = w.agent()
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    assert got["status"] == "record" and got["contact_id"] == w.contacts[0]
    case = got["case"]
    assert case["state"] == "previewing" and case["origin"] == "Anna Alt"
    assert case["dialed_number"] == "+4930100001" and case["attempts"] == []
    assert case["caller_ids"] == CALLER_IDS and case["ask_caller_id"] is True
    lease = w.queue.lease_of(w.contacts[0])
    assert lease is not None and lease.owner == lease_owner(agent)
    assert [e.contact_id for e in w.queue.peek(5)] == [second]
    assert w.row(Offer, got["offer_id"]).state is OfferState.OPEN
    # asking again while the record is shown returns the same record
    assert get_record(w.factory, w.queue, agent, w.campaign_id)["offer_id"] == got["offer_id"]


def test_given_empty_list_when_get_record_then_clear_no_record(w: World) -> None:
    agent = w.agent()
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    assert got["status"] == "none" and "no record" in got["message"]


@pytest.mark.parametrize("who", ["stranger", "not_ready", "nobody"])
def test_given_agent_who_may_not_when_get_record_then_refused_and_nothing_changed(
    w: World, who: str
) -> None:
    w.fill()
    agent = {
        "stranger": lambda: w.agent(member=False),
        "not_ready": lambda: w.agent(ready=False),
        "nobody": lambda: "4242424242",
    }[who]()
    before = _snapshot(w)
    expected = {"stranger": NotAllowed, "not_ready": Conflict, "nobody": NotFound}[who]
    with pytest.raises(expected):
        get_record(w.factory, w.queue, agent, w.campaign_id)
    assert _snapshot(w) == before


def test_given_progressive_campaign_when_get_record_then_refused(prog: World) -> None:
    prog.fill()
    agent = prog.agent()
    with pytest.raises(Conflict, match="not pulled"):
        get_record(prog.factory, prog.queue, agent, prog.campaign_id)


def test_given_records_not_dialable_when_get_record_then_skipped_and_put_where_they_belong(
    w: World,
) -> None:
    on_dnc = w.contacts[0]
    retry = w.contact("+4930100002", "Later Lea")
    good = w.contact("+4930100003", "Good Gus")
    w.fill()
    later = utcnow() + timedelta(hours=2)
    with transaction(w.factory) as s:
        s.add(DncEntry(e164="+4930100001", campaign_id=None, reason="test"))
        c = s.get(Contact, retry)
        assert c is not None
        c.next_at = later  # the DB says: not before two hours from now
    got = get_record(w.factory, w.queue, w.agent(), w.campaign_id)
    assert got["contact_id"] == good
    assert w.queue.locate(on_dnc).section == "absent"  # no time makes it dialable
    where = w.queue.locate(retry)
    assert where.section == "later" and where.due is not None
    assert abs((where.due - later).total_seconds()) < 2


# --- caller ID and dial ---


def test_given_campaign_asking_caller_id_when_dialing_without_or_with_bad_one_then_refused(
    w: World,
) -> None:
    w.fill()
    agent = w.agent()
    offer = get_record(w.factory, w.queue, agent, w.campaign_id)["offer_id"]
    before = _snapshot(w)
    with pytest.raises(Invalid, match="choose a caller ID"):
        dial(w.factory, w.queue, offer, agent)
    with pytest.raises(Invalid, match="not one of"):
        choose_caller_id(w.factory, offer, agent, "+4930999999")
    assert _snapshot(w) == before
    assert choose_caller_id(w.factory, offer, agent, CALLER_IDS[1])["caller_id"] == CALLER_IDS[1]
    out = dial(w.factory, w.queue, offer, agent)
    a = w.row(CallAttempt, out["attempt_id"])
    assert (a.caller_id, a.agent_id, a.e164) == (CALLER_IDS[1], agent, "+4930100001")
    assert w.row(Offer, offer).state is OfferState.DIALED
    assert w.queue.locate(w.contacts[0]).section == "absent"  # lease settled on dial
    with pytest.raises(IllegalInteraction):
        dial(w.factory, w.queue, offer, agent, CALLER_IDS[0])


def test_given_another_agents_record_when_acting_on_it_then_not_allowed_and_nothing_changed(
    w: World,
) -> None:
    w.fill()
    owner, other = w.agent(), w.agent()
    offer = get_record(w.factory, w.queue, owner, w.campaign_id)["offer_id"]
    before = _snapshot(w)
    for act in (
        lambda: dial(w.factory, w.queue, offer, other, CALLER_IDS[0]),
        lambda: decline(w.factory, w.queue, offer, other, "later"),
        lambda: decline(w.factory, w.queue, offer, other, "dnc"),
        lambda: choose_caller_id(w.factory, offer, other, CALLER_IDS[0]),
    ):
        with pytest.raises(NotAllowed):
            act()
    assert _snapshot(w) == before
    _, attempt = _preview_and_dial(w, owner)  # the owner still can
    _connect(w.factory, attempt, end=True)
    before = _snapshot(w)
    for act in (
        lambda: mark_done(w.factory, attempt, other, "sale"),
        lambda: done_and_stop(w.factory, w.r, attempt, other, "sale"),
        lambda: record_dtmf(w.factory, attempt, other, "12"),
    ):
        with pytest.raises(NotAllowed):
            act()
    assert _snapshot(w) == before


# --- decline ---


def test_given_previewed_record_when_declined_later_then_it_is_first_at_the_top(w: World) -> None:
    w.contact("+4930100002", "Bernd Bauer")
    w.contact("+4930100003", "Carla Christ")
    w.fill()
    agent = w.agent()
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    out = decline(w.factory, w.queue, got["offer_id"], agent, "later")
    assert out["choice"] == "later"
    first = w.queue.peek(1)[0]
    assert (first.contact_id, first.section) == (w.contacts[0], "top")
    assert w.row(Offer, got["offer_id"]).state is OfferState.CALL_LATER
    assert w.row(Contact, w.contacts[0]).state is ContactState.READY
    history = w.case(w.contacts[0], Contact)["history"]
    assert [(h["kind"], h["data"]["choice"]) for h in history] == [("declined", "later")]
    # the next "get record" (any agent) gets it again first
    assert get_record(w.factory, w.queue, w.agent(), w.campaign_id)["contact_id"] == w.contacts[0]


def test_given_previewed_record_when_declined_dnc_then_campaign_dnc_and_never_dialed(
    w: World,
) -> None:
    with transaction(w.factory) as s:
        s.add(PhoneNumber(contact_id=w.contacts[0], e164="+491701234567", position=1))
    w.fill()
    agent = w.agent()
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    decline(w.factory, w.queue, got["offer_id"], agent, "dnc")
    cid = w.contacts[0]
    with w.factory() as s:
        entries = s.scalars(select(DncEntry).order_by(DncEntry.e164)).all()
        assert [(e.e164, e.campaign_id, e.source) for e in entries] == [
            ("+491701234567", w.campaign_id, "agent"),
            ("+4930100001", w.campaign_id, "agent"),
        ]
        assert s.get(Contact, cid).state is ContactState.DNC  # type: ignore[union-attr]
        verdict = why(s, cid, utcnow())
        assert not verdict.allowed and {"dnc", "contact"} <= {r.name for r in verdict.failed}
    assert w.queue.locate(cid).section == "absent"
    assert w.row(Offer, got["offer_id"]).state is OfferState.DO_NOT_CALL
    with pytest.raises(NotDialable), transaction(w.factory) as s:
        create_attempt(s, cid, agent_id=agent)
    with pytest.raises(IllegalInteraction):
        decline(w.factory, w.queue, got["offer_id"], agent, "later")


def test_given_unknown_decline_choice_then_invalid_and_nothing_changed(w: World) -> None:
    w.fill()
    agent = w.agent()
    offer = get_record(w.factory, w.queue, agent, w.campaign_id)["offer_id"]
    before = _snapshot(w)
    with pytest.raises(Invalid):
        decline(w.factory, w.queue, offer, agent, "never")
    assert _snapshot(w) == before


# --- mark done ---


def test_given_connected_call_when_ended_then_wrapup_until_marked_done(w: World) -> None:
    w.fill()
    agent = w.agent()
    _, attempt = _preview_and_dial(w, agent)
    assert w.case(attempt)["state"] == "dialing"
    _connect(w.factory, attempt)
    with pytest.raises(IllegalInteraction, match="still connected"):
        mark_done(w.factory, attempt, agent, "sale")
    with w.factory() as s:
        assert not agent_is_free(s, agent)
    with transaction(w.factory) as s:
        settle(s, attempt, CallResult.ANSWERED)
    assert w.case(attempt)["state"] == "wrapup"
    with w.factory() as s:
        assert not agent_is_free(s, agent)
        assert set(agents_in_wrapup(s, w.campaign_id)) == {agent}
    before = _snapshot(w)
    with pytest.raises(Invalid, match="required"):
        mark_done(w.factory, attempt, agent, None)
    with pytest.raises(Invalid, match="unknown disposition"):
        mark_done(w.factory, attempt, agent, "maybe")
    assert _snapshot(w) == before
    out = mark_done(w.factory, attempt, agent, "sale")
    assert (out["state"], out["disposition"], out["treatment"]) == ("done", "sale", None)
    assert w.row(CallAttempt, attempt).disposition == "sale"
    assert w.row(Contact, w.contacts[0]).state is ContactState.DONE  # answered: final
    with w.factory() as s:
        assert agent_is_free(s, agent) and agents_in_wrapup(s, w.campaign_id) == {}
    with pytest.raises(IllegalInteraction, match="already marked done"):
        mark_done(w.factory, attempt, agent, "sale")


def test_given_disposition_with_a_treatment_when_marked_done_then_the_treatment_applies(
    w: World,
) -> None:
    w.fill()
    agent = w.agent()
    cid, attempt = _preview_and_dial(w, agent)
    _connect(w.factory, attempt, end=True)
    t0 = utcnow()
    out = mark_done(w.factory, attempt, agent, "call_again")
    assert out["treatment"]["action"] == "retry"
    c = w.row(Contact, cid)
    assert c.state is ContactState.READY and c.last_result is CallResult.ANSWERED
    assert c.next_at is not None
    assert timedelta(minutes=29) < c.next_at - t0 < timedelta(minutes=31)


def test_given_campaign_without_codes_when_marked_done_then_empty_disposition(
    prog: World,
) -> None:
    agent = prog.agent()
    with transaction(prog.factory) as s:
        attempt = create_attempt(s, prog.contacts[0], agent_id=agent).id
    _connect(prog.factory, attempt, end=True)
    with pytest.raises(Invalid, match="no disposition codes"):
        mark_done(prog.factory, attempt, agent, "sale")
    assert mark_done(prog.factory, attempt, agent)["disposition"] == ""
    assert prog.row(CallAttempt, attempt).disposition == ""
    with prog.factory() as s:
        assert agent_is_free(s, agent)


def test_given_unanswered_call_then_agent_free_without_wrapup(prog: World) -> None:
    agent = prog.agent()
    with transaction(prog.factory) as s:
        attempt = create_attempt(s, prog.contacts[0], agent_id=agent).id
    with prog.factory() as s:
        assert not agent_is_free(s, agent)
    with transaction(prog.factory) as s:
        settle(s, attempt, CallResult.BUSY)
    with prog.factory() as s:
        assert agent_is_free(s, agent) and agents_in_wrapup(s, prog.campaign_id) == {}
    assert prog.case(attempt)["state"] == "not_connected"


# --- next record, done and stop ---


def test_given_preview_when_marked_done_then_next_record_previewed(w: World) -> None:
    second = w.contact("+4930100002", "Bernd Bauer")
    w.fill()
    agent = w.agent()
    _, attempt = _preview_and_dial(w, agent)
    _connect(w.factory, attempt, end=True)
    out = mark_done(w.factory, attempt, agent, "sale", queue=w.queue)
    assert out["next"]["status"] == "record" and out["next"]["contact_id"] == second


def test_given_done_and_stop_then_no_records_until_get_record(w: World) -> None:
    second = w.contact("+4930100002", "Bernd Bauer")
    w.fill()
    agent = w.agent()
    _, attempt = _preview_and_dial(w, agent)
    _connect(w.factory, attempt, end=True)
    with pytest.raises(Invalid):  # a refused mark done does not stop anything
        done_and_stop(w.factory, w.r, attempt, agent, None, queue=w.queue)
    assert not live.preview_stopped(w.r, agent)
    out = done_and_stop(w.factory, w.r, attempt, agent, "no_interest", queue=w.queue)
    assert out["stopped"] is True and out["next"] is None
    assert w.row(CallAttempt, attempt).disposition == "no_interest"
    assert live.preview_stopped(w.r, agent)
    assert w.queue.lease_of(second) is None  # nothing was handed to the agent
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    assert got["contact_id"] == second and not live.preview_stopped(w.r, agent)
    # a later mark done previews the next record automatically again
    attempt2 = dial(w.factory, w.queue, got["offer_id"], agent, CALLER_IDS[0])["attempt_id"]
    _connect(w.factory, attempt2, end=True)
    third = w.contact("+4930100003", "Carla Christ")
    w.fill()
    assert mark_done(w.factory, attempt2, agent, "sale", queue=w.queue)["next"]["contact_id"] == (
        third
    )


def test_given_progressive_campaign_when_done_and_stop_then_refused(prog: World) -> None:
    agent = prog.agent()
    with transaction(prog.factory) as s:
        attempt = create_attempt(s, prog.contacts[0], agent_id=agent).id
    _connect(prog.factory, attempt, end=True)
    with pytest.raises(Conflict, match="preview campaigns"):
        done_and_stop(prog.factory, prog.r, attempt, agent)
    assert prog.row(CallAttempt, attempt).disposition is None


# --- Origin and case information ---


def test_given_progressive_call_then_origin_connecting_then_name_then_number(
    prog: World,
) -> None:
    agent, agent2 = prog.agent(), prog.agent()
    nameless = prog.contact("+4930100009", "")
    with transaction(prog.factory) as s:
        a1 = create_attempt(s, prog.contacts[0], agent_id=agent).id
        a2 = create_attempt(s, nameless, agent_id=agent2).id
    assert prog.case(a1)["origin"] == CONNECTING_ORIGIN
    assert prog.case(a1)["state"] == "connecting"
    _connect(prog.factory, a1)
    _connect(prog.factory, a2)
    assert prog.case(a1)["origin"] == "Anna Alt"
    assert prog.case(a2)["origin"] == "+4930100009"
    with transaction(prog.factory) as s:
        settle(s, a1, CallResult.ANSWERED)
    assert prog.case(a1)["origin"] == "Anna Alt"  # stays during wrap-up


@pytest.mark.parametrize("personal", [True, False])
def test_given_due_callback_when_previewed_and_dialed_then_origin_says_callback(
    w: World, personal: bool
) -> None:
    w.fill()
    agent = w.agent()
    with transaction(w.factory) as s:
        c = s.get(Contact, w.contacts[0])
        assert c is not None
        c.state = ContactState.CALLBACK
        s.add(
            Callback(
                campaign_id=w.campaign_id,
                contact_id=c.id,
                due_at=utcnow() - timedelta(minutes=1),
                personal=personal,
                agent_id=agent if personal else None,
                new_number="+491709999999",
                new_number_type=PhoneType.MOBILE,
            )
        )
    want = PERSONAL_CALLBACK_ORIGIN if personal else CALLBACK_ORIGIN
    got = get_record(w.factory, w.queue, agent, w.campaign_id)
    assert got["case"]["origin"] == want
    assert got["case"]["dialed_number"] == "+491709999999"
    attempt = dial(w.factory, w.queue, got["offer_id"], agent, CALLER_IDS[0])["attempt_id"]
    a = w.row(CallAttempt, attempt)
    assert a.is_callback and a.e164 == "+491709999999"
    _connect(w.factory, attempt)
    assert w.case(attempt)["origin"] == want


def test_given_personal_callback_of_another_agent_then_skipped_and_kept_on_top(
    w: World,
) -> None:
    second = w.contact("+4930100002", "Bernd Bauer")
    w.fill()
    mine, other = w.agent(), w.agent()
    with transaction(w.factory) as s:
        c = s.get(Contact, w.contacts[0])
        assert c is not None
        c.state = ContactState.CALLBACK
        s.add(
            Callback(
                campaign_id=w.campaign_id,
                contact_id=c.id,
                due_at=utcnow() - timedelta(minutes=1),
                personal=True,
                agent_id=mine,
            )
        )
    assert get_record(w.factory, w.queue, other, w.campaign_id)["contact_id"] == second
    first = w.queue.peek(1)[0]
    assert (first.contact_id, first.section) == (w.contacts[0], "top")
    assert get_record(w.factory, w.queue, mine, w.campaign_id)["contact_id"] == w.contacts[0]


def test_given_history_when_case_info_then_fields_numbers_attempts_dispositions_dtmf(
    w: World,
) -> None:
    cid = w.contacts[0]
    with transaction(w.factory) as s:
        c = s.get(Contact, cid)
        assert c is not None
        c.fields = {"plan": "gold", "customer_no": "K-17"}
        s.add(PhoneNumber(contact_id=cid, e164="+491701234567", type=PhoneType.MOBILE, position=1))
    w.fill()
    agent = w.agent()
    _, first = _preview_and_dial(w, agent)
    _connect(w.factory, first)
    record_dtmf(w.factory, first, agent, "12#")
    with pytest.raises(Invalid):
        record_dtmf(w.factory, first, agent, "12x")
    with transaction(w.factory) as s:
        settle(s, first, CallResult.ANSWERED)
    mark_done(w.factory, first, agent, "call_again")
    with transaction(w.factory) as s:  # the retry is due: dial the contact's mobile
        c = s.get(Contact, cid)
        assert c is not None
        c.next_at = utcnow() - timedelta(seconds=1)
        second = create_attempt(s, cid, e164="+491701234567", agent_id=agent).id
    case = w.case(second)
    assert case["contact"]["fields"] == {"plan": "gold", "customer_no": "K-17"}
    assert case["contact"]["name"] == "Anna Alt"
    assert case["numbers"] == [
        {"number": "+4930100001", "type": "other", "dialed": False},
        {"number": "+491701234567", "type": "mobile", "dialed": True},
    ]
    assert [
        (a["attempt_no"], a["number"], a["result"], a["disposition"], a["agent_id"])
        for a in case["attempts"]
    ] == [
        (1, "+4930100001", "answered", "call_again", agent),
        (2, "+491701234567", None, None, agent),
    ]
    assert all(a["at"] for a in case["attempts"])
    assert [(d["attempt_id"], d["code"]) for d in case["dispositions"]] == [(first, "call_again")]
    assert [(d["digits"], d["attempt_id"]) for d in case["dtmf"]] == [("12#", first)]
    assert [h["kind"] for h in case["history"]] == ["dtmf", "disposition"]
    assert case["disposition_codes"] == ["sale", "no_interest", "call_again"]
    assert case["disposition_required"] is True
    # the contact alone shows its live interaction
    assert w.case(cid, Contact)["attempt_id"] == second


def test_given_stale_preview_of_one_agent_when_its_lease_ran_out_then_next_agent_gets_it(
    w: World,
) -> None:
    w.fill()
    slow, quick = w.agent(), w.agent()
    got = get_record(w.factory, w.queue, slow, w.campaign_id, lease_s=0.001)
    later = utcnow() + timedelta(seconds=5)
    again = get_record(w.factory, w.queue, quick, w.campaign_id, now=later)
    assert again["contact_id"] == got["contact_id"]
    assert w.row(Offer, got["offer_id"]).state is OfferState.EXPIRED
    with pytest.raises(IllegalInteraction, match="expired"):
        dial(w.factory, w.queue, got["offer_id"], slow, CALLER_IDS[0])


def test_given_two_campaigns_when_previewing_in_one_then_other_refused(
    w: World, factory: sessionmaker[Session]
) -> None:
    w.fill()
    agent = w.agent()
    get_record(w.factory, w.queue, agent, w.campaign_id)
    with transaction(factory) as s:
        other = Campaign(name=f"o{w.campaign_id}", mode=DialMode.PREVIEW)
        s.add(other)
        s.flush()
        s.add(AgentCampaign(agent_id=agent, campaign_id=other.id))
        other_id = other.id
    q2 = DialQueue(w.r, other_id)
    try:
        with pytest.raises(Conflict, match="another campaign"):
            get_record(factory, q2, agent, other_id)
    finally:
        q2.drop()


def test_given_one_agent_asking_twice_at_once_then_one_record_shown_and_none_lost(
    w: World,
) -> None:
    second = w.contact("+4930100002", "Bernd Bauer")
    w.fill()
    agent = w.agent()
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def ask() -> None:
        barrier.wait()
        try:
            results.append(get_record(w.factory, w.queue, agent, w.campaign_id)["contact_id"])
        except Conflict as exc:
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with w.factory() as s:
        shown = s.scalars(
            select(Offer.contact_id).where(Offer.agent_id == agent, Offer.state == OfferState.OPEN)
        ).all()
    assert len(shown) == 1
    other = second if shown[0] == w.contacts[0] else w.contacts[0]
    assert w.queue.lease_of(other) is None and w.queue.locate(other).section in ("top", "queued")
    assert all(r == shown[0] or isinstance(r, Conflict) for r in results)
