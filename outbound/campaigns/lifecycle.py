"""Campaign creation and lifecycle: created -> loaded -> running -> stopped -> unloaded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import Conflict, Invalid, NotFound
from ..model import Campaign, CampaignState, Contact, ContactState, DialMode
from ..phones import InvalidNumber, normalize
from .treatments import validate_treatment

S = CampaignState

# event name -> {from states} -> to state
TRANSITIONS: dict[str, tuple[frozenset[CampaignState], CampaignState]] = {
    "load": (frozenset({S.CREATED, S.UNLOADED}), S.LOADED),
    "start": (frozenset({S.LOADED, S.STOPPED}), S.RUNNING),
    "stop": (frozenset({S.RUNNING}), S.STOPPED),
    "unload": (frozenset({S.LOADED, S.STOPPED}), S.UNLOADED),
}


@dataclass(frozen=True)
class LifecycleEvent:
    """What a transition did; agents are notified of `load` and `start`."""

    campaign_id: int
    campaign: str
    event: str
    old: CampaignState
    new: CampaignState

    @property
    def notify_agents(self) -> bool:
        return self.event in ("load", "start")


def get_campaign(s: Session, name_or_id: str | int) -> Campaign:
    q = select(Campaign)
    if isinstance(name_or_id, int) or str(name_or_id).isdigit():
        c = s.get(Campaign, int(name_or_id))
        if c is None:
            c = s.scalar(q.where(Campaign.name == str(name_or_id)))
    else:
        c = s.scalar(q.where(Campaign.name == name_or_id))
    if c is None:
        raise NotFound(f"no campaign named {name_or_id!r}")
    return c


def parse_hhmm(v: str, what: str) -> time:
    try:
        hh, mm = v.split(":")
        return time(int(hh), int(mm))
    except (ValueError, TypeError):
        raise Invalid(f"{what}: {v!r} is not a time of day HH:MM") from None


def create_campaign(
    s: Session,
    name: str,
    mode: str,
    *,
    description: str = "",
    caller_ids: list[str] | None = None,
    ask_caller_id: bool = False,
    region: str = "DE",
    calling_hours: tuple[str, str] = ("08:00", "21:00"),
    max_attempts: int = 5,
    dispositions: list[str] | None = None,
    disposition_required: bool = False,
    abandon_target: float = 0.03,
    trunk: str | None = None,
    treatments: dict[str, Any] | None = None,
    interaction_preview: bool = False,
    push_timeout_s: int = 30,
) -> Campaign:
    """Validate everything, then add the campaign (state `created`)."""
    name = name.strip()
    if not name or len(name) > 100 or any(c in name for c in "\r\n\0/"):
        raise Invalid("campaign name must be 1-100 characters without / or control characters")
    try:
        dial_mode = DialMode(mode)
    except ValueError:
        raise Invalid(
            f"mode {mode!r} is not one of {', '.join(m.value for m in DialMode)}"
        ) from None
    if s.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise Conflict(f"a campaign named {name!r} already exists")
    cids: list[str] = []
    for raw in caller_ids or []:
        try:
            cids.append(normalize(raw, region))
        except InvalidNumber as exc:
            raise Invalid(f"caller ID {raw!r}: {exc}") from None
    start, end = (
        parse_hhmm(calling_hours[0], "calling hours from"),
        parse_hhmm(calling_hours[1], "calling hours to"),
    )
    if not start < end:
        raise Invalid("calling hours: 'from' must be before 'to'")
    if not 1 <= max_attempts <= 100:
        raise Invalid("max attempts must be between 1 and 100")
    if not 0 < abandon_target <= 0.5:
        raise Invalid("abandon target must be a fraction between 0 and 0.5 (e.g. 0.03)")
    codes = [d.strip() for d in dispositions or [] if d.strip()]
    for d in codes:
        if len(d) > 60 or any(c in d for c in "\r\n\0"):
            raise Invalid(f"disposition code {d!r} is too long or has control characters")
    if disposition_required and not codes:
        raise Invalid("a disposition is required but no disposition codes are given")
    if trunk is not None and ("${NUMBER}" not in trunk or any(c in trunk for c in "\r\n\0")):
        raise Invalid("trunk must be a dial string containing ${NUMBER}")
    checked = {k: validate_treatment(k, v) for k, v in (treatments or {}).items()}
    if interaction_preview and dial_mode is not DialMode.PROGRESSIVE:
        raise Invalid("an interaction preview is for progressive campaigns only")
    if not 5 <= push_timeout_s <= 600:
        raise Invalid("the time to accept a pushed record must be 5-600 seconds")
    c = Campaign(
        name=name,
        description=description,
        mode=dial_mode,
        caller_ids=cids,
        ask_caller_id=ask_caller_id,
        calling_hours_start=start,
        calling_hours_end=end,
        max_attempts=max_attempts,
        disposition_codes=codes,
        disposition_required=disposition_required,
        abandon_target=abandon_target,
        trunk=trunk,
        treatments=checked,
        interaction_preview=interaction_preview,
        push_timeout_s=push_timeout_s,
    )
    s.add(c)
    s.flush()
    return c


def transition(s: Session, name_or_id: str | int, event: str) -> LifecycleEvent:
    """Apply a lifecycle event; an illegal one raises Conflict and changes nothing."""
    if event not in TRANSITIONS:
        raise Invalid(f"unknown lifecycle event {event!r}")
    c = get_campaign(s, name_or_id)
    allowed, new = TRANSITIONS[event]
    if c.state not in allowed:
        raise Conflict(
            f"cannot {event} campaign {c.name!r}: it is {c.state.value} "
            f"(allowed from {', '.join(sorted(x.value for x in allowed))})"
        )
    old = c.state
    c.state = new
    s.flush()
    return LifecycleEvent(c.id, c.name, event, old, new)


def campaign_summary(s: Session, c: Campaign) -> dict[str, Any]:
    counts = dict(
        s.execute(
            select(Contact.state, func.count())
            .where(Contact.campaign_id == c.id)
            .group_by(Contact.state)
        ).all()
    )
    return {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "mode": c.mode.value,
        "delivery_mode": c.mode.delivery,
        "state": c.state.value,
        "caller_ids": c.caller_ids,
        "ask_caller_id": c.ask_caller_id,
        "calling_hours": [
            c.calling_hours_start.strftime("%H:%M"),
            c.calling_hours_end.strftime("%H:%M"),
        ],
        "max_attempts": c.max_attempts,
        "disposition_codes": c.disposition_codes,
        "disposition_required": c.disposition_required,
        "abandon_target": c.abandon_target,
        "interaction_preview": c.interaction_preview,
        "push_timeout_s": c.push_timeout_s,
        "trunk": c.trunk,
        "treatments": c.treatments,
        "contacts": {st.value: int(counts.get(st, 0)) for st in ContactState},
    }
