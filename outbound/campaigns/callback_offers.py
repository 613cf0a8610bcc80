"""Routing fired callbacks to agents, in every dial mode.

The scheduler fires a due callback (outbound.callbacks_fire: state `queued`, once); from
then on the bridge's engine routes it each tick (`route`): the agent receives it as an
interaction preview (an Offer carrying `callback_id`, Origin `Callback` or `Personal
callback`), accepts (the call is placed: at once in progressive / predictive campaigns,
by the agent's dial in preview ones) or rejects. The contact of a callback is in state
`callback` and never in the campaign's dial queue, so no other path dials it meanwhile.

Who gets it:
- a personal callback: only its agent, when Ready (voice) and free (no call, no wrap-up,
  no other record shown); if that agent has not taken it within the campaign's grace period
  (`callback_grace_s` after firing) and the campaign falls back to the pool
  (`callback_fallback` = "pool"), any agent of the pool; with "wait" it waits for its agent;
- a pooled callback: any Ready, free member, longest Ready first.
An agent who rejected a callback (or declined it "call later") is not offered it again (it goes to another agent; with
nobody else, it waits). An offer not accepted within `push_timeout_s` expires and the
callback is routed again. Compliance is checked when offering and again at the dial
(calling hours may have ended since the firing: then the callback waits, pending, for
the contact's next dialable time).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from .. import live
from ..compliance import why
from ..model import (
    AgentCampaign,
    Callback,
    CallbackState,
    Campaign,
    CampaignState,
    CaseEvent,
    transaction,
    utcnow,
)
from ..model.tables import Offer, OfferState
from .interaction import agent_is_free

log = logging.getLogger("outbound.callback_offers")

ROUTED = "callback_offered"  # case event kinds
DEFERRED = "callback_deferred"


def has_open_offer(s: Session, agent_id: str) -> bool:
    """The agent is looking at a record (preview, pushed, callback): not free for another."""
    return (
        s.scalar(
            select(Offer.id)
            .where(Offer.agent_id == agent_id, Offer.state == OfferState.OPEN)
            .limit(1)
        )
        is not None
    )


def campaigns_with_callbacks(s: Session) -> list[int]:
    """Running campaigns (any mode) with fired callbacks waiting for an agent."""
    return list(
        s.scalars(
            select(Callback.campaign_id)
            .join(Campaign, Campaign.id == Callback.campaign_id)
            .where(Callback.state == CallbackState.QUEUED, Campaign.state == CampaignState.RUNNING)
            .distinct()
        )
    )


def _waiting(s: Session, campaign_id: int) -> list[Callback]:
    """Fired callbacks of the campaign that no agent is looking at, oldest first."""
    shown = select(Offer.callback_id).where(
        Offer.state == OfferState.OPEN, Offer.callback_id.is_not(None)
    )
    return list(
        s.scalars(
            select(Callback)
            .where(
                Callback.campaign_id == campaign_id,
                Callback.state == CallbackState.QUEUED,
                Callback.id.not_in(shown),
            )
            .order_by(Callback.fired_at, Callback.due_at, Callback.id)
        )
    )


def _rejecters(s: Session, callback_id: int) -> set[str]:
    return {
        a
        for a in s.scalars(
            select(Offer.agent_id).where(
                Offer.callback_id == callback_id,
                Offer.state.in_((OfferState.REJECTED, OfferState.CALL_LATER)),
            )
        )
        if a is not None
    }


def candidates(
    cb: Callback, campaign: Campaign, ready: list[str], rejected: set[str], now: datetime
) -> list[str]:
    """Who may be offered the callback now, in order (pure: `ready` are the members who
    are Ready and free, longest Ready first)."""
    pool = [a for a in ready if a not in rejected]
    if cb.personal and cb.agent_id:
        if cb.agent_id in ready and cb.agent_id not in rejected:
            return [cb.agent_id]
        fired = cb.fired_at or cb.due_at
        grace_over = now >= fired + timedelta(seconds=campaign.callback_grace_s)
        if campaign.callback_fallback == "pool" and grace_over:
            return [a for a in pool if a != cb.agent_id]
        return []
    return pool


def ready_members(s: Session, redis: Any, campaign_id: int) -> list[str]:
    """Members whose session is up, Ready (voice), not in "done and stop", free per the
    database and without an open record; longest Ready first."""
    members = list(
        s.scalars(select(AgentCampaign.agent_id).where(AgentCampaign.campaign_id == campaign_id))
    )
    found: list[tuple[float, str]] = []
    for agent in members:
        st = live.decode(redis.hgetall(live.agent_key(agent)))
        if st.get("session") != "up" or st.get("ready_voice") != "1":
            continue
        if st.get(live.PREVIEW_STOPPED) == "1":
            continue
        if agent_is_free(s, agent) and not has_open_offer(s, agent):
            found.append((float(st.get("ts") or 0), agent))
    return [a for _, a in sorted(found)]


def route(
    factory: sessionmaker[Session], redis: Any, campaign_id: int, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Offer the campaign's waiting callbacks to agents; returns the offers made."""
    now = now or utcnow()
    expire(factory, campaign_id, now)
    with factory() as s:
        campaign = s.get(Campaign, campaign_id)
        if campaign is None or campaign.state is not CampaignState.RUNNING:
            return []
        waiting = [(cb.id, cb) for cb in _waiting(s, campaign_id)]
        if not waiting:
            return []
        ready = ready_members(s, redis, campaign_id)
        plan = [
            (cb_id, candidates(cb, campaign, ready, _rejecters(s, cb_id), now))
            for cb_id, cb in waiting
        ]
    made: list[dict[str, Any]] = []
    taken: set[str] = set()
    for cb_id, agents in plan:
        for agent in agents:
            if agent in taken:
                continue
            got = offer(factory, cb_id, agent, now)
            if got is not None:
                taken.add(agent)
                made.append(got)
                break
    return made


def offer(
    factory: sessionmaker[Session], callback_id: int, agent_id: str, now: datetime
) -> dict[str, Any] | None:
    """In one transaction: the callback still waits, the agent is still free, the contact
    may be called now: write the agent's offer. None when any of that changed (or, for
    compliance, the callback goes back to pending until the contact may be called)."""
    from .preview import _callback_number, _offered

    try:
        with transaction(factory) as s:
            cb = s.get(Callback, callback_id, with_for_update=True)
            if cb is None or cb.state is not CallbackState.QUEUED:
                return None
            if not agent_is_free(s, agent_id) or has_open_offer(s, agent_id):
                return None
            verdict = why(s, cb.contact_id, now, agent_reserved=True)
            if not verdict.allowed:
                _defer(s, cb, verdict, now)
                return None
            o = Offer(
                campaign_id=cb.campaign_id,
                contact_id=cb.contact_id,
                agent_id=agent_id,
                callback_id=cb.id,
                e164=_callback_number(s, cb) or verdict.facts.e164,
                created_at=now,
            )
            s.add(o)
            s.flush()
            s.add(
                CaseEvent(
                    contact_id=cb.contact_id,
                    agent_id=agent_id,
                    kind=ROUTED,
                    data={"callback_id": cb.id, "offer_id": o.id},
                    text=f"{'Personal callback' if cb.personal else 'Callback'} offered",
                    created_at=now,
                )
            )
            got = _offered(s, o)
    except IntegrityError:  # another open offer for the contact or agent appeared meanwhile
        return None
    log.info("callback %s offered to agent %s (offer %s)", callback_id, agent_id, got["offer_id"])
    return {**got, "agent_id": agent_id, "callback_id": callback_id}


def _defer(s: Session, cb: Callback, verdict: Any, now: datetime) -> None:
    """Not callable now (calling hours ended since the firing, DNC...): back to pending
    for the contact's next dialable time, or expired when no time will do."""
    reasons = "; ".join(f"{r.name}: {r.reason}" for r in verdict.failed)
    nxt = verdict.next_dialable_at
    if nxt is None:
        cb.state = CallbackState.EXPIRED
    else:
        cb.state, cb.due_at = CallbackState.PENDING, nxt
    s.add(
        CaseEvent(
            contact_id=cb.contact_id,
            kind=DEFERRED,
            data={"callback_id": cb.id, "until": nxt.isoformat() if nxt else None},
            text=f"Callback not offered: {reasons}",
            created_at=now,
        )
    )
    log.info("callback %s deferred (%s) until %s", cb.id, reasons, nxt)


def expire(factory: sessionmaker[Session], campaign_id: int, now: datetime) -> list[int]:
    """Callback offers left past the campaign's push timeout without an accept expire;
    their callbacks are routed again."""
    from .push import EXPIRED, _accepted, deadline

    out: list[int] = []
    with transaction(factory) as s:
        campaign = s.get(Campaign, campaign_id)
        if campaign is None:
            return out
        for o in s.scalars(
            select(Offer)
            .where(
                Offer.campaign_id == campaign_id,
                Offer.state == OfferState.OPEN,
                Offer.callback_id.is_not(None),
            )
            .with_for_update()
        ):
            if now >= deadline(o, campaign) and not _accepted(s, o):
                o.state, o.closed_at = OfferState.EXPIRED, now
                s.add(
                    CaseEvent(
                        contact_id=o.contact_id,
                        agent_id=o.agent_id,
                        kind=EXPIRED,
                        data={"offer_id": o.id, "callback_id": o.callback_id},
                        text="Callback not taken in time: routed again",
                        created_at=now,
                    )
                )
                out.append(o.id)
    return out
