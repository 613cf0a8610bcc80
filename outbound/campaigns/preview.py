"""Preview: an agent pulls a record ("get record"), sees its case information, then dials
(choosing a caller ID when the campaign asks) or declines it ("call later": back to the
top of the list; "do not call": removed, on the campaign's do-not-call list).

The dial queue (Redis) decides which record comes next and holds it for the agent (a
lease owned by `lease_owner(agent)`); the database records the offer (outbound.model
Offer) and decides whether the record may be dialed (outbound.compliance). As everywhere,
the database is written first and the queue second, so a crash in between leaves at worst
a lease that expires and puts the record back at the top.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .. import live
from ..compliance import why
from ..errors import Conflict, Invalid, NotFound
from ..model import (
    Agent,
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    Campaign,
    CaseEvent,
    Contact,
    ContactState,
    DialMode,
    DncEntry,
    PhoneNumber,
    transaction,
    utcnow,
)
from ..model.tables import Offer, OfferState
from .attempts import create_attempt
from .feedback import NotAllowed
from .interaction import (
    IState,
    agent_is_free,
    case_info,
    check_caller_id,
    derive_state,
    next_state,
    step,
)

log = logging.getLogger("outbound.preview")

PREVIEW_LEASE_S = 900.0  # how long a previewed record is held before it goes back on top
MAX_SKIPS = 25  # records looked at (and put back) in one "get record" before giving up
# A pushed record the agent rejected goes to other agents first: it is not offered to that
# agent again for this long (it stays first in line for everyone else).
REJECT_COOLDOWN_S = 600
DECLINE_CHOICES = ("later", "dnc")


def lease_owner(agent_id: str) -> str:
    """The dial-queue lease owner of an agent's preview record."""
    return f"agent:{agent_id}"


@dataclass(frozen=True)
class _Skip:
    """Why a leased record was not offered, and what the queue should do with it."""

    action: str  # "later" (push with due), "remove", "keep" (release to the top at the end)
    due: datetime | None = None
    priority: int = 0


def _none(campaign: Campaign, message: str) -> dict[str, Any]:
    return {"status": "none", "campaign_id": campaign.id, "message": message}


def _offered(s: Session, offer: Offer) -> dict[str, Any]:
    return {
        "status": "record",
        "offer_id": offer.id,
        "contact_id": offer.contact_id,
        "campaign_id": offer.campaign_id,
        "case": case_info(s, offer),
    }


def _check_agent(s: Session, agent_id: str, campaign_id: int) -> tuple[Agent, Campaign]:
    agent = s.get(Agent, agent_id) if isinstance(agent_id, str) and len(agent_id) <= 32 else None
    if agent is None:
        raise NotFound(f"no agent with id {agent_id!r}")
    campaign = s.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    if s.get(AgentCampaign, (agent_id, campaign_id)) is None:
        raise NotAllowed(f"agent {agent_id} is not a member of campaign {campaign.name!r}")
    return agent, campaign


def get_record(
    factory: sessionmaker[Session],
    queue: Any,
    agent_id: str,
    campaign_id: int,
    *,
    now: datetime | None = None,
    lease_s: float = PREVIEW_LEASE_S,
) -> dict[str, Any]:
    """Lease the next record of a preview campaign to a Ready agent and return its case
    information (`status` "record", with `offer_id`), or `status` "none" with a message.

    The record is checked with the dial-time compliance rules without dialing; one not
    dialable now is put back (pushed to when it will be, or removed from the queue when
    no time makes it dialable) and the next one is tried. A personal callback of another
    agent is skipped and put back on top. Asking again while a record is shown returns
    that record. Also ends "done and stop": records flow again. In a campaign whose
    records are pushed (push preview, progressive with an interaction preview) it ends
    "done and stop" and pushes the next record at once."""
    if queue.campaign_id != campaign_id:
        raise Invalid(
            f"the dial queue given is campaign {queue.campaign_id}'s, not {campaign_id}'s"
        )
    with factory() as s:
        _, campaign = _check_agent(s, agent_id, campaign_id)
        pushed = campaign.mode is DialMode.PUSH_PREVIEW or (
            campaign.mode is DialMode.PROGRESSIVE and campaign.interaction_preview
        )
        if pushed:
            s.close()
            return _ask_for_push(factory, queue, agent_id, campaign_id, now)
        if campaign.mode is not DialMode.PREVIEW:
            raise Conflict(
                f"campaign {campaign.name!r} is {campaign.mode.value}: records are not pulled"
            )
        shown = s.scalar(
            select(Offer).where(Offer.agent_id == agent_id, Offer.state == OfferState.OPEN)
        )
        if shown is not None:
            if shown.campaign_id == campaign_id:
                return _offered(s, shown)
            raise Conflict(
                f"agent {agent_id} is previewing a record of another campaign "
                f"(offer {shown.id}): dial or decline it first"
            )
        if not agent_is_free(s, agent_id):
            raise Conflict(f"agent {agent_id} is in a call or in wrap-up: mark it done first")
    if not live.is_ready(queue.redis, agent_id):
        raise Conflict(f"agent {agent_id} must be Ready to get a record")
    live.set_preview_stopped(queue.redis, agent_id, False)
    return lease_and_offer(factory, queue, agent_id, campaign, now, lease_s)


def _ask_for_push(
    factory: sessionmaker[Session],
    queue: Any,
    agent_id: str,
    campaign_id: int,
    now: datetime | None,
) -> dict[str, Any]:
    """Get record in a campaign whose records are pushed: it ends "done and stop" and
    pushes the next record now (or returns the record already pushed to the agent)."""
    from .push import push_offer

    live.set_preview_stopped(queue.redis, agent_id, False)
    with factory() as s:
        shown = s.scalar(
            select(Offer).where(Offer.agent_id == agent_id, Offer.state == OfferState.OPEN)
        )
        if shown is not None and shown.campaign_id == campaign_id:
            return _offered(s, shown)
    return push_offer(factory, queue, agent_id, campaign_id, now)


def lease_and_offer(
    factory: sessionmaker[Session],
    queue: Any,
    agent_id: str,
    campaign: Campaign,
    now: datetime | None,
    lease_s: float,
) -> dict[str, Any]:
    """Lease records to the agent until one may be offered (shared by "get record" and
    push preview): the refused ones are put back where and when they belong."""
    campaign_id = campaign.id
    owner = lease_owner(agent_id)
    queue.reclaim(now)  # leases left past their time go back on top first
    kept: list[int] = []
    try:
        for _ in range(MAX_SKIPS):
            contact_id = queue.lease(owner, lease_s, now)
            if contact_id is None:
                return _none(campaign, f"no record to preview in campaign {campaign.name!r} now")
            try:
                got = _offer(factory, agent_id, campaign_id, contact_id, now or utcnow())
            except Exception:
                queue.release(contact_id, owner, top=True)  # not shown: first in line again
                raise
            if isinstance(got, dict):
                return got
            if got.action == "keep":
                kept.append(contact_id)
            elif got.action == "remove":
                queue.settle(contact_id, owner)
            else:
                assert got.due is not None
                queue.release(contact_id, owner, top=False)
                queue.push(contact_id, got.priority, got.due, now)
        return _none(campaign, f"no dialable record found in the first {MAX_SKIPS} records")
    finally:
        for contact_id in kept:
            queue.release(contact_id, owner, top=True)


def _offer(
    factory: sessionmaker[Session], agent_id: str, campaign_id: int, contact_id: int, now: datetime
) -> dict[str, Any] | _Skip:
    """In one transaction: check the leased record and write the agent's offer."""
    with transaction(factory) as s:
        contact = s.get(Contact, contact_id, with_for_update=True)
        if contact is None or contact.campaign_id != campaign_id:
            return _Skip("remove")
        verdict = why(s, contact_id, now, agent_reserved=True)
        if not verdict.allowed:
            log.info(
                "preview: contact %s not offered to %s: %s",
                contact_id,
                agent_id,
                "; ".join(f"{r.name}: {r.reason}" for r in verdict.failed),
            )
            due = verdict.next_dialable_at
            return _Skip("remove") if due is None else _Skip("later", due, contact.priority)
        cb = s.scalar(
            select(Callback)
            .where(
                Callback.contact_id == contact_id,
                Callback.state.in_((CallbackState.PENDING, CallbackState.QUEUED)),
                Callback.due_at <= now,
            )
            .order_by(Callback.due_at, Callback.id)
            .limit(1)
        )
        if cb is not None and cb.personal and cb.agent_id not in (None, agent_id):
            return _Skip("keep")
        rejected = s.scalar(
            select(Offer.id)
            .where(
                Offer.contact_id == contact_id,
                Offer.agent_id == agent_id,
                Offer.state == OfferState.REJECTED,
                Offer.closed_at >= now - timedelta(seconds=REJECT_COOLDOWN_S),
            )
            .limit(1)
        )
        if rejected is not None:
            return _Skip("keep")  # this agent just rejected it: someone else's turn
        stale = s.scalar(
            select(Offer).where(Offer.contact_id == contact_id, Offer.state == OfferState.OPEN)
        )
        if stale is not None:
            # The queue handed the record out again: the other agent's lease ran out.
            step(stale.id, derive_state(DialMode.PREVIEW, stale, None), "expire")
            stale.state, stale.closed_at = OfferState.EXPIRED, now
            s.flush()
        offer = Offer(
            campaign_id=campaign_id,
            contact_id=contact_id,
            agent_id=agent_id,
            callback_id=cb.id if cb else None,
            e164=_callback_number(s, cb) or verdict.facts.e164,
            created_at=now,
        )
        s.add(offer)
        try:
            s.flush()
        except IntegrityError:  # a second "get record" of the same agent at the same time
            raise Conflict(f"agent {agent_id} is already previewing a record") from None
        log.info("interaction offer %s: record %s shown to %s", offer.id, contact_id, agent_id)
        return _offered(s, offer)


def _callback_number(s: Session, cb: Callback | None) -> str | None:
    if cb is None:
        return None
    if cb.new_number:
        return cb.new_number
    if cb.phone_number_id is not None:
        n = s.get(PhoneNumber, cb.phone_number_id)
        return n.e164 if n else None
    return None


def _own_offer(s: Session, offer_id: int, agent_id: str) -> tuple[Offer, Campaign]:
    if isinstance(offer_id, bool) or not isinstance(offer_id, int):
        raise Invalid(f"not an offer id: {offer_id!r}")
    offer = s.get(Offer, offer_id, with_for_update=True)
    if offer is None:
        raise NotFound(f"no preview record (offer) {offer_id}")
    if offer.agent_id is None or offer.agent_id != agent_id:
        raise NotAllowed(
            f"preview record {offer_id} is not agent {agent_id}'s: an agent acts only on their own"
        )
    campaign = s.get(Campaign, offer.campaign_id)
    assert campaign is not None
    return offer, campaign


def _state(s: Session, campaign: Campaign, offer: Offer) -> IState:
    if offer.state is OfferState.REJECTED:  # push preview's reject: declined, on top again
        return IState.DECLINED
    attempt = s.get(CallAttempt, offer.attempt_id) if offer.attempt_id else None
    return derive_state(campaign.mode, offer, attempt)


def choose_caller_id(
    factory: sessionmaker[Session], offer_id: int, agent_id: str, caller_id: str
) -> dict[str, Any]:
    """The agent picks the caller ID the dial will present (one of the campaign's)."""
    with transaction(factory) as s:
        offer, campaign = _own_offer(s, offer_id, agent_id)
        state = _state(s, campaign, offer)
        if not caller_id or not caller_id.strip():
            raise Invalid("give the caller ID to use")
        chosen = check_caller_id(campaign.ask_caller_id, campaign.caller_ids, caller_id)
        step(offer.id, state, "choose_caller_id")
        offer.caller_id = chosen
        return {"offer_id": offer.id, "caller_id": chosen}


def dial(
    factory: sessionmaker[Session],
    queue: Any,
    offer_id: int,
    agent_id: str,
    caller_id: str | None = None,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The agent dials the previewed record: the call attempt is written (every
    compliance rule is checked there: a refusal raises NotDialable and changes nothing,
    the record stays shown) in state `created`, then the lease is settled. The caller
    sends the bridge's `dial` command with the returned attempt id; the bridge claims the
    attempt (created -> originating) for its one Originate."""
    now = now or utcnow()
    with transaction(factory) as s:
        offer, campaign = _own_offer(s, offer_id, agent_id)
        state = _state(s, campaign, offer)
        next_state(state, "dial")  # refuse a declined / dialed record before writing
        chosen = check_caller_id(
            campaign.ask_caller_id, campaign.caller_ids, caller_id or offer.caller_id
        )
        audit: dict[str, Any] = {"offer_id": offer.id}
        if offer.callback_id is not None:
            audit["callback_id"] = offer.callback_id
        attempt = create_attempt(
            s,
            offer.contact_id,
            e164=offer.e164,
            trunk=campaign.trunk,
            caller_id=chosen,
            agent_id=agent_id,
            is_callback=offer.callback_id is not None,
            audit=audit,
            now=now,
            state=AttemptState.CREATED,
        )
        step(offer.id, state, "dial")
        offer.state, offer.attempt_id, offer.caller_id, offer.closed_at = (
            OfferState.DIALED,
            attempt.id,
            chosen,
            now,
        )
        if offer.callback_id is not None:
            cb = s.get(Callback, offer.callback_id, with_for_update=True)
            if cb is not None and cb.state not in (CallbackState.PENDING, CallbackState.QUEUED):
                raise Conflict(f"callback {cb.id} is {cb.state.value}: not dialed")
            if cb is not None:
                cb.state, cb.fired_at = CallbackState.DONE, cb.fired_at or now
        out = {
            "offer_id": offer.id,
            "attempt_id": attempt.id,
            "contact_id": offer.contact_id,
            "number": attempt.e164,
            "caller_id": chosen,
            "trunk": attempt.trunk,
            "state": IState.DIALING.value,
        }
        contact_id = offer.contact_id
    _settle(queue, contact_id, agent_id)
    return out


def _settle(queue: Any, contact_id: int, agent_id: str) -> None:
    try:
        if not queue.settle(contact_id, lease_owner(agent_id)):
            queue.remove(contact_id)
    except Conflict:  # the lease lapsed: take the record out wherever it went
        queue.remove(contact_id)


def decline(
    factory: sessionmaker[Session],
    queue: Any,
    offer_id: int,
    agent_id: str,
    choice: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Decline the previewed record. "later": back to the top of the list (a callback
    goes back to routing, for another agent). "dnc": every number of the contact on the
    campaign's do-not-call list, the contact removed (state dnc, its pending callbacks
    cancelled) and out of the queue."""
    if choice not in DECLINE_CHOICES:
        raise Invalid(f"decline with one of {', '.join(DECLINE_CHOICES)}, not {choice!r}")
    now = now or utcnow()
    with transaction(factory) as s:
        offer, campaign = _own_offer(s, offer_id, agent_id)
        step(offer.id, _state(s, campaign, offer), "decline")
        contact = s.get(Contact, offer.contact_id, with_for_update=True)
        assert contact is not None
        offer.closed_at = now
        if choice == "later":
            offer.state = OfferState.CALL_LATER
            text = "Declined: call this contact later"
        else:
            offer.state = OfferState.DO_NOT_CALL
            text = "Declined: do not call this contact"
            contact.state, contact.next_at = ContactState.DNC, None
            _campaign_dnc(s, contact, campaign.id, agent_id)
            for cb in s.scalars(
                select(Callback).where(
                    Callback.contact_id == contact.id,
                    Callback.state.in_((CallbackState.PENDING, CallbackState.QUEUED)),
                )
            ):
                cb.state = CallbackState.CANCELLED
        s.add(
            CaseEvent(
                contact_id=contact.id,
                agent_id=agent_id,
                kind="declined",
                data={"choice": choice, "offer_id": offer.id},
                text=text,
                created_at=now,
            )
        )
        contact_id, callback = contact.id, offer.callback_id
    if choice == "dnc":
        _settle(queue, contact_id, agent_id)
    elif callback is not None:
        pass  # a callback goes back to routing for another agent (callback_offers)
    else:
        back_to_top(queue, contact_id, agent_id)
    return {"offer_id": offer_id, "contact_id": contact_id, "choice": choice, "state": "declined"}


def back_to_top(queue: Any, contact_id: int, agent_id: str) -> None:
    """The agent's record goes first in line again (its lease released, or pushed to the
    top if the lease already lapsed); one leased by someone else meanwhile is left there."""
    try:
        if not queue.release(contact_id, lease_owner(agent_id), top=True):
            queue.push_top(contact_id)
    except Conflict:
        log.warning("record %s is leased by another owner: left there", contact_id)


def _campaign_dnc(s: Session, contact: Contact, campaign_id: int, agent_id: str) -> None:
    for n in contact.numbers:
        exists = s.scalar(
            select(DncEntry.id).where(DncEntry.e164 == n.e164, DncEntry.campaign_id == campaign_id)
        )
        if exists is None:
            s.add(
                DncEntry(
                    e164=n.e164,
                    campaign_id=campaign_id,
                    source="agent",
                    reason=f"declined as 'do not call' by agent {agent_id}",
                )
            )
