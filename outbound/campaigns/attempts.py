"""Call attempts: the state machine, creation before the Originate, and settling a result.

An attempt row is committed *before* its Originate is sent, and its id is the ChannelId,
so whatever crashes afterwards, the database knows the call may exist and the reconciler
can look for it in Asterisk by that id. Settling is idempotent: the first result wins.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..compliance import check_for_dial
from ..errors import Conflict, NotFound
from ..model import (
    Agent,
    AttemptState,
    CallAttempt,
    CallResult,
    Campaign,
    Contact,
    ContactState,
    DncEntry,
    utcnow,
)
from .treatments import retry_delay_min, treatment_for

log = logging.getLogger("outbound.attempts")

A = AttemptState
LIVE = frozenset({A.CREATED, A.ORIGINATING, A.RINGING, A.ANSWERED, A.CONNECTED})

# (state, event) -> new state. "end" is legal from every live state.
TRANSITIONS: dict[tuple[AttemptState, str], AttemptState] = {
    (A.CREATED, "send"): A.ORIGINATING,
    (A.ORIGINATING, "ring"): A.RINGING,
    (A.ORIGINATING, "answer"): A.ANSWERED,
    (A.RINGING, "answer"): A.ANSWERED,
    (A.ANSWERED, "connect"): A.CONNECTED,
    **{(s, "end"): A.ENDED for s in LIVE},
}


class IllegalTransition(Conflict):
    """An event that makes no sense in the attempt's state (e.g. connect before answer)."""


class AgentBusy(Conflict):
    """The agent already has a live attempt: a second call for them is refused and
    nothing is written (the contact was not dialed: it may go back to the queue)."""


def next_state(state: AttemptState, event: str) -> AttemptState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"attempt in state {state.value} cannot '{event}'") from None


def advance(attempt: CallAttempt, event: str, at: datetime | None = None) -> bool:
    """Apply an event; returns False (and changes nothing) when it is a late duplicate of a
    step already taken (events can arrive twice after a resync), raises when illegal."""
    at = at or utcnow()
    if attempt.state is A.ENDED or (attempt.state, event) in {
        (A.RINGING, "ring"),
        (A.ANSWERED, "answer"),
        (A.ANSWERED, "ring"),
        (A.CONNECTED, "answer"),
        (A.CONNECTED, "ring"),
        (A.CONNECTED, "connect"),
    }:
        return False
    new = next_state(attempt.state, event)
    log.info("attempt %s: %s --%s--> %s", attempt.id, attempt.state.value, event, new.value)
    attempt.state = new
    if event == "answer":
        attempt.answered_at = at
    elif event == "connect":
        attempt.connected_at = at
    return True


def create_attempt(
    s: Session,
    contact_id: int,
    *,
    e164: str | None = None,
    server: str = "default",
    trunk: str | None = None,
    caller_id: str | None = None,
    agent_id: str | None = None,
    is_callback: bool = False,
    audit: dict[str, Any] | None = None,
    now: datetime | None = None,
    agent_reserved: bool | None = None,
    state: AttemptState = AttemptState.ORIGINATING,
) -> CallAttempt:
    """Add the attempt row in state `originating` (the caller commits it before sending),
    or `created` when another process will send it (an agent's preview dial: the bridge
    claims it, created -> originating, for its one Originate).

    Every dial passes the compliance rules here, in the transaction that writes the row
    (outbound.compliance: campaign running, calling hours in the contact's zone, DNC,
    attempts left, retry time, 72 h after an abandoned call unless an agent is reserved
    (default: one is when `agent_id` is given), ...): a refusal raises NotDialable (a
    Conflict) naming the failing rules and writes nothing; an allowed dial stores which
    rules allowed it in the attempt's audit (`compliance`). A contact already in a live
    attempt is refused too; the partial unique index `uq_call_attempts_live_contact`
    makes that hold even between two processes. So is an agent already in a live attempt
    (AgentBusy): the agent's row is locked first, so that two writers for one agent (an
    agent's preview dial of a callback, a bridge's progressive call) take turns and the
    second sees the first's attempt."""
    now = now or utcnow()
    contact = s.get(Contact, contact_id, with_for_update=True)
    if contact is None:
        raise NotFound(f"no contact {contact_id}")
    if agent_id is not None:
        _lock_free_agent(s, agent_id)
    numbers = contact.numbers
    if e164 is None and numbers:
        e164 = numbers[min(contact.number_index, len(numbers) - 1)].e164
    reserved = agent_id is not None if agent_reserved is None else agent_reserved
    allowed_by = check_for_dial(s, contact_id, e164, now, reserved)
    assert e164 is not None  # the "number" rule passed
    attempt = CallAttempt(
        campaign_id=contact.campaign_id,
        contact_id=contact_id,
        attempt_no=contact.attempts + 1,
        e164=e164,
        server=server,
        trunk=trunk,
        caller_id=caller_id,
        agent_id=agent_id,
        is_callback=is_callback,
        state=state,
        originated_at=utcnow() if state is A.ORIGINATING else None,
        audit={**(audit or {}), "compliance": allowed_by},
    )
    contact.attempts += 1
    contact.state = ContactState.IN_PROGRESS
    s.add(attempt)
    try:
        s.flush()
    except IntegrityError:
        raise Conflict(f"contact {contact_id} is already in a call attempt") from None
    log.info(
        "attempt %s: dial of contact %s to %s allowed by %s",
        attempt.id,
        contact_id,
        e164,
        "; ".join(f"{k} {v}" for k, v in allowed_by.items()),
    )
    return attempt


def _lock_free_agent(s: Session, agent_id: str) -> None:
    """Lock the agent's row (FOR NO KEY UPDATE: rows referencing the agent may still be
    inserted meanwhile) and refuse if the agent has a live attempt. Every attempt writer
    for an agent takes this lock after the contact's, so the check and the insert are one
    step for that agent: under READ COMMITTED the read below, made once the lock is ours,
    sees any attempt a writer that held it before committed."""
    agent = s.get(Agent, agent_id, with_for_update={"key_share": True}, populate_existing=True)
    if agent is None:
        raise NotFound(f"no agent with id {agent_id!r}")
    live = s.scalar(
        select(CallAttempt.id)
        .where(CallAttempt.agent_id == agent_id, CallAttempt.state.in_(LIVE))
        .limit(1)
    )
    if live is not None:
        raise AgentBusy(f"agent {agent_id} is already in call attempt {live}")


def settle(
    s: Session,
    attempt_id: str,
    result: CallResult,
    *,
    cause: int | None = None,
    at: datetime | None = None,
    note: str = "",
) -> bool:
    """End the attempt with `result` and apply the campaign's treatment to the contact.
    Returns False when the attempt had already ended (the first result wins)."""
    at = at or utcnow()
    # populate_existing: a row this session read before (unlocked) is read again under
    # the lock, or a settle that waited for another's commit would see the stale state,
    # end the attempt a second time and apply the treatment twice.
    attempt = s.get(CallAttempt, attempt_id, with_for_update=True, populate_existing=True)
    if attempt is None:
        raise NotFound(f"no call attempt {attempt_id}")
    if attempt.state is A.ENDED:
        return False
    advance(attempt, "end", at)
    attempt.result = attempt.result or result
    attempt.hangup_cause = cause if cause is not None else attempt.hangup_cause
    attempt.ended_at = at
    if note:
        attempt.audit = {**attempt.audit, "settled": note}
    contact = s.get(Contact, attempt.contact_id, with_for_update=True, populate_existing=True)
    campaign = s.get(Campaign, attempt.campaign_id)
    assert contact is not None and campaign is not None
    apply_treatment(s, campaign, contact, attempt.result, at)
    return True


def apply_treatment(
    s: Session,
    campaign: Campaign,
    contact: Contact,
    result: CallResult,
    at: datetime,
    key: str | None = None,
) -> None:
    """Retry later, next number, final or DNC, as the campaign says for this result (or
    for `key`: the agent's disposition code, when the campaign keys a treatment on it)."""
    contact.last_result = result
    if contact.state in (ContactState.DNC, ContactState.CALLBACK):
        return
    t = treatment_for(campaign.treatments, key or result.value)
    action = t["action"]
    max_attempts = int(t.get("max_attempts", campaign.max_attempts))
    if action == "retry" and contact.attempts < max_attempts:
        contact.state = ContactState.READY
        # the n-th retry follows the n-th attempt
        contact.next_at = at + timedelta(minutes=retry_delay_min(t, contact.attempts))
    elif action == "next_number" and contact.number_index + 1 < len(contact.numbers):
        contact.number_index += 1
        contact.state = ContactState.READY
        contact.next_at = at
    elif action == "dnc":
        contact.state = ContactState.DNC
        for n in contact.numbers:
            exists = s.scalar(
                select(DncEntry.id).where(
                    DncEntry.e164 == n.e164, DncEntry.campaign_id == campaign.id
                )
            )
            if exists is None:
                s.add(
                    DncEntry(
                        e164=n.e164,
                        campaign_id=campaign.id,
                        source="treatment",
                        reason=f"disposition {key}" if key else f"result {result.value}",
                    )
                )
    else:
        contact.state = ContactState.DONE
        contact.next_at = None
