"""The interaction core on SQLite and the real local PostgreSQL, with the dial queue on the
real local Redis (db 6): preview (get record, caller ID, dial, decline later / do not
call), the Origin field through the states, case information, mark done, done and stop,
and the free / wrap-up contract with the dialing loop.

Each test uses its own random campaign id and agent ids, so its Redis keys are its own;
they are deleted after. The AMI bridge's part (answer, connect, hang-up) is played by
`outbound.campaigns.attempts.advance` / `settle`, which is what the bridge calls.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from outbound import live
from outbound.campaigns.attempts import create_attempt, settle
from outbound.campaigns.interaction import (
    IllegalInteraction,
    NotAllowed,
    agent_is_free,
    agents_in_wrapup,
    done_and_stop,
    mark_done,
    record_dtmf,
)
from outbound.campaigns.preview import choose_caller_id, decline, dial, get_record, lease_owner
from outbound.compliance import NotDialable, why
from outbound.errors import Conflict, Invalid, NotFound
from outbound.model import (
    CallAttempt,
    CallResult,
    Contact,
    ContactState,
    DncEntry,
    PhoneNumber,
    transaction,
    utcnow,
)
from outbound.model.tables import Offer, OfferState
from tests.integration.interaction.world import (
    CALLER_IDS,
    World,
    connect,
    preview_and_dial,
    snapshot,
)

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
    before = snapshot(w)
    expected = {"stranger": NotAllowed, "not_ready": Conflict, "nobody": NotFound}[who]
    with pytest.raises(expected):
        get_record(w.factory, w.queue, agent, w.campaign_id)
    assert snapshot(w) == before


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
    before = snapshot(w)
    with pytest.raises(Invalid, match="choose a caller ID"):
        dial(w.factory, w.queue, offer, agent)
    with pytest.raises(Invalid, match="not one of"):
        choose_caller_id(w.factory, offer, agent, "+4930999999")
    assert snapshot(w) == before
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
    before = snapshot(w)
    for act in (
        lambda: dial(w.factory, w.queue, offer, other, CALLER_IDS[0]),
        lambda: decline(w.factory, w.queue, offer, other, "later"),
        lambda: decline(w.factory, w.queue, offer, other, "dnc"),
        lambda: choose_caller_id(w.factory, offer, other, CALLER_IDS[0]),
    ):
        with pytest.raises(NotAllowed):
            act()
    assert snapshot(w) == before
    _, attempt = preview_and_dial(w, owner)  # the owner still can
    connect(w.factory, attempt, end=True)
    before = snapshot(w)
    for act in (
        lambda: mark_done(w.factory, attempt, other, "sale"),
        lambda: done_and_stop(w.factory, w.r, attempt, other, "sale"),
        lambda: record_dtmf(w.factory, attempt, other, "12"),
    ):
        with pytest.raises(NotAllowed):
            act()
    assert snapshot(w) == before


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
    before = snapshot(w)
    with pytest.raises(Invalid):
        decline(w.factory, w.queue, offer, agent, "never")
    assert snapshot(w) == before


# --- mark done ---


def test_given_connected_call_when_ended_then_wrapup_until_marked_done(w: World) -> None:
    w.fill()
    agent = w.agent()
    _, attempt = preview_and_dial(w, agent)
    assert w.case(attempt)["state"] == "dialing"
    connect(w.factory, attempt)
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
    before = snapshot(w)
    with pytest.raises(Invalid, match="required"):
        mark_done(w.factory, attempt, agent, None)
    with pytest.raises(Invalid, match="unknown disposition"):
        mark_done(w.factory, attempt, agent, "maybe")
    assert snapshot(w) == before
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
    cid, attempt = preview_and_dial(w, agent)
    connect(w.factory, attempt, end=True)
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
    connect(prog.factory, attempt, end=True)
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
    _, attempt = preview_and_dial(w, agent)
    connect(w.factory, attempt, end=True)
    out = mark_done(w.factory, attempt, agent, "sale", queue=w.queue)
    assert out["next"]["status"] == "record" and out["next"]["contact_id"] == second


def test_given_done_and_stop_then_no_records_until_get_record(w: World) -> None:
    second = w.contact("+4930100002", "Bernd Bauer")
    w.fill()
    agent = w.agent()
    _, attempt = preview_and_dial(w, agent)
    connect(w.factory, attempt, end=True)
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
    connect(w.factory, attempt2, end=True)
    third = w.contact("+4930100003", "Carla Christ")
    w.fill()
    assert mark_done(w.factory, attempt2, agent, "sale", queue=w.queue)["next"]["contact_id"] == (
        third
    )


def test_given_progressive_campaign_when_done_and_stop_then_refused(prog: World) -> None:
    agent = prog.agent()
    with transaction(prog.factory) as s:
        attempt = create_attempt(s, prog.contacts[0], agent_id=agent).id
    connect(prog.factory, attempt, end=True)
    with pytest.raises(Conflict, match="preview campaigns"):
        done_and_stop(prog.factory, prog.r, attempt, agent)
    assert prog.row(CallAttempt, attempt).disposition is None
