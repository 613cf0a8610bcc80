"""Dial-time compliance and "why is this record not dialing?".

`evaluate` is pure: it takes the facts about one record (loaded from the database by
`load_facts`) and a time, and says rule by rule whether the record may be dialed now and
when it next may be. The same evaluation serves the explanation (`why`, the CLI and the
API) and the gate every dial passes (`check_for_dial`, called by `create_attempt` in the
transaction that writes the attempt), so what is explained is exactly what is enforced.

Calling hours are a window on the contact's local wall clock (zoneinfo, DST-correct); a
window whose end is before its start crosses midnight (22:00-02:00). A record whose time
zone is unknown is never dialed: guessing one is how a dialer calls people at 3 a.m.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from .campaigns.treatments import treatment_for
from .errors import Conflict, Invalid, NotFound
from .model import (
    AttemptState,
    CallAttempt,
    Callback,
    CallbackState,
    CallResult,
    Campaign,
    CampaignState,
    Contact,
    ContactState,
    DialMode,
    DncEntry,
)

ABANDON_WINDOW = timedelta(hours=72)

# The order rules are reported in: the campaign, then the record, then time-based rules.
RULES = (
    "campaign",
    "contact",
    "live_call",
    "lease",
    "number",
    "dnc",
    "attempts",
    "timezone",
    "calling_hours",
    "retry_time",
    "callback",
    "abandon_72h",
)


class LeaseLike(Protocol):
    """A record handed out by the dial queue (Redis): to whom, and until when (e.g. an
    outbound.dial_queue.Lease). The caller passes it in: this module reads only the
    database."""

    @property
    def owner(self) -> str: ...

    @property
    def expires_at(self) -> datetime: ...


@dataclass(frozen=True)
class Lease:
    """A plain LeaseLike, for callers without the queue's own type."""

    owner: str
    expires_at: datetime


@dataclass(frozen=True)
class Facts:
    """Everything the rules look at for one record, as loaded from the database."""

    contact_id: int
    campaign_name: str
    campaign_state: CampaignState
    calling_hours_start: time
    calling_hours_end: time
    contact_state: ContactState
    timezone: str | None
    attempts: int
    max_attempts: int
    e164: str | None  # the number that would be dialed
    next_at: datetime | None = None  # the treatment's earliest next dial
    last_result: CallResult | None = None
    dnc: tuple[str, ...] = ()  # "global" and/or "campaign" lists holding the number
    abandoned_at: datetime | None = None  # last abandoned call to the number, within 72 h
    callback_due: datetime | None = None  # earliest pending callback
    live_attempt: str | None = None  # id of the contact's live call attempt
    lease: LeaseLike | None = None
    agent_reserved: bool = False
    external_key: str = ""


@dataclass(frozen=True)
class Rule:
    """One rule's outcome; `next_time` (failing rules only) is when it alone would pass,
    None when no time makes it pass (DNC, done, ...) or none can be predicted."""

    name: str
    ok: bool
    reason: str
    next_time: datetime | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rules: list[Rule]
    next_dialable_at: datetime | None  # now when allowed; None: no time makes it dialable
    facts: Facts
    now: datetime
    failed: list[Rule] = field(default_factory=list)

    def audit(self) -> dict[str, str]:
        """Rule name -> "ok: reason": stored on the attempt, says what allowed the dial."""
        return {r.name: ("ok: " if r.ok else "FAILED: ") + r.reason for r in self.rules}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (CLI --json and the API)."""
        zone = _zone(self.facts.timezone)
        nxt = self.next_dialable_at
        return {
            "contact_id": self.facts.contact_id,
            "external_key": self.facts.external_key,
            "campaign": self.facts.campaign_name,
            "number": self.facts.e164,
            "timezone": self.facts.timezone,
            "now": self.now.isoformat(),
            "allowed": self.allowed,
            "next_dialable_at": nxt.isoformat() if nxt else None,
            "next_dialable_local": nxt.astimezone(zone).isoformat() if nxt and zone else None,
            "rules": [
                {
                    "name": r.name,
                    "ok": r.ok,
                    "reason": r.reason,
                    "next_time": r.next_time.isoformat() if r.next_time else None,
                }
                for r in self.rules
            ],
        }

    def lines(self) -> list[str]:
        """The text form (CLI): one line per rule with a tick or a cross, its reason and
        when it passes, then the next dialable time in UTC and in the contact's zone."""
        f, now = self.facts, self.now
        out = [
            f"contact {f.contact_id} (key {f.external_key}) in campaign {f.campaign_name!r}, "
            f"number {f.e164 or '-'}, time zone {f.timezone or 'unknown'}",
            f"{'DIALABLE' if self.allowed else 'NOT dialable'} now ({_utc(now)})",
        ]
        width = max(len(r.name) for r in self.rules)
        for r in self.rules:
            until = f" (passes {_utc(r.next_time)})" if r.next_time else ""
            out.append(f"  {'✓' if r.ok else '✗'} {r.name:<{width}}  {r.reason}{until}")
        nxt, zone = self.next_dialable_at, _zone(f.timezone)
        if nxt is None:
            out.append("next dialable: not by time alone (see the ✗ rules without a time)")
        elif not self.allowed:
            local = f" = {nxt.astimezone(zone):%Y-%m-%d %H:%M %Z} ({f.timezone})" if zone else ""
            out.append(f"next dialable: {_utc(nxt)}{local}")
        return out


class NotDialable(Conflict):
    """A dial refused by the compliance rules; nothing was written."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        why = "; ".join(f"{r.name}: {r.reason}" for r in verdict.failed)
        super().__init__(f"contact {verdict.facts.contact_id} may not be dialed now: {why}")


# ---------------------------------------------------------------- pure rules
def evaluate(facts: Facts, now: datetime) -> Verdict:
    """Every rule for `facts` at `now` (aware), in the order of RULES."""
    _aware(now, "now")
    f = facts
    rules: list[Rule] = []

    def add(name: str, ok: bool, reason: str, nxt: datetime | None = None) -> None:
        rules.append(Rule(name, ok, reason, None if ok else nxt))

    # campaign
    running = f.campaign_state is CampaignState.RUNNING
    add("campaign", running, f"campaign {f.campaign_name!r} is {f.campaign_state.value}")

    # contact state
    st = f.contact_state
    if st is ContactState.DONE:
        last = f" (last result {f.last_result.value})" if f.last_result else ""
        add("contact", False, f"record is done: final result reached{last}")
    elif st is ContactState.DNC:
        add("contact", False, "record was removed: do not call")
    elif st is ContactState.CALLBACK and f.callback_due is None:
        add("contact", False, "record waits for a callback, but none is pending")
    else:
        add("contact", True, f"record is {st.value}")

    # never two calls at once
    if f.live_attempt:
        add("live_call", False, f"already in call attempt {f.live_attempt}")
    else:
        add("live_call", True, "not in a call")

    # lease from the dial queue
    if f.lease is None:
        add("lease", True, "not handed out")
    elif _aware(f.lease.expires_at, "lease expiry") <= now:
        add("lease", True, f"lease of {f.lease.owner} expired at {_utc(f.lease.expires_at)}")
    else:
        add(
            "lease",
            False,
            f"handed out to {f.lease.owner} until {_utc(f.lease.expires_at)}",
            f.lease.expires_at,
        )

    # a number, not on a do-not-call list
    add("number", bool(f.e164), f"dials {f.e164}" if f.e164 else "record has no phone number")
    if f.dnc:
        add("dnc", False, f"{f.e164} is on the {' and '.join(f.dnc)} do-not-call list")
    else:
        add("dnc", True, "number on no do-not-call list")

    # attempts left; a due callback is a promise to the person and is kept regardless
    cb_due_now = f.callback_due is not None and f.callback_due <= now
    used = f"{f.attempts} of {f.max_attempts} attempts used"
    if f.attempts < f.max_attempts:
        add("attempts", True, used)
    elif cb_due_now:
        add("attempts", True, f"{used}; a due callback is dialed regardless")
    else:
        add("attempts", False, f"no attempts left: {used}")

    # time zone and calling hours on the contact's wall clock
    zone = _zone(f.timezone)
    if zone is None:
        what = "unknown" if not f.timezone else f"{f.timezone!r} is not a known IANA zone"
        add("timezone", False, f"time zone {what}: not dialed")
        add("calling_hours", False, "cannot be checked without the contact's time zone")
    else:
        add("timezone", True, f"contact's time zone is {f.timezone}")
        hours = f"{_hm(f.calling_hours_start)}-{_hm(f.calling_hours_end)}"
        if f.calling_hours_start == f.calling_hours_end:
            add("calling_hours", False, f"invalid calling hours {hours}: start equals end")
        else:
            local = now.astimezone(zone)
            inside = in_window(local.time(), f.calling_hours_start, f.calling_hours_end)
            where = f"{local:%H:%M} in {f.timezone}, calling hours {hours}"
            if inside:
                add("calling_hours", True, f"it is {where}")
            else:
                nxt = next_in_window(now, zone, f.calling_hours_start, f.calling_hours_end)
                add("calling_hours", False, f"it is {where}", nxt)

    # the treatment's retry time
    if f.next_at is not None and _aware(f.next_at, "next_at") > now:
        after = f" after {f.last_result.value}" if f.last_result else ""
        add("retry_time", False, f"retry{after} not before {_utc(f.next_at)}", f.next_at)
    else:
        add("retry_time", True, "no retry time pending")

    # a scheduled callback holds the record until it is due
    if f.callback_due is None:
        add("callback", True, "no callback pending")
    elif cb_due_now:
        add("callback", True, f"callback due since {_utc(f.callback_due)}")
    else:
        add("callback", False, f"callback scheduled for {_utc(f.callback_due)}", f.callback_due)

    # no second call within 72 h of an abandoned one, unless an agent is reserved
    if f.abandoned_at is None or f.abandoned_at + ABANDON_WINDOW <= now:
        add("abandon_72h", True, "no abandoned call to this number in the last 72 h")
    elif f.agent_reserved:
        add(
            "abandon_72h",
            True,
            f"call abandoned at {_utc(f.abandoned_at)}, but an agent is reserved",
        )
    else:
        end = f.abandoned_at + ABANDON_WINDOW
        add(
            "abandon_72h",
            False,
            f"call to this number abandoned at {_utc(f.abandoned_at)}: no redial without "
            f"a reserved agent before {_utc(end)}",
            end,
        )

    assert tuple(r.name for r in rules) == RULES
    failed = [r for r in rules if not r.ok]
    return Verdict(
        allowed=not failed,
        rules=rules,
        next_dialable_at=_next_dialable(f, failed, zone, now),
        facts=f,
        now=now,
        failed=failed,
    )


def _next_dialable(
    f: Facts, failed: list[Rule], zone: ZoneInfo | None, now: datetime
) -> datetime | None:
    """The earliest time every rule passes. The time rules other than calling hours only
    say "not before T", so: the latest of those, then the next calling-hours opening."""
    if not failed:
        return now
    if any(r.next_time is None for r in failed):
        return None
    t = max([now, *(r.next_time for r in failed if r.name != "calling_hours" and r.next_time)])
    assert zone is not None  # calling hours failing with a next time means a zone
    return next_in_window(t, zone, f.calling_hours_start, f.calling_hours_end)


def in_window(t: time, start: time, end: time) -> bool:
    """Wall time `t` in [start, end); a window with end < start crosses midnight."""
    if start == end:
        raise Invalid(f"calling hours {_hm(start)}-{_hm(end)}: start equals end")
    if start < end:
        return start <= t < end
    return t >= start or t < end


def next_in_window(at: datetime, zone: ZoneInfo, start: time, end: time) -> datetime:
    """The first instant >= `at` (UTC) whose wall time in `zone` is inside the window.

    Being inside can only begin where the wall clock reaches `start` (once, or twice in a
    repeated hour) or where the zone's offset changes (the clock jumps, e.g. over `start`
    when it lies in a skipped hour): so those instants are the candidates."""
    at = _aware(at, "time").astimezone(UTC)

    def inside(u: datetime) -> bool:
        return in_window(u.astimezone(zone).time(), start, end)

    if inside(at):
        return at
    first_day = at.astimezone(zone).date()
    candidates: list[datetime] = []
    for d in (first_day + timedelta(days=k) for k in range(-1, 4)):
        for fold in (0, 1):
            wall = datetime.combine(d, start, tzinfo=zone).replace(fold=fold)
            u = wall.astimezone(UTC)
            if u.astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None):
                candidates.append(u)  # that wall time exists (skipped ones do not)
    candidates += _offset_changes(zone, at, at + timedelta(days=4))
    found = sorted(u for u in candidates if u >= at and inside(u))
    if not found:  # pragma: no cover - a non-empty window is entered at least once a day
        raise Invalid(f"calling hours {_hm(start)}-{_hm(end)} never open in {zone.key}")
    return found[0]


def _offset_changes(zone: ZoneInfo, lo: datetime, hi: datetime) -> list[datetime]:
    """Instants in [lo, hi] where the zone's UTC offset changes (to the second): hourly
    steps find the hour, halving finds the second (offsets change months apart)."""

    def off(u: datetime) -> timedelta | None:
        return u.astimezone(zone).utcoffset()

    out = []
    t = lo.replace(microsecond=0)
    while t < hi:
        a, b = t, t + timedelta(hours=1)
        if off(a) != off(b):
            while b - a > timedelta(seconds=1):
                mid = a + timedelta(seconds=int((b - a).total_seconds()) // 2)
                a, b = (mid, b) if off(mid) == off(a) else (a, mid)
            out.append(b)
        t += timedelta(hours=1)
    return out


# ---------------------------------------------------------------- database
def load_facts(
    s: Session,
    contact_id: int,
    *,
    now: datetime,
    e164: str | None = None,
    lease: LeaseLike | None = None,
    agent_reserved: bool | None = None,
) -> Facts:
    """Read one record's facts. `e164`: the number about to be dialed (default: the
    contact's current number). `agent_reserved` None: as the campaign's mode implies
    (an agent is reserved in every mode but predictive)."""
    _aware(now, "now")
    contact = s.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"no contact {contact_id}")
    campaign = s.get(Campaign, contact.campaign_id)
    assert campaign is not None
    if e164 is None and contact.numbers:
        e164 = contact.numbers[min(contact.number_index, len(contact.numbers) - 1)].e164
    scopes: set[int | None] = set()
    abandoned_at = None
    if e164:
        scopes = set(
            s.scalars(
                select(DncEntry.campaign_id).where(
                    DncEntry.e164 == e164,
                    (DncEntry.campaign_id.is_(None)) | (DncEntry.campaign_id == campaign.id),
                )
            ).all()
        )
        # Any campaign's abandoned call counts: the rule protects the person, not a list.
        rows = s.execute(
            select(CallAttempt.answered_at, CallAttempt.ended_at, CallAttempt.created_at).where(
                CallAttempt.e164 == e164,
                CallAttempt.result == CallResult.ABANDONED,
                CallAttempt.created_at >= now - ABANDON_WINDOW - timedelta(hours=2),
            )
        ).all()
        times = [r[0] or r[1] or r[2] for r in rows]
        recent = [t for t in times if t + ABANDON_WINDOW > now]
        abandoned_at = max(recent) if recent else None
    callback_due = s.scalar(
        select(Callback.due_at)
        .where(
            Callback.contact_id == contact_id,
            Callback.state.in_((CallbackState.PENDING, CallbackState.QUEUED)),
        )
        .order_by(Callback.due_at)
        .limit(1)
    )
    live = s.scalar(
        select(CallAttempt.id)
        .where(CallAttempt.contact_id == contact_id, CallAttempt.state != AttemptState.ENDED)
        .limit(1)
    )
    if agent_reserved is None:
        agent_reserved = campaign.mode is not DialMode.PREDICTIVE
    return facts_of(
        contact,
        campaign,
        e164,
        dnc_scopes=scopes,
        abandoned_at=abandoned_at,
        callback_due=callback_due,
        live_attempt=live,
        lease=lease,
        agent_reserved=agent_reserved,
    )


def facts_of(
    contact: Contact,
    campaign: Campaign,
    e164: str | None,
    *,
    dnc_scopes: set[int | None],
    abandoned_at: datetime | None,
    callback_due: datetime | None,
    live_attempt: str | None,
    lease: Any,
    agent_reserved: bool,
) -> Facts:
    """The Facts of a contact from what was read about it (one record here, or a batch:
    outbound.callbacks_facts): the attempts its last result's treatment allows, and
    which do-not-call lists (`dnc_scopes`: None for the global one, campaign ids) hold
    its number."""
    max_attempts = campaign.max_attempts
    if contact.last_result is not None:
        t = treatment_for(campaign.treatments, contact.last_result.value)
        max_attempts = int(t.get("max_attempts", max_attempts))
    dnc = tuple(
        name
        for name, hit in (("global", None in dnc_scopes), ("campaign", campaign.id in dnc_scopes))
        if hit
    )
    return Facts(
        contact_id=contact.id,
        external_key=contact.external_key,
        campaign_name=campaign.name,
        campaign_state=campaign.state,
        calling_hours_start=campaign.calling_hours_start,
        calling_hours_end=campaign.calling_hours_end,
        contact_state=contact.state,
        timezone=contact.timezone,
        attempts=contact.attempts,
        max_attempts=max_attempts,
        e164=e164,
        next_at=contact.next_at,
        last_result=contact.last_result,
        dnc=dnc,
        abandoned_at=abandoned_at,
        callback_due=callback_due,
        live_attempt=live_attempt,
        lease=lease,
        agent_reserved=agent_reserved,
    )


def why(
    s: Session,
    contact_id: int,
    now: datetime,
    lease: LeaseLike | None = None,
    agent_reserved: bool | None = None,
) -> Verdict:
    """Whether the record is dialable at `now`, rule by rule, and when it next will be."""
    return evaluate(
        load_facts(s, contact_id, now=now, lease=lease, agent_reserved=agent_reserved), now
    )


def check_for_dial(
    s: Session, contact_id: int, e164: str | None, now: datetime, agent_reserved: bool
) -> dict[str, str]:
    """The gate of every dial, inside the transaction that writes the attempt: raises
    NotDialable naming the failing rules, else returns the audit (rule -> "ok: reason")."""
    verdict = evaluate(
        load_facts(s, contact_id, now=now, e164=e164, agent_reserved=agent_reserved), now
    )
    if not verdict.allowed:
        raise NotDialable(verdict)
    return verdict.audit()


def find_contact(s: Session, ref: str, campaign: str | None = None) -> int:
    """A contact by id, or by its external key (within `campaign` when given)."""
    from .campaigns.lifecycle import get_campaign

    ref = ref.strip()
    if campaign is not None:
        camp_id = get_campaign(s, campaign).id
        by_key = s.scalar(
            select(Contact.id).where(Contact.campaign_id == camp_id, Contact.external_key == ref)
        )
        if by_key is not None:
            return by_key
        if ref.isdigit():
            c = s.get(Contact, int(ref))
            if c is not None and c.campaign_id == camp_id:
                return c.id
        raise NotFound(f"no contact {ref!r} in campaign {campaign!r}")
    if ref.isdigit() and s.get(Contact, int(ref)) is not None:
        return int(ref)
    ids = s.scalars(select(Contact.id).where(Contact.external_key == ref).limit(2)).all()
    if len(ids) > 1:
        raise Invalid(f"contact key {ref!r} exists in several campaigns: give --campaign")
    if not ids:
        raise NotFound(f"no contact with id or key {ref!r}")
    return ids[0]


# ---------------------------------------------------------------- helpers
def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _aware(t: datetime, what: str) -> datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise Invalid(f"{what}: naive datetime {t.isoformat()}; give a time zone (UTC)")
    return t


def _utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _hm(t: time) -> str:
    return t.strftime("%H:%M")
