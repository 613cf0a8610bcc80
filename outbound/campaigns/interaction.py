"""The interaction an agent works on: its state machine, case information, Origin, mark done.

Where the state lives. An interaction has two halves, and each is stored once, where it
already is, so nothing can drift:

- before any dial (a preview record, a callback offered to an agent) there is no call
  attempt yet: an `Offer` row (migration 0003) says who sees which record, the caller ID
  they chose, and how it ended (dialed, declined "call later" / "do not call", expired);
- from the dial on, the `CallAttempt` row is the interaction: the AMI bridge already
  writes its state and `connected_at`, and "mark done" writes its `disposition`. The
  progressive dialer decides who is free from the same columns (`agent_is_free`).

A separate state column would have to be kept in step by the bridge, the dialer and this
module, and would sooner or later disagree with the attempt it describes; so the state is
*derived* (`derive_state`) and every action checks its event against the derived state
with the explicit table below before it writes, logging `state --event--> state`.

The contract with the dialing loop (ami_bridge/dialer.py): an attempt connected to an
agent is in wrap-up until "mark done" sets its disposition (the code, or "" when the
campaign needs none); an agent is free when they have no live attempt and no connected,
ended attempt without a disposition.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import Conflict, Invalid, NotFound, OutboundError
from ..model import (
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Campaign,
    CaseEvent,
    Contact,
    ContactState,
    DialMode,
    transaction,
    utcnow,
)
from ..model.tables import Offer, OfferState
from .attempts import apply_treatment
from .availability import agent_is_free, agents_in_wrapup
from .feedback import NotAllowed
from .treatments import treatment_for

log = logging.getLogger("outbound.interaction")

CONNECTING_ORIGIN = "Outbound campaign call - connecting..."
CALLBACK_ORIGIN = "Callback"
PERSONAL_CALLBACK_ORIGIN = "Personal callback"
_DTMF = re.compile(r"^[0-9*#A-D]{1,32}\Z")

__all__ = [
    "IState",
    "IllegalInteraction",
    "NotAllowed",
    "agent_is_free",
    "agents_in_wrapup",
    "case_info",
    "derive_state",
    "done_and_stop",
    "mark_done",
    "origin",
    "record_dtmf",
]


class IState(StrEnum):
    PREVIEWING = "previewing"  # the agent sees the record; nothing dialed
    DIALING = "dialing"  # preview: the agent dialed, the contact has not answered
    CONNECTING = "connecting"  # progressive / predictive: the system places the call
    CONNECTED = "connected"  # the contact is in the agent's bridge
    WRAPUP = "wrapup"  # the call ended; the agent has not marked it done
    NOT_CONNECTED = "not_connected"  # ended unanswered (busy, no answer...): agent free
    DONE = "done"  # marked done: disposition written
    DECLINED = "declined"  # preview declined: call later / do not call
    EXPIRED = "expired"  # preview left past its lease; the record went on


X = IState

# (state, event) -> new state. Events "connect" and "end" are the bridge's (it writes the
# attempt); the others are the agent's actions here and in outbound.campaigns.preview.
TRANSITIONS: dict[tuple[IState, str], IState] = {
    (X.PREVIEWING, "choose_caller_id"): X.PREVIEWING,
    (X.PREVIEWING, "dial"): X.DIALING,  # preview / push preview: the agent dials
    (X.PREVIEWING, "accept"): X.CONNECTING,  # progressive interaction preview: accepted
    (X.PREVIEWING, "decline"): X.DECLINED,
    (X.PREVIEWING, "expire"): X.EXPIRED,
    (X.DIALING, "connect"): X.CONNECTED,
    (X.CONNECTING, "connect"): X.CONNECTED,
    (X.DIALING, "end"): X.NOT_CONNECTED,
    (X.CONNECTING, "end"): X.NOT_CONNECTED,
    (X.CONNECTED, "end"): X.WRAPUP,
    (X.WRAPUP, "mark_done"): X.DONE,
    (X.NOT_CONNECTED, "mark_done"): X.DONE,
}

_WHY_NOT = {
    X.CONNECTED: "the call is still connected: end it first",
    X.DIALING: "the call is still being placed",
    X.CONNECTING: "the call is still being placed",
    X.DONE: "it is already marked done",
    X.DECLINED: "it was declined",
    X.EXPIRED: "it expired and went to the list again",
}


class IllegalInteraction(Conflict):
    """An action that makes no sense in the interaction's state (e.g. mark done while the
    call is still connected, or dial a record already declined); nothing was changed."""


def next_state(state: IState, event: str) -> IState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        why = _WHY_NOT.get(state, f"it is {state.value}")
        raise IllegalInteraction(
            f"interaction in state {state.value} cannot '{event}': {why}"
        ) from None


def step(ref: str | int, state: IState, event: str) -> IState:
    """Check `event` against the table and log the transition; the caller then writes the
    row(s) the new state is derived from."""
    new = next_state(state, event)
    log.info("interaction %s: %s --%s--> %s", ref, state.value, event, new.value)
    return new


# ---------------------------------------------------------------- pure: derivation
def attempt_interaction_state(
    mode: DialMode, state: AttemptState, connected: bool, disposition: str | None
) -> IState:
    """The interaction state a call attempt's columns mean."""
    if state is not AttemptState.ENDED:
        if connected or state is AttemptState.CONNECTED:
            return X.CONNECTED
        return X.DIALING if mode in (DialMode.PREVIEW, DialMode.PUSH_PREVIEW) else X.CONNECTING
    if disposition is not None:
        return X.DONE
    return X.WRAPUP if connected else X.NOT_CONNECTED


_OFFER_STATES = {
    OfferState.OPEN: X.PREVIEWING,
    OfferState.CALL_LATER: X.DECLINED,
    OfferState.DO_NOT_CALL: X.DECLINED,
    OfferState.REJECTED: X.DECLINED,  # a pushed record the agent rejected
    OfferState.EXPIRED: X.EXPIRED,
}


def derive_state(mode: DialMode, offer: Offer | None, attempt: CallAttempt | None) -> IState:
    """The interaction state from its rows: the attempt once there is one, else the offer."""
    if attempt is not None:
        return attempt_interaction_state(
            mode, attempt.state, attempt.connected_at is not None, attempt.disposition
        )
    if offer is None:
        raise NotFound("no interaction: neither an offer nor a call attempt")
    if offer.state is OfferState.DIALED:
        raise NotFound(f"offer {offer.id} was dialed but its call attempt is gone")
    return _OFFER_STATES[offer.state]


def origin(
    mode: DialMode, state: IState | None, name: str, number: str | None, callback: str | None
) -> str:
    """The Origin field of the case information (seeds: "Ursprung").

    A rescheduled call says `Callback` / `Personal callback` (`callback`: "pooled" /
    "personal") from its preview on. Otherwise, while a progressive / predictive call is
    being placed: `Outbound campaign call - connecting...`; before that (a preview) and
    once connected: the contact's name, else the number. An agent joined only after the
    answer (predictive with classification) never sees an attempt in `connecting`, so
    never sees "connecting..."."""
    if callback == "personal":
        return PERSONAL_CALLBACK_ORIGIN
    if callback is not None:
        return CALLBACK_ORIGIN
    if state is X.CONNECTING and mode in (DialMode.PROGRESSIVE, DialMode.PREDICTIVE):
        return CONNECTING_ORIGIN
    return name.strip() or number or ""


def check_disposition(codes: list[Any], required: bool, disposition: str | None) -> str:
    """The disposition to store: one of the campaign's codes, or "" when it has none (or
    none is required and none was given). Raises Invalid naming the codes otherwise."""
    d = (disposition or "").strip()
    allowed = [str(c) for c in codes]
    if not allowed:
        if d:
            raise Invalid(f"this campaign has no disposition codes; {d!r} cannot be given")
        return ""
    if not d:
        if required:
            raise Invalid(
                "a disposition code is required to mark this call done: one of "
                + ", ".join(allowed)
            )
        return ""
    if d not in allowed:
        raise Invalid(f"unknown disposition code {d!r}: one of {', '.join(allowed)}")
    return d


def check_caller_id(ask: bool, caller_ids: list[Any], chosen: str | None) -> str | None:
    """The caller ID a dial presents: the agent's choice (one of the campaign's, required
    when the campaign asks), else the campaign's first, else None (trunk default)."""
    allowed = [str(c) for c in caller_ids]
    if chosen is not None and chosen.strip():
        c = chosen.strip()
        if c not in allowed:
            listed = ", ".join(allowed) if allowed else "none are configured"
            raise Invalid(f"caller ID {c!r} is not one of this campaign's: {listed}")
        return c
    if ask and allowed:
        raise Invalid("choose a caller ID before dialing: one of " + ", ".join(allowed))
    return allowed[0] if allowed else None


# ---------------------------------------------------------------- case information
def _callback_kind(s: Session, cb: Callback | None) -> str | None:
    if cb is None:
        return None
    return "personal" if cb.personal else "pooled"


def attempt_callback(s: Session, a: CallAttempt) -> Callback | None:
    """The callback an attempt fired: named in its audit when dialed from an offer, else
    (a callback dialed by the dialer) the contact's latest callback due before it."""
    if not a.is_callback:
        return None
    cb_id = a.audit.get("callback_id") if isinstance(a.audit, dict) else None
    if cb_id is not None:
        return s.get(Callback, int(cb_id))
    return s.scalar(
        select(Callback)
        .where(
            Callback.contact_id == a.contact_id,
            Callback.state.in_((CallbackState.QUEUED, CallbackState.DONE)),
            Callback.due_at <= a.created_at,
        )
        .order_by(Callback.due_at.desc(), Callback.id.desc())
        .limit(1)
    )


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def case_info(session: Session, item: CallAttempt | Offer | Contact) -> dict[str, Any]:
    """The case information panel: contact fields, numbers (which one is dialed), attempt
    history, earlier dispositions, DTMF sent, the case history, and the Origin field.

    `item` is the interaction (its attempt, or its offer before a dial), or a contact:
    then its live attempt, else its open offer, else no interaction (state None)."""
    s = session
    attempt: CallAttempt | None = None
    offer: Offer | None = None
    if isinstance(item, CallAttempt):
        attempt = item
        contact = s.get(Contact, item.contact_id)
    elif isinstance(item, Offer):
        offer = item
        if item.attempt_id is not None:
            attempt = s.get(CallAttempt, item.attempt_id)
        contact = s.get(Contact, item.contact_id)
    elif isinstance(item, Contact):
        contact = item
        attempt = s.scalar(
            select(CallAttempt).where(
                CallAttempt.contact_id == item.id, CallAttempt.state != AttemptState.ENDED
            )
        )
        if attempt is None:
            offer = s.scalar(
                select(Offer).where(Offer.contact_id == item.id, Offer.state == OfferState.OPEN)
            )
    else:
        raise Invalid(f"case information needs an attempt, offer or contact, not {item!r}")
    if contact is None:
        raise NotFound("the interaction's contact no longer exists")
    campaign = s.get(Campaign, contact.campaign_id)
    assert campaign is not None
    numbers = list(contact.numbers)
    dialed: str | None
    if attempt is not None:
        dialed = attempt.e164
    elif offer is not None and offer.e164:
        dialed = offer.e164
    else:
        dialed = numbers[min(contact.number_index, len(numbers) - 1)].e164 if numbers else None
    if offer is None and attempt is not None:
        offer = s.scalar(select(Offer).where(Offer.attempt_id == attempt.id))
    state = derive_state(campaign.mode, offer, attempt) if (offer or attempt) else None
    cb = None
    if attempt is not None:
        cb = attempt_callback(s, attempt)
    elif offer is not None and offer.callback_id is not None:
        cb = s.get(Callback, offer.callback_id)
    attempts = s.scalars(
        select(CallAttempt)
        .where(CallAttempt.contact_id == contact.id)
        .order_by(CallAttempt.attempt_no)
    ).all()
    events = s.scalars(
        select(CaseEvent)
        .where(CaseEvent.contact_id == contact.id)
        .order_by(CaseEvent.created_at, CaseEvent.id)
    ).all()
    return {
        "contact": {
            "id": contact.id,
            "external_key": contact.external_key,
            "name": contact.name,
            "timezone": contact.timezone,
            "state": contact.state.value,
            "attempts": contact.attempts,
            "fields": dict(contact.fields),
        },
        "campaign": {"id": campaign.id, "name": campaign.name, "mode": campaign.mode.value},
        "numbers": [
            {"number": n.e164, "type": n.type.value, "dialed": n.e164 == dialed} for n in numbers
        ],
        "dialed_number": dialed,
        "origin": origin(campaign.mode, state, contact.name, dialed, _callback_kind(s, cb)),
        "state": state.value if state else None,
        "attempt_id": attempt.id if attempt else None,
        "offer_id": offer.id if offer else None,
        "caller_id": (attempt.caller_id if attempt else offer.caller_id if offer else None),
        "caller_ids": list(campaign.caller_ids),
        "ask_caller_id": campaign.ask_caller_id,
        "disposition_codes": list(campaign.disposition_codes),
        "disposition_required": campaign.disposition_required,
        "attempts": [
            {
                "attempt_id": a.id,
                "attempt_no": a.attempt_no,
                "at": _iso(a.originated_at or a.created_at),
                "number": a.e164,
                "state": a.state.value,
                "result": a.result.value if a.result else None,
                "disposition": a.disposition,
                "agent_id": a.agent_id,
                "callback": a.is_callback,
            }
            for a in attempts
        ],
        "dispositions": [
            {
                "attempt_id": a.id,
                "at": _iso(a.ended_at),
                "code": a.disposition,
                "agent_id": a.agent_id,
            }
            for a in attempts
            if a.disposition
        ],
        "dtmf": [
            {"at": _iso(e.created_at), "digits": e.data.get("digits"), "attempt_id": e.attempt_id}
            for e in events
            if e.kind == "dtmf"
        ],
        "history": [
            {
                "at": _iso(e.created_at),
                "kind": e.kind,
                "text": e.text,
                "data": dict(e.data),
                "agent_id": e.agent_id,
                "attempt_id": e.attempt_id,
            }
            for e in events
        ],
    }


# ---------------------------------------------------------------- agent actions on a call
def own_attempt(s: Session, attempt_id: str, agent_id: str) -> CallAttempt:
    """The attempt, locked, when it is `agent_id`'s interaction; NotAllowed otherwise."""
    if not isinstance(attempt_id, str) or not 0 < len(attempt_id) <= 36:
        raise Invalid(f"not a call attempt id: {attempt_id!r}")
    a = s.get(CallAttempt, attempt_id, with_for_update=True)
    if a is None:
        raise NotFound(f"no call attempt {attempt_id}")
    if a.agent_id is None or a.agent_id != agent_id:
        raise NotAllowed(
            f"call {attempt_id} is not agent {agent_id}'s interaction: "
            "an agent acts only on their own"
        )
    return a


def record_dtmf(
    factory: sessionmaker[Session], attempt_id: str, agent_id: str, digits: str
) -> dict[str, Any]:
    """Digits the agent sent into the call, in the contact's case history (the bridge
    plays them with AMI PlayDTMF, then records them here)."""
    if not isinstance(digits, str) or not _DTMF.match(digits):
        raise Invalid(f"not DTMF digits (0-9 * # A-D, at most 32): {digits!r}")
    with transaction(factory) as s:
        a = own_attempt(s, attempt_id, agent_id)
        s.add(
            CaseEvent(
                contact_id=a.contact_id,
                attempt_id=a.id,
                agent_id=agent_id,
                kind="dtmf",
                data={"digits": digits},
                text=f"DTMF sent: {digits}",
            )
        )
    return {"attempt_id": attempt_id, "digits": digits}


def _treat_by_disposition(
    s: Session, campaign: Campaign, contact: Contact, a: CallAttempt, code: str, at: datetime
) -> dict[str, Any] | None:
    """Apply the campaign's treatment keyed on the disposition code, if it has one, with
    the same code as a call result's (apply_treatment with the code as the key)."""
    if not code or code not in campaign.treatments:
        return None
    if contact.state in (ContactState.DNC, ContactState.CALLBACK):
        return None  # a callback or the do-not-call list decides, not the code
    apply_treatment(s, campaign, contact, a.result or CallResult.ANSWERED, at, key=code)
    return treatment_for(campaign.treatments, code)


def _refuse_on_callback_error(a: CallAttempt) -> None:
    """An invalid "schedule callback" on this call stands (outbound.callbacks keeps its
    reason in the audit until a valid schedule or a cancel): closing the interaction now
    would silently drop the callback the contact was promised (seeds: fix it first)."""
    err = (a.audit or {}).get("callback_error") if isinstance(a.audit, dict) else None
    if err:
        raise IllegalInteraction(f"fix or cancel the callback first: {err}")


def mark_done(
    factory: sessionmaker[Session],
    attempt_id: str,
    agent_id: str,
    disposition: str | None = None,
    *,
    queue: Any | None = None,
    now: datetime | None = None,
    auto_next: bool = True,
) -> dict[str, Any]:
    """Close the agent's interaction with a disposition code (required when the campaign
    says so; "" when it has none), apply the campaign's treatment keyed on that code when
    there is one, and write the case history. Then, with `queue` (the campaign's
    DialQueue): settle a lease the agent still holds on the record and, in a preview
    campaign, preview the next record unless the agent chose "done and stop" (`next`).

    A pending callback scheduled on the call keeps the contact in state callback (the
    treatment leaves such a contact alone). Refusals (nothing changed): NotAllowed (not
    the agent's call), Invalid (missing or unknown code), IllegalInteraction (still
    connected, already done, or an invalid callback not yet fixed or cancelled)."""
    from ..live import preview_stopped
    from .preview import get_record, lease_owner

    now = now or utcnow()
    with transaction(factory) as s:
        a = own_attempt(s, attempt_id, agent_id)
        campaign = s.get(Campaign, a.campaign_id)
        contact = s.get(Contact, a.contact_id, with_for_update=True)
        assert campaign is not None and contact is not None
        state = derive_state(campaign.mode, None, a)
        next_state(state, "mark_done")  # refuse before validating the code
        _refuse_on_callback_error(a)
        code = check_disposition(
            campaign.disposition_codes, campaign.disposition_required, disposition
        )
        step(a.id, state, "mark_done")
        a.disposition = code
        treatment = _treat_by_disposition(s, campaign, contact, a, code, now)
        if treatment is not None:
            a.audit = {**a.audit, "disposition_treatment": {"code": code, **treatment}}
        s.add(
            CaseEvent(
                contact_id=contact.id,
                attempt_id=a.id,
                agent_id=agent_id,
                kind="disposition",
                data={"code": code, "treatment": treatment},
                text=f"Marked done: {code}" if code else "Marked done",
            )
        )
        out: dict[str, Any] = {
            "attempt_id": a.id,
            "contact_id": contact.id,
            "campaign_id": campaign.id,
            "state": X.DONE.value,
            "disposition": code,
            "treatment": treatment,
            "contact_state": contact.state.value,
            "next_at": _iso(contact.next_at),
            "next": None,
        }
        mode, contact_id = campaign.mode, contact.id
    if queue is not None:
        try:
            queue.settle(contact_id, lease_owner(agent_id))
        except Conflict:
            pass  # the lease lapsed and another holds the record: theirs to settle
        if auto_next and mode is DialMode.PREVIEW and not preview_stopped(queue.redis, agent_id):
            try:
                out["next"] = get_record(factory, queue, agent_id, campaign.id, now=now)
            except OutboundError as exc:  # e.g. not Ready any more: no next record
                out["next"] = {"status": "none", "message": str(exc)}
    return out


def done_and_stop(
    factory: sessionmaker[Session],
    redis: Any,
    attempt_id: str,
    agent_id: str,
    disposition: str | None = None,
    *,
    queue: Any | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Mark done, and stop new preview records (the automatic next one, pushed ones)
    until the agent's next "get record" (a flag in the agent's live hash). The flag is set
    before the mark done and put back when it is refused: everything as it was."""
    from ..live import set_preview_stopped

    with factory() as s:
        a = own_attempt(s, attempt_id, agent_id)
        campaign = s.get(Campaign, a.campaign_id)
        assert campaign is not None
        if campaign.mode not in (DialMode.PREVIEW, DialMode.PUSH_PREVIEW):
            raise Conflict(
                f"'done and stop' is for preview campaigns; {campaign.name!r} is "
                f"{campaign.mode.value}: use mark done"
            )
    # The flag first: between mark done and the flag the bridge could push a record.
    from ..live import preview_stopped

    was = preview_stopped(redis, agent_id)
    set_preview_stopped(redis, agent_id, True)
    try:
        out = mark_done(
            factory, attempt_id, agent_id, disposition, queue=queue, now=now, auto_next=False
        )
    except BaseException:
        set_preview_stopped(redis, agent_id, was)  # refused: everything as it was
        raise
    out["stopped"] = True
    return out
