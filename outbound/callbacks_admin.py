"""An admin schedules a callback for a contact from the CLI (`outbound callbacks schedule`),
outside any agent's interaction: the same rules as an agent's (outbound.callback_rules:
the time in the future, the DST rule, a valid number, a window around the due time on the
contact's clock), the wall clock given by `tz` (default: the contact's zone). Personal
(one agent of the campaign) or pooled. A contact already waiting for a callback, in a
call, or on the do-not-call list is refused (Conflict): nothing changes."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .callback_rules import Request, check_future, due_of, pick_number, window_of
from .callbacks import SCHEDULED, describe
from .errors import Conflict, Invalid, NotFound
from .model import (
    AgentCampaign,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CaseEvent,
    Contact,
    ContactState,
    utcnow,
)
from .phones import timezone_for

log = logging.getLogger("outbound.callbacks_admin")


def admin_schedule(
    s: Session,
    contact_id: int,
    *,
    when: str,
    tz: str | None = None,
    agent_id: str | None = None,
    number: str | None = None,
    new_number: str | None = None,
    new_number_type: str | None = None,
    window_from: str | None = None,
    window_to: str | None = None,
    region: str = "DE",
    by: str = "admin",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write a pending callback for the contact (in the caller's transaction)."""
    now = now or utcnow()
    contact = s.get(Contact, contact_id, with_for_update=True)
    if contact is None:
        raise NotFound(f"no contact {contact_id}")
    if contact.state is ContactState.DNC:
        raise Conflict(f"contact {contact_id} is on the do-not-call list: no callback")
    waiting = s.scalar(
        select(Callback.id).where(
            Callback.contact_id == contact_id,
            Callback.state.in_((CallbackState.PENDING, CallbackState.QUEUED)),
        )
    )
    if waiting is not None:
        raise Conflict(
            f"contact {contact_id} already waits for callback {waiting}: edit or cancel it"
        )
    live = s.scalar(
        select(CallAttempt.id).where(
            CallAttempt.contact_id == contact_id, CallAttempt.state != AttemptState.ENDED
        )
    )
    if live is not None:
        raise Conflict(f"contact {contact_id} is in a call ({live}): the agent schedules it")
    if agent_id is not None:
        member = s.get(AgentCampaign, (agent_id, contact.campaign_id))
        if member is None:
            raise Invalid(f"agent {agent_id!r} is not a member of the contact's campaign")
    req = Request(
        when, agent_id is not None, number, new_number, new_number_type, window_from, window_to
    )
    numbers = list(contact.numbers)
    current = numbers[contact.number_index].e164 if numbers else None
    zone = tz or contact.timezone or (timezone_for(current) if current else None)
    if not zone:
        raise Invalid("the contact has no time zone: give --tz")
    due = due_of(req, zone)
    check_future(due, now)
    pn, new_e164, new_type = pick_number(numbers, req, region, current)
    target = new_e164 or (pn.e164 if pn else current)
    window = window_of(req, due, contact.timezone or (timezone_for(target) if target else None))
    cb = Callback(
        campaign_id=contact.campaign_id,
        contact_id=contact_id,
        due_at=due.utc,
        personal=agent_id is not None,
        agent_id=agent_id,
        phone_number_id=pn.id if pn else None,
        new_number=new_e164,
        new_number_type=new_type,
        window_start=window[0] if window else None,
        window_end=window[1] if window else None,
        state=CallbackState.PENDING,
        created_at=now,
    )
    s.add(cb)
    s.flush()
    contact.state = ContactState.CALLBACK
    when_text = f"{due.local:%Y-%m-%d %H:%M} ({due.zone})"
    s.add(
        CaseEvent(
            contact_id=contact_id,
            kind=SCHEDULED,
            data={"callback_id": cb.id, "by": by, "due_at": due.utc.isoformat(), "note": due.note},
            text=f"Callback scheduled by {by}: {when_text}, to {target or 'the current number'}",
            created_at=now,
        )
    )
    log.info("callback %s scheduled by %s for contact %s: %s", cb.id, by, contact_id, when_text)
    return {"callback": describe(s, cb, zone), "notes": [n for n in [due.note] if n]}
