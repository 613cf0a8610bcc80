"""Push preview: the system pushes a record to an agent whose *outbound preview* channel
is Ready; the agent accepts it (and then dials, as in preview) or rejects it. A reject,
or no action within the campaign's `push_timeout_s`, puts the record back at the top of
the list. A progressive campaign with an interaction preview (`interaction_preview`) works
the same on the voice channel, except that accepting places the call at once.

A pushed record is a preview offer (outbound.model Offer, state open) leased in the dial
queue to the agent (`preview.lease_owner`) for the push timeout, so everything preview
does after "get record" (caller ID, `preview.dial` with compliance at dial time) applies
unchanged. The offer's deadline is `created_at + push_timeout_s` (no extra column); an
accept is written as a case event (kind `push_accepted`) so that the deadline no longer
applies and the record's history shows it. As everywhere, the database is written first
and the queue second.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .. import live
from ..errors import Conflict, Invalid
from ..model import Campaign, CaseEvent, DialMode, transaction, utcnow
from ..model.tables import Offer, OfferState
from .interaction import agent_is_free, case_info
from .preview import (
    PREVIEW_LEASE_S,
    _check_agent,
    _own_offer,
    back_to_top,
    lease_and_offer,
    lease_owner,
)

log = logging.getLogger("outbound.push")

ACCEPTED = "push_accepted"  # case event kinds of a pushed record's history
REJECTED = "push_rejected"
EXPIRED = "push_expired"


def push_channel(campaign: Campaign) -> str | None:
    """The agent channel whose Ready gets the campaign pushed records: "preview" (push
    preview), "voice" (progressive with an interaction preview: the reserved agent sees
    the record, and accepting it has the call placed at once), or None (not pushed)."""
    if campaign.mode is DialMode.PUSH_PREVIEW:
        return "preview"
    if campaign.mode is DialMode.PROGRESSIVE and campaign.interaction_preview:
        return "voice"
    return None


def deadline(offer: Offer, campaign: Campaign) -> datetime:
    """When an offer not accepted goes back to the top of the list."""
    return offer.created_at + timedelta(seconds=campaign.push_timeout_s)


def _accepted(s: Session, offer: Offer) -> bool:
    # One open offer per contact (unique index): an accept of this contact by this agent
    # since the offer was made is this offer's; the id in the data makes it certain.
    rows = s.scalars(
        select(CaseEvent.data).where(
            CaseEvent.contact_id == offer.contact_id,
            CaseEvent.agent_id == offer.agent_id,
            CaseEvent.kind == ACCEPTED,
            CaseEvent.created_at >= offer.created_at,
        )
    )
    return any(d.get("offer_id") == offer.id for d in rows)


def pushable(s: Session, agents: Iterable[str]) -> list[str]:
    """Of `agents`, those who may be pushed a record now per the database: free (no
    call, no wrap-up) and with no open offer (pushed or previewed)."""
    agents = list(agents)
    busy = set(
        s.scalars(
            select(Offer.agent_id).where(Offer.agent_id.in_(agents), Offer.state == OfferState.OPEN)
        )
    )
    return [a for a in agents if a not in busy and agent_is_free(s, a)]


def push_offer(
    factory: sessionmaker[Session],
    queue: Any,
    agent_id: str,
    campaign_id: int,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Push the campaign's next record to the agent: leased to them for the campaign's
    push timeout, an open offer written, its case information returned (`status`
    "record", with `offer_id` and `deadline`), or `status` "none" when no record is due.

    Conflict (nothing changed) when the agent is not Ready on the preview channel, chose
    "done and stop", is in a call or wrap-up, or already has an open offer: one pushed
    record at a time."""
    if queue.campaign_id != campaign_id:
        raise Invalid(
            f"the dial queue given is campaign {queue.campaign_id}'s, not {campaign_id}'s"
        )
    with factory() as s:
        _, campaign = _check_agent(s, agent_id, campaign_id)
        channel = push_channel(campaign)
        if channel is None:
            raise Conflict(
                f"campaign {campaign.name!r} is {campaign.mode.value}: records are not pushed"
            )
        shown = s.scalar(
            select(Offer.id).where(Offer.agent_id == agent_id, Offer.state == OfferState.OPEN)
        )
        if shown is not None:
            raise Conflict(f"agent {agent_id} already has an open record (offer {shown})")
        if not agent_is_free(s, agent_id):
            raise Conflict(f"agent {agent_id} is in a call or in wrap-up")
    if not live.is_ready(queue.redis, agent_id, channel):
        what = "outbound preview" if channel == "preview" else channel
        raise Conflict(f"agent {agent_id} is not Ready on the {what} channel")
    if live.preview_stopped(queue.redis, agent_id):
        raise Conflict(f"agent {agent_id} chose 'done and stop': no record is pushed")
    got = lease_and_offer(factory, queue, agent_id, campaign, now, float(campaign.push_timeout_s))
    if got["status"] == "record":
        with factory() as s:
            offer = s.get(Offer, got["offer_id"])
            assert offer is not None
            got["deadline"] = deadline(offer, campaign).isoformat()
        log.info("push preview: offer %s pushed to agent %s", got["offer_id"], agent_id)
    return got


def _open_push_offer(s: Session, offer_id: int, agent_id: str) -> tuple[Offer, Campaign]:
    offer, campaign = _own_offer(s, offer_id, agent_id)
    if push_channel(campaign) is None and offer.callback_id is None:
        raise Conflict(f"offer {offer_id} is not a pushed record (campaign {campaign.name!r})")
    if offer.state is not OfferState.OPEN:
        raise Conflict(f"pushed record {offer_id} is {offer.state.value}: nothing to do")
    return offer, campaign


def accept(
    factory: sessionmaker[Session],
    offer_id: int,
    agent_id: str,
    *,
    queue: Any | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The agent accepts the pushed record: the push timeout no longer applies and the
    agent dials it next (`preview.dial`). Given the queue, the lease is extended to the
    preview lease so that the record is not handed out again meanwhile. Accepting twice
    is harmless; accepting after the deadline is refused (Conflict): the record goes back
    to the top of the list."""
    now = now or utcnow()
    with transaction(factory) as s:
        offer, campaign = _open_push_offer(s, offer_id, agent_id)
        already = _accepted(s, offer)
        if not already:
            if now >= deadline(offer, campaign):
                raise Conflict(f"pushed record {offer_id} timed out: it goes back to the list")
            s.add(
                CaseEvent(
                    contact_id=offer.contact_id,
                    agent_id=agent_id,
                    kind=ACCEPTED,
                    data={"offer_id": offer.id},
                    text="Pushed record accepted",
                    created_at=now,
                )
            )
        contact_id = offer.contact_id
        out = {
            "offer_id": offer.id,
            "contact_id": contact_id,
            "state": "accepted",
            "case": case_info(s, offer),
            # Progressive's interaction preview: accepting places the call (the caller
            # dials it now, preview.dial); push preview: the agent dials when ready.
            "dial_now": campaign.mode in (DialMode.PROGRESSIVE, DialMode.PREDICTIVE),
        }
    if queue is not None and not already:
        try:
            queue.renew(contact_id, lease_owner(agent_id), PREVIEW_LEASE_S, now)
        except Conflict as exc:  # lapsed: `dial` still settles it wherever it is
            log.warning("accepted offer %s: lease not extended: %s", offer_id, exc)
    log.info("push preview: offer %s accepted by agent %s", offer_id, agent_id)
    return out


def reject(
    factory: sessionmaker[Session],
    queue: Any,
    offer_id: int,
    agent_id: str,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The agent rejects the pushed record (accepted or not, as long as not dialed): the
    offer is closed as rejected and the record goes back to the top of the list."""
    now = now or utcnow()
    with transaction(factory) as s:
        offer, _ = _open_push_offer(s, offer_id, agent_id)
        offer.state, offer.closed_at = OfferState.REJECTED, now
        callback = offer.callback_id
        s.add(
            CaseEvent(
                contact_id=offer.contact_id,
                agent_id=agent_id,
                kind=REJECTED,
                data={"offer_id": offer.id},
                text="Pushed record rejected: back to the top of the list",
                created_at=now,
            )
        )
        contact_id = offer.contact_id
    if callback is None:  # a callback goes back to routing (callback_offers), not the list
        back_to_top(queue, contact_id, agent_id)
    log.info("push preview: offer %s rejected by agent %s", offer_id, agent_id)
    return {"offer_id": offer_id, "contact_id": contact_id, "state": "rejected"}


def expire_offers(
    factory: sessionmaker[Session], queue: Any, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Open pushed records of the queue's campaign left past their deadline without an
    accept: the offer expires and the record goes back to the top of the list. Returns
    the expired ones (offer, agent, contact) so that the caller can tell the agents."""
    now = now or utcnow()
    with factory() as s:
        campaign = s.get(Campaign, queue.campaign_id)
        if campaign is None or push_channel(campaign) is None:
            return []
        overdue = [
            o.id
            for o in s.scalars(
                select(Offer).where(
                    Offer.campaign_id == campaign.id,
                    Offer.state == OfferState.OPEN,
                    Offer.callback_id.is_(None),  # callback offers: callback_offers.expire
                )
            )
            if now >= deadline(o, campaign) and not _accepted(s, o)
        ]
    out: list[dict[str, Any]] = []
    for offer_id in overdue:
        with transaction(factory) as s:
            offer = s.get(Offer, offer_id, with_for_update=True)
            if offer is None or offer.state is not OfferState.OPEN or _accepted(s, offer):
                continue  # acted on meanwhile
            offer.state, offer.closed_at = OfferState.EXPIRED, now
            s.add(
                CaseEvent(
                    contact_id=offer.contact_id,
                    agent_id=offer.agent_id,
                    kind=EXPIRED,
                    data={"offer_id": offer.id},
                    text="Pushed record not taken in time: back to the top of the list",
                    created_at=now,
                )
            )
            agent, contact_id = offer.agent_id, offer.contact_id
        if agent is not None:
            back_to_top(queue, contact_id, agent)
        else:
            try:
                queue.push_top(contact_id)
            except Conflict:
                pass  # leased by someone else meanwhile: theirs
        log.info("push preview: offer %s expired (agent %s)", offer_id, agent)
        out.append({"offer_id": offer_id, "agent_id": agent, "contact_id": contact_id})
    return out
