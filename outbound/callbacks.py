"""Callbacks (rescheduling): the agent's actions (schedule, edit, cancel) and the admin's
(list, show, cancel). The pure rules (the DST rule for the entered time, the reachability
window, the number) are in outbound.callback_rules and re-exported here. Firing a due
callback and routing it to an agent are the scheduler's and the preview's work.

Times. The agent enters date and time on their wall clock (`Agent.timezone`); a time in
the spring-forward gap is moved forward by the gap (02:30 -> 03:30 in Europe/Berlin on
the last Sunday of March) and a time in the autumn fold means its first occurrence; both
are reported in the answer's `notes`. The From / To window is on the contact's wall clock
(`Contact.timezone`, else the zone of the number to call) on the callback day. Stored:
`due_at` in UTC, the window as wall-clock times.

The interaction. A callback is made on the agent's OWN interaction: a call attempt (during
the call or after hang-up, until it is marked done) or an open preview record (offer).
Each interaction has at most one pending callback: scheduling again edits it. Invalid
input raises Invalid and, on a call, is remembered in the attempt's audit
(`callback_error`): "mark done" is refused while it stands (seeds: an invalid callback
must be fixed or cancelled before the interaction is closed); a valid schedule, a cancel
or `discard` clears it. `Callback` has only `attempt_id`, so the link offer -> callback
lives in the `callback_scheduled` case event's data.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .callback_rules import (
    MAX_AHEAD,
    TYPES,
    Due,
    Request,
    check_future,
    check_new_number,
    check_window,
    due_of,
    parse_hhmm,
    parse_local,
    pick_number,
    resolve_due,
    window_of,
    zone,
)
from .errors import Conflict, Invalid, NotFound
from .model import (
    Agent,
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    Campaign,
    CaseEvent,
    Contact,
    ContactState,
    PhoneNumber,
    PhoneType,
    transaction,
    utcnow,
)
from .model.tables import Offer, OfferState
from .phones import timezone_for

__all__ = [
    "MAX_AHEAD",
    "TYPES",
    "Due",
    "Request",
    "admin_cancel",
    "cancel",
    "check_future",
    "check_new_number",
    "check_window",
    "describe",
    "discard",
    "due_of",
    "edit",
    "list_callbacks",
    "my_callbacks",
    "parse_hhmm",
    "parse_local",
    "pick_number",
    "resolve_due",
    "schedule",
    "show",
    "window_of",
    "zone",
]

log = logging.getLogger("outbound.callbacks")

CALLBACK_ERROR = "callback_error"  # key in CallAttempt.audit: the standing validation error
SCHEDULED, CANCELLED = "callback_scheduled", "callback_cancelled"  # case event kinds
ACTIVE = (CallbackState.PENDING, CallbackState.QUEUED)


# ---------------------------------------------------------------- the interaction
@dataclass
class _Ix:
    """The agent's open interaction a callback is scheduled on."""

    contact: Contact
    campaign: Campaign
    attempt: CallAttempt | None = None
    offer: Offer | None = None

    @property
    def e164(self) -> str | None:
        return self.attempt.e164 if self.attempt else self.offer.e164 if self.offer else None

    def ref(self) -> dict[str, Any]:
        return {
            "attempt_id": self.attempt.id if self.attempt else None,
            "offer_id": self.offer.id if self.offer else None,
        }


def _one_of(attempt_id: str | None, offer_id: int | None) -> None:
    if (attempt_id is None) == (offer_id is None):
        raise Invalid("give the interaction: either attempt_id (a call) or offer_id (a preview)")


def _open_interaction(
    s: Session, agent_id: str, attempt_id: str | None, offer_id: int | None
) -> _Ix:
    """The agent's own interaction, locked, while it is open; NotAllowed for another's,
    Conflict once it is closed (marked done / the preview closed)."""
    from .campaigns.interaction import own_attempt
    from .campaigns.preview import _own_offer

    _one_of(attempt_id, offer_id)
    if attempt_id is not None:
        a = own_attempt(s, attempt_id, agent_id)
        if a.disposition is not None:
            raise Conflict(
                f"call {a.id} is already marked done: its callback can no longer be "
                "scheduled, changed or cancelled"
            )
        # locked after the attempt, like mark done and the bridge's settle
        contact = s.get(Contact, a.contact_id, with_for_update=True)
        campaign = s.get(Campaign, a.campaign_id)
        assert contact is not None and campaign is not None
        return _Ix(contact, campaign, attempt=a)
    assert offer_id is not None
    offer, campaign = _own_offer(s, offer_id, agent_id)
    if offer.state is not OfferState.OPEN:
        raise Conflict(
            f"preview record {offer.id} is closed ({offer.state.value}): its callback can "
            "no longer be scheduled, changed or cancelled"
        )
    contact = s.get(Contact, offer.contact_id, with_for_update=True)
    assert contact is not None
    return _Ix(contact, campaign, offer=offer)


def _offer_callbacks(s: Session, contact_id: int) -> dict[int, int]:
    """callback id -> the offer it was scheduled on, from the case history."""
    out: dict[int, int] = {}
    for data in s.scalars(
        select(CaseEvent.data).where(
            CaseEvent.contact_id == contact_id, CaseEvent.kind == SCHEDULED
        )
    ):
        if isinstance(data, dict) and data.get("offer_id") and data.get("callback_id"):
            out[int(data["callback_id"])] = int(data["offer_id"])
    return out


def _pending_of(s: Session, ix: _Ix) -> Callback | None:
    """The interaction's pending callback (at most one)."""
    q = select(Callback).where(Callback.state == CallbackState.PENDING)
    if ix.attempt is not None:
        q = q.where(Callback.attempt_id == ix.attempt.id)
    else:
        assert ix.offer is not None
        mine = [cb for cb, o in _offer_callbacks(s, ix.contact.id).items() if o == ix.offer.id]
        q = q.where(Callback.id.in_(mine), Callback.attempt_id.is_(None))
    return s.scalar(q.order_by(Callback.id.desc()).limit(1).with_for_update())


def _interaction_of(s: Session, cb: Callback) -> tuple[str | None, int | None]:
    if cb.attempt_id is not None:
        return cb.attempt_id, None
    offer_id = _offer_callbacks(s, cb.contact_id).get(cb.id)
    if offer_id is None:
        raise Conflict(f"callback {cb.id} was not scheduled on an interaction (an admin's?)")
    return None, offer_id


def _set_error(a: CallAttempt | None, message: str | None) -> None:
    if a is None:
        return
    audit = {k: v for k, v in (a.audit or {}).items() if k != CALLBACK_ERROR}
    if message:
        audit[CALLBACK_ERROR] = message
    if audit != a.audit:
        a.audit = audit


def _remember_error(
    factory: sessionmaker[Session], agent_id: str, attempt_id: str, msg: str
) -> None:
    """Keep an invalid schedule's reason on the agent's open call (blocks mark done)."""
    try:
        with transaction(factory) as s:
            _set_error(_open_interaction(s, agent_id, attempt_id, None).attempt, msg)
    except (Conflict, NotFound, Invalid):
        pass  # not the agent's, or closed meanwhile: nothing to block


# ---------------------------------------------------------------- agent actions
def schedule(
    factory: sessionmaker[Session],
    agent_id: str,
    *,
    attempt_id: str | None = None,
    offer_id: int | None = None,
    when: str | datetime,
    personal: bool,
    number: str | int | None = None,
    new_number: str | None = None,
    new_number_type: str | PhoneType | None = None,
    window_from: str | time | None = None,
    window_to: str | time | None = None,
    now: datetime | None = None,
    region: str = "DE",
    callback_id: int | None = None,
) -> dict[str, Any]:
    """Schedule a callback on the agent's own open interaction (call `attempt_id` or
    preview `offer_id`), or edit the one it has (`callback_id`: it must be that one).

    Writes the callback (state pending), a `callback_scheduled` case event, and puts the
    contact in state callback (the call's result treatment then leaves it there). Refusals:
    NotAllowed (another agent's), NotFound, Conflict (the interaction is closed), Invalid
    (the message says what to fix; on a call it also blocks mark done until fixed or
    cancelled). `region` reads national numbers (the config's default region)."""
    _one_of(attempt_id, offer_id)
    req = Request(when, personal, number, new_number, new_number_type, window_from, window_to)
    now = now or utcnow()
    try:
        with transaction(factory) as s:
            ix = _open_interaction(s, agent_id, attempt_id, offer_id)
            existing = _pending_of(s, ix)
            if callback_id is not None and (existing is None or existing.id != callback_id):
                raise Conflict(f"callback {callback_id} is no longer pending on its interaction")
            return _write(s, ix, agent_id, req, existing, now, region)
    except Invalid as exc:
        if attempt_id is not None:
            _remember_error(factory, agent_id, attempt_id, str(exc))
        raise


def _write(
    s: Session,
    ix: _Ix,
    agent_id: str,
    req: Request,
    cb: Callback | None,
    now: datetime,
    region: str,
) -> dict[str, Any]:
    if not isinstance(req.personal, bool):
        raise Invalid("personal must be true (routed to me) or false (any agent)")
    if ix.contact.state is ContactState.DNC:
        raise Conflict(f"contact {ix.contact.id} is on the do-not-call list: no callback")
    agent = s.get(Agent, agent_id)
    assert agent is not None
    due = due_of(req, agent.timezone)
    check_future(due, now)
    pn, new_e164, new_type = pick_number(list(ix.contact.numbers), req, region, ix.e164)
    target = new_e164 or (pn.e164 if pn else ix.e164)
    tz = ix.contact.timezone or (timezone_for(target) if target else None)
    window = window_of(req, due, tz)
    replaced = cb is not None
    if cb is None:
        cb = Callback(
            campaign_id=ix.campaign.id,
            contact_id=ix.contact.id,
            created_by=agent_id,
            attempt_id=ix.attempt.id if ix.attempt else None,
            state=CallbackState.PENDING,
            created_at=now,
        )
        s.add(cb)
    cb.due_at, cb.personal = due.utc, req.personal
    cb.agent_id = agent_id if req.personal else None
    cb.phone_number_id = pn.id if pn else None
    cb.new_number, cb.new_number_type = new_e164, new_type
    cb.window_start, cb.window_end = window or (None, None)
    s.flush()
    ix.contact.state = ContactState.CALLBACK
    _set_error(ix.attempt, None)
    kind = "personal" if req.personal else "pooled"
    when = f"{due.local:%Y-%m-%d %H:%M} ({due.zone})"
    s.add(
        CaseEvent(
            contact_id=ix.contact.id,
            attempt_id=ix.attempt.id if ix.attempt else None,
            agent_id=agent_id,
            kind=SCHEDULED,
            data={
                "callback_id": cb.id,
                **ix.ref(),
                "due_at": due.utc.isoformat(),
                "personal": req.personal,
                "number": target,
                "window": _span(cb),
                "note": due.note,
                "replaced": replaced,
            },
            text=f"{'Callback changed' if replaced else 'Callback scheduled'}: {when}, "
            f"{kind}, to {target or 'the current number'}",
            created_at=now,
        )
    )
    log.info(
        "callback %s %s by %s: due %s", cb.id, "edited" if replaced else "made", agent_id, when
    )
    out = describe(s, cb, agent.timezone)
    notes = [n for n in [due.note] if n]
    return {"callback": out, **ix.ref(), "replaced": replaced, "notes": notes}


def edit(
    factory: sessionmaker[Session], agent_id: str, callback_id: int, **fields: Any
) -> dict[str, Any]:
    """Change the agent's pending callback (same fields as `schedule`), while the
    interaction it was made on is open; only its creator may."""
    with factory() as s:
        cb = _own_callback(s, agent_id, callback_id)
        attempt_id, offer_id = _interaction_of(s, cb)
    return schedule(
        factory, agent_id, attempt_id=attempt_id, offer_id=offer_id, callback_id=cb.id, **fields
    )


def _own_callback(s: Session, agent_id: str, callback_id: int) -> Callback:
    if isinstance(callback_id, bool) or not isinstance(callback_id, int):
        raise Invalid(f"not a callback id: {callback_id!r}")
    from .campaigns.feedback import NotAllowed

    cb = s.get(Callback, callback_id)
    if cb is None:
        raise NotFound(f"no callback {callback_id}")
    if cb.created_by != agent_id:
        raise NotAllowed(
            f"callback {callback_id} is not agent {agent_id}'s: only its creator may change it"
        )
    if cb.state is not CallbackState.PENDING:
        raise Conflict(f"callback {callback_id} is {cb.state.value}: it can no longer be changed")
    return cb


def cancel(
    factory: sessionmaker[Session], agent_id: str, callback_id: int, *, now: datetime | None = None
) -> dict[str, Any]:
    """Cancel the agent's pending callback ("Schedule callback" unchecked) while its
    interaction is open: the contact goes back as if there had been no callback."""
    now = now or utcnow()
    with transaction(factory) as s:
        attempt_id, offer_id = _interaction_of(s, _own_callback(s, agent_id, callback_id))
        ix = _open_interaction(s, agent_id, attempt_id, offer_id)  # locks it first
        cb = _own_callback(s, agent_id, callback_id)
        s.refresh(cb, with_for_update=True)
        if cb.state is not CallbackState.PENDING:
            raise Conflict(
                f"callback {callback_id} is {cb.state.value}: it can no longer be changed"
            )
        _cancel_row(s, cb, ix.contact, ix.campaign, now, agent_id, "cancelled by the agent")
        _set_error(ix.attempt, None)
        return {"callback": describe(s, cb), **ix.ref()}


def discard(
    factory: sessionmaker[Session],
    agent_id: str,
    *,
    attempt_id: str | None = None,
    offer_id: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """ "Schedule callback" unchecked on an interaction: cancel its pending callback, if
    any, and drop a standing invalid attempt (so an agent whose first try was invalid can
    still mark the call done)."""
    now = now or utcnow()
    _one_of(attempt_id, offer_id)
    with transaction(factory) as s:
        ix = _open_interaction(s, agent_id, attempt_id, offer_id)
        cb = _pending_of(s, ix)
        had_error = bool(ix.attempt and (ix.attempt.audit or {}).get(CALLBACK_ERROR))
        if cb is not None:
            _cancel_row(s, cb, ix.contact, ix.campaign, now, agent_id, "cancelled by the agent")
        _set_error(ix.attempt, None)
        return {"cancelled": cb.id if cb else None, "error_cleared": had_error, **ix.ref()}


def _cancel_row(
    s: Session, cb: Callback, contact: Contact, campaign: Campaign, now: datetime, by: str, why: str
) -> None:
    cb.state = CallbackState.CANCELLED
    s.flush()
    _release_contact(s, contact, campaign, cb, now)
    s.add(
        CaseEvent(
            contact_id=contact.id,
            attempt_id=cb.attempt_id,
            agent_id=by,
            kind=CANCELLED,
            data={"callback_id": cb.id, "reason": why},
            text=f"Callback cancelled: {why}",
            created_at=now,
        )
    )
    log.info("callback %s cancelled by %s: %s", cb.id, by, why)


def _release_contact(
    s: Session, contact: Contact, campaign: Campaign, cb: Callback, now: datetime
) -> None:
    """The contact as if there had been no callback: still waiting for another active
    callback; in a call; else ready, with the treatment of the call's result (and of its
    disposition code, when the campaign keys one on it) applied again."""
    from .campaigns.attempts import apply_treatment

    if contact.state is not ContactState.CALLBACK:
        return
    other = s.scalar(
        select(Callback.id).where(
            Callback.contact_id == contact.id, Callback.state.in_(ACTIVE), Callback.id != cb.id
        )
    )
    if other is not None:
        return
    live = s.scalar(
        select(CallAttempt.id).where(
            CallAttempt.contact_id == contact.id, CallAttempt.state != AttemptState.ENDED
        )
    )
    if live is not None:
        contact.state = ContactState.IN_PROGRESS
        return
    contact.state = ContactState.READY
    a = s.get(CallAttempt, cb.attempt_id) if cb.attempt_id else None
    if a is not None and a.result is not None:
        key = a.disposition if a.disposition and a.disposition in campaign.treatments else None
        apply_treatment(s, campaign, contact, a.result, a.ended_at or now, key=key)


# ---------------------------------------------------------------- views and admin
def _span(cb: Callback) -> str | None:
    if cb.window_start is None or cb.window_end is None:
        return None
    return f"{cb.window_start:%H:%M}-{cb.window_end:%H:%M}"


def describe(s: Session, cb: Callback, tz: str | None = None) -> dict[str, Any]:
    """A callback as JSON; `tz` adds its due time on that wall clock (`due_local`)."""
    pn = s.get(PhoneNumber, cb.phone_number_id) if cb.phone_number_id else None
    out: dict[str, Any] = {
        "id": cb.id,
        "campaign_id": cb.campaign_id,
        "contact_id": cb.contact_id,
        "state": cb.state.value,
        "due_at": cb.due_at.isoformat(),
        "personal": cb.personal,
        "agent_id": cb.agent_id,
        "number": cb.new_number or (pn.e164 if pn else None),
        "number_type": (cb.new_number_type or (pn.type if pn else None) or PhoneType.OTHER).value,
        "new_number": cb.new_number is not None,
        "window": _span(cb),
        "created_by": cb.created_by,
        "attempt_id": cb.attempt_id,
        "days_tried": cb.days_tried,
        "fired_at": cb.fired_at.isoformat() if cb.fired_at else None,
        "created_at": cb.created_at.isoformat(),
    }
    if tz:
        try:
            out["due_local"] = cb.due_at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")
        except (ZoneInfoNotFoundError, ValueError, OSError):
            out["due_local"] = None
    return out


def my_callbacks(s: Session, agent_id: str) -> list[dict[str, Any]]:
    """The agent's pending callbacks: made by them, or personal ones routed to them."""
    agent = s.get(Agent, agent_id)
    tz = agent.timezone if agent else None
    rows = s.scalars(
        select(Callback)
        .where(
            Callback.state == CallbackState.PENDING,
            (Callback.created_by == agent_id) | (Callback.agent_id == agent_id),
        )
        .order_by(Callback.due_at, Callback.id)
    )
    return [describe(s, cb, tz) for cb in rows]


def list_callbacks(
    s: Session,
    campaign: str | int | None = None,
    state: str | CallbackState | None = None,
    due_before: datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Callbacks by due time, optionally of one campaign (name or id), in one state, due
    before an instant."""
    from .campaigns.lifecycle import get_campaign

    q = select(Callback)
    if campaign is not None:
        q = q.where(Callback.campaign_id == get_campaign(s, campaign).id)
    if state is not None:
        try:
            q = q.where(Callback.state == CallbackState(state))
        except ValueError:
            raise Invalid(
                f"unknown callback state {state!r}: one of "
                + ", ".join(x.value for x in CallbackState)
            ) from None
    if due_before is not None:
        if due_before.tzinfo is None:
            raise Invalid("due_before needs a time zone (or UTC)")
        q = q.where(Callback.due_at < due_before)
    rows = s.scalars(q.order_by(Callback.due_at, Callback.id).limit(limit))
    return [describe(s, cb) for cb in rows]


def show(s: Session, callback_id: int) -> dict[str, Any]:
    """One callback with its contact and the case events about it."""
    cb = s.get(Callback, callback_id)
    if cb is None:
        raise NotFound(f"no callback {callback_id}")
    out = describe(s, cb)
    contact = s.get(Contact, cb.contact_id)
    out["contact"] = {"name": contact.name, "state": contact.state.value} if contact else None
    out["offer_id"] = _offer_callbacks(s, cb.contact_id).get(cb.id)
    events = s.scalars(
        select(CaseEvent)
        .where(CaseEvent.contact_id == cb.contact_id, CaseEvent.kind.in_((SCHEDULED, CANCELLED)))
        .order_by(CaseEvent.created_at, CaseEvent.id)
    )
    out["history"] = [
        {"at": e.created_at.isoformat(), "kind": e.kind, "text": e.text, "agent_id": e.agent_id}
        for e in events
        if isinstance(e.data, dict) and e.data.get("callback_id") == cb.id
    ]
    return out


def admin_cancel(
    factory: sessionmaker[Session],
    callback_id: int,
    reason: str = "",
    *,
    by: str = "admin",
    now: datetime | None = None,
) -> dict[str, Any]:
    """An admin cancels a pending or queued callback, with a reason (case history); the
    contact goes back as if there had been no callback."""
    if not isinstance(reason, str) or len(reason) > 200 or re.search(r"[\r\n\0]", reason):
        raise Invalid("the reason must be one line of at most 200 characters")
    now = now or utcnow()
    with transaction(factory) as s:
        cb = s.get(Callback, callback_id, with_for_update=True)
        if cb is None:
            raise NotFound(f"no callback {callback_id}")
        if cb.state not in ACTIVE:
            raise Conflict(
                f"callback {callback_id} is {cb.state.value}: only pending or queued ones can be cancelled"
            )
        contact = s.get(Contact, cb.contact_id, with_for_update=True)
        campaign = s.get(Campaign, cb.campaign_id)
        assert contact is not None and campaign is not None
        _cancel_row(s, cb, contact, campaign, now, by, reason or "cancelled by an admin")
        return describe(s, cb)
