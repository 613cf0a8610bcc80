"""The interaction's Origin field through the states and its case information, on SQLite
and the real local PostgreSQL with the dial queue on the real local Redis; also the
preview edge cases around leases and concurrency (fixtures: conftest.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from outbound.campaigns.attempts import create_attempt, settle
from outbound.campaigns.interaction import (
    CALLBACK_ORIGIN,
    CONNECTING_ORIGIN,
    PERSONAL_CALLBACK_ORIGIN,
    IllegalInteraction,
    mark_done,
    record_dtmf,
)
from outbound.campaigns.preview import dial, get_record
from outbound.dial_queue import DialQueue
from outbound.errors import Conflict, Invalid
from outbound.model import (
    AgentCampaign,
    CallAttempt,
    Callback,
    CallResult,
    Campaign,
    Contact,
    ContactState,
    DialMode,
    PhoneNumber,
    PhoneType,
    transaction,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from tests.integration.interaction.world import (
    CALLER_IDS,
    World,
    connect,
    preview_and_dial,
)

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
    connect(prog.factory, a1)
    connect(prog.factory, a2)
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
    connect(w.factory, attempt)
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
    _, first = preview_and_dial(w, agent)
    connect(w.factory, first)
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
